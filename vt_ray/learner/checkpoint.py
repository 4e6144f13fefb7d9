"""Layout and bookkeeping of resumable checkpoints (the tensors themselves go through torch DCP).

    root/
      step_00000010/          one complete checkpoint: DCP shards (model + optimizer),
        .metadata, *.distcp   trainer_state.pt (scheduler, step, extra state), rng_rank{r}.pt
      latest                  text file naming the newest complete step directory, replaced last

A checkpoint is written into ``.tmp_step_*`` and renamed when every rank has finished, then ``latest`` is
replaced atomically, then old checkpoints are pruned: a crash at any point leaves ``latest`` naming a
complete checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f".tmp_{step_dir_name(step)}"


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to stable storage (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and directory under ``root``, then ``root``: a power loss after the commit cannot leave the
    step directory named but empty. The shards are already synced by DCP (cheap to repeat); this covers the
    trainer state and the directory entries."""
    for path in sorted(root.rglob("*"), reverse=True):  # children before their directories
        if path.is_file() or path.is_dir():
            fsync_path(path)
    fsync_path(root)


def write_latest(root: str | Path, name: str) -> None:
    """Point ``latest`` at ``name`` atomically and durably (write and sync a temp file, rename it over, sync
    the directory)."""
    root = Path(root)
    tmp = root / f".{LATEST}.tmp"
    with tmp.open("w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    fsync_path(root)


def resolve(path: str | Path) -> Path | None:
    """A checkpoint directory from a root (via ``latest``) or a step directory; None when there is none."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return path
    pointer = path / LATEST
    if pointer.is_file():
        target = path / pointer.read_text().strip()
        if (target / TRAINER_STATE).is_file():
            return target
    return None


def commit(root: str | Path, step: int, keep_last: int) -> Path:
    """Rename the finished temp dir into place, update ``latest``, prune all but the newest ``keep_last``."""
    root = Path(root)
    final = root / step_dir_name(step)
    if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
        shutil.rmtree(final)
    fsync_tree(tmp_dir(root, step))
    os.replace(tmp_dir(root, step), final)
    write_latest(root, final.name)  # syncs root: the rename above is durable with it
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trusted(path: str | Path) -> Any:
    """Our own checkpoint files hold numpy/python RNG state, which ``weights_only`` refuses."""
    return torch.load(path, map_location="cpu", weights_only=False)
