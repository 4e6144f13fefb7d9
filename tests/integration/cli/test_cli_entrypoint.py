"""The ``python -m vt_ray`` entrypoint as a user types it (a new process each): help, and a bad key's exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_cli_reports_config_errors_with_exit_code_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vt_ray", "config", "recipe=recipes/tiny_cpu.yaml", "rollout.nn=1"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "rollout.nn" in proc.stderr


def test_cli_help_lists_commands() -> None:
    proc = subprocess.run([sys.executable, "-m", "vt_ray", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for name in ("make-tiny-model", "make-synthetic-data", "config", "generate"):
        assert name in proc.stdout
