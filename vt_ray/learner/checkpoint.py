"""Layout and bookkeeping of resumable checkpoints (the tensors themselves go through torch DCP).

    root/
      step_00000010/            one complete checkpoint:
        .metadata, *.distcp     DCP shards (model + optimizer), loaded without unpickling (safe_dcp.py)
        trainer_state.json      step, scheduler, world size, extra state (the driver's data position)
        rng_rank{r}.safetensors each rank's RNG state (torch/CUDA tensors; numpy and Python state as numbers)
        manifest.json           size and SHA-256 of every file above, written last (manifest.py)
      latest                    text file naming the newest complete step directory, replaced last
      corrupt_step_*/           checkpoints refused at load time, moved aside for inspection

A checkpoint is written into ``.tmp_step_*`` and renamed when every rank has finished and the manifest is
written, then ``latest`` is replaced atomically, then old checkpoints are pruned: a crash at any point leaves a
complete checkpoint in place. At load time :func:`select` takes the newest step directory that matches its
manifest and moves newer ones that do not aside, so a file truncated or corrupted after the save makes the run
fall back to the previous checkpoint (``learner.keep_last`` >= 2 keeps one) instead of loading garbage.

Nothing here unpickles. Checkpoints of vt_ray before this layout (``trainer_state.pt``, pickles) are refused
with :class:`LegacyCheckpoint`; loading them would run whatever code the files hold.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vt_ray.learner import manifest
from vt_ray.learner.manifest import CheckpointCorrupt

log = logging.getLogger(__name__)

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
LEGACY_TRAINER_STATE = "trainer_state.pt"
CORRUPT_PREFIX = "corrupt_"


class LegacyCheckpoint(RuntimeError):
    """A checkpoint in the pickle-based layout of earlier vt_ray versions: refused, never unpickled."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(
            f"checkpoint {path} was written by an older vt_ray ({LEGACY_TRAINER_STATE}, rng_rank*.pt are pickles) "
            "and this version never unpickles checkpoint files: start a new run.name (or finish the run with the "
            "vt_ray version that wrote it)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path,))


class CheckpointWriteError(RuntimeError):
    """A save failed (typically a full disk): the previous checkpoint is untouched."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f".tmp_{step_dir_name(step)}"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


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


# ---- choosing what to load --------------------------------------------------------------------------------
def step_dirs(root: Path) -> list[Path]:
    """Committed step directories, newest first."""
    return sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def is_step_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (TRAINER_STATE, LEGACY_TRAINER_STATE, manifest.MANIFEST))


@dataclass
class Selection:
    """What :func:`select` found: the checkpoint to load (None: none at all) and the ones it refused."""

    found: Path | None
    refused: list[CheckpointCorrupt] = field(default_factory=list)


def select(root: str | Path, quarantine: bool = True) -> Selection:
    """The newest step directory under ``root`` whose files all match its manifest (sizes and SHA-256).

    Newer directories that fail are refused, and with ``quarantine`` renamed to ``corrupt_step_*`` (kept for
    inspection, out of the way of pruning and of the next save of that step). Raises :class:`LegacyCheckpoint`
    when the newest candidate is in the old pickle layout, and :class:`CheckpointCorrupt` when there are
    checkpoints but none is intact (starting over silently would lose the run)."""
    root = Path(root)
    selection = Selection(None)
    if not root.is_dir():
        return selection
    for candidate in step_dirs(root):
        if (candidate / LEGACY_TRAINER_STATE).is_file() and not (candidate / manifest.MANIFEST).is_file():
            raise LegacyCheckpoint(candidate)
        try:
            manifest.verify(candidate)
        except CheckpointCorrupt as err:
            selection.refused.append(err)
            log.warning("%s", err)
            if quarantine:
                os.replace(candidate, _aside(root, candidate.name))
            continue
        selection.found = candidate
        return selection
    if selection.refused:
        names = "; ".join(f"{Path(e.path).name}: {e.file}: {e.reason}" for e in selection.refused)
        raise CheckpointCorrupt(root, "*", f"no intact checkpoint left ({names})")
    return selection


def _aside(root: Path, name: str) -> Path:
    target, n = root / f"{CORRUPT_PREFIX}{name}", 1
    while target.exists():
        target, n = root / f"{CORRUPT_PREFIX}{name}.{n}", n + 1
    return target


def resolve(path: str | Path) -> Path | None:
    """A verified checkpoint directory from a root (newest intact step, see :func:`select`) or from a step
    directory (checked against its manifest); None when there is none."""
    path = Path(path)
    if is_step_dir(path):
        if (path / LEGACY_TRAINER_STATE).is_file() and not (path / manifest.MANIFEST).is_file():
            raise LegacyCheckpoint(path)
        manifest.verify(path)
        return path
    return select(path).found


# ---- writing ----------------------------------------------------------------------------------------------
def commit(root: str | Path, step: int, keep_last: int) -> Path:
    """Write the manifest, rename the finished temp dir into place, update ``latest``, prune all but the
    newest ``keep_last``."""
    root = Path(root)
    final = root / step_dir_name(step)
    manifest.write(tmp_dir(root, step))
    fsync_tree(tmp_dir(root, step))
    if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp_dir(root, step), final)
    write_latest(root, final.name)  # syncs root: the rename above is durable with it
    for old in step_dirs(root)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_trainer_state(path: Path, state: dict[str, Any]) -> None:
    """JSON (floats round-trip exactly); a value JSON cannot hold is an error here, not a pickle later."""
    path.write_text(json.dumps(state, indent=1, allow_nan=False))


def read_trainer_state(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def save_rng(path: Path) -> None:
    """This process's torch, CUDA, numpy and Python RNG state as one safetensors file: tensors for the
    generator states, numbers in the header metadata for the rest."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["python.state"] = torch.tensor(internal, dtype=torch.int64)
    meta = {"numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
            "python": json.dumps([version, gauss_next])}
    save_file(tensors, str(path), metadata=meta)


def load_rng(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    torch.set_rng_state(tensors["torch"])
    kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = json.loads(meta["python"])
    random.setstate((version, tuple(int(x) for x in tensors["python.state"].tolist()), gauss_next))
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ---- reporting a failed save ----------------------------------------------------------------------------
def root_cause(err: BaseException) -> str:
    """The OSError under DCP's wrapping (``[Errno 28] No space left on device: ...``), else the error."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return f"{type(seen).__name__}: {seen}"
        failures = getattr(seen, "failures", None)  # torch's CheckpointException: rank -> (exception, traceback)
        if isinstance(failures, dict):
            for failure in failures.values():
                inner = failure[0] if isinstance(failure, tuple) else failure
                if isinstance(inner, BaseException):
                    return root_cause(inner)
        seen = seen.__cause__ or seen.__context__
    return f"{type(err).__name__}: {err}"


def disk_state(path: Path) -> str:
    try:
        usage = shutil.disk_usage(path if path.exists() else path.parent)
    except OSError as err:
        return f"disk usage unknown: {err}"
    full = "No space left on device: " if usage.free < min(64 << 20, max(1 << 20, usage.total // 100)) else ""
    return f"{full}{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB on that disk"


def latest_name(root: str) -> str:
    pointer = Path(root) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else "none yet"
