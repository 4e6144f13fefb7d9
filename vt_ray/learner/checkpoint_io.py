"""A learner rank's side of resumable checkpoints: writing its DCP shards, RNG state and manifest part (and,
on rank 0, the trainer state and the commit), and reading them back.

Apart from the worker because checkpoint I/O is a protocol of its own (tmp dir, barriers, manifest, commit,
cleanup on a full disk) over state the worker owns; :mod:`vt_ray.learner.checkpoint` holds the layout.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from vt_ray.learner import checkpoint as ckpt
from vt_ray.learner import manifest, safe_dcp
from vt_ray.testing.faults import crash_point

log = logging.getLogger(__name__)


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *, step: int,
                    rank: int, world_size: int, root: str, keep_last: int, extra_state: dict[str, Any] | None
                    ) -> str:
    """Model + optimizer (DCP, sharded), scheduler, step, extra state and this rank's RNG into ``root/step_N``
    with a manifest; rank 0 commits (``latest``, pruning to ``keep_last``). Collective. A failed write removes
    the partial directory and raises :class:`~vt_ray.learner.checkpoint.CheckpointWriteError`."""

    def write(tmp: Path) -> list[str]:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        return [p.name for p in tmp.glob(f"__{rank}_*.distcp")]

    return save_step(write, scheduler, step=step, rank=rank, world_size=world_size, root=root, keep_last=keep_last,
                     extra_state=extra_state)


def save_step(write: Callable[[Path], list[str]], scheduler: Any, *, step: int, rank: int, world_size: int,
              root: str, keep_last: int, extra_state: dict[str, Any] | None) -> str:
    """The checkpoint protocol around a backend's own shard writer: ``write(tmp)`` saves this rank's model and
    optimizer shards into the step's temp dir (a collective) and returns the files it wrote (this rank hashes
    them; rank 0 hashes the rest); then RNG, trainer state, manifest and the commit. Collective."""
    tmp = ckpt.tmp_dir(root, step)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    try:
        mine = write(tmp)
        ckpt.save_rng(tmp / ckpt.rng_file(rank))
        if rank == 0:
            ckpt.write_trainer_state(tmp / ckpt.TRAINER_STATE, {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "world_size": world_size,
                "extra": extra_state or {},
            })
        manifest.write_partial(tmp, rank, [*mine, ckpt.rng_file(rank)])
    except (Exception, CheckpointException) as err:  # DCP's wrapper of the OSError is a BaseException
        disk = ckpt.disk_state(tmp)  # before the cleanup: torch's zip writer reports ENOSPC as "unexpected pos"
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back: logs and metrics still need it
        raise ckpt.CheckpointWriteError(
            f"learner[{rank}]: saving step {step} to {tmp} failed ({ckpt.root_cause(err)}; {disk}); the "
            f"partial directory was removed and the previous checkpoint ({ckpt.latest_name(root)}) is untouched"
        ) from err
    crash_point("learner.save_checkpoint", rank)  # tests: a kill with the shards written, not committed
    dist.barrier()
    final = Path(root) / ckpt.step_dir_name(step)
    if rank == 0:
        final = ckpt.commit(root, step, keep_last)
    dist.barrier()
    return str(final)


def load_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *, rank: int,
                    path: str) -> tuple[int, dict[str, Any]] | None:
    """Restore model, optimizer, scheduler and this rank's RNG from a checkpoint root (its newest intact step)
    or a step dir; returns (step, extra state), or None when there is no checkpoint. Collective. A step dir is
    checked against its manifest by size only (the caller chose it with
    :func:`~vt_ray.learner.checkpoint.select`, which checks the hashes once). Nothing is unpickled."""

    def read(found: Path) -> None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        safe_dcp.load(state, str(found))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

    return load_step(read, scheduler, rank=rank, path=path)


def load_step(read: Callable[[Path], None], scheduler: Any, *, rank: int, path: str
              ) -> tuple[int, dict[str, Any]] | None:
    """The checkpoint protocol around a backend's own shard reader: find and check the step dir, ``read(dir)``
    restores this rank's model and optimizer shards (a collective), then scheduler, RNG and extra state."""
    p = Path(path)
    if ckpt.is_step_dir(p):
        if not (p / manifest.MANIFEST).is_file() and (p / ckpt.LEGACY_TRAINER_STATE).is_file():
            raise ckpt.LegacyCheckpoint(p)
        manifest.verify(p, hashes=False)
        found: Path | None = p
    else:
        found = ckpt.resolve(p)
    if found is None:
        return None
    read(found)
    trainer = ckpt.read_trainer_state(found / ckpt.TRAINER_STATE)
    scheduler.load_state_dict(trainer["scheduler"])
    step = int(trainer["step"])
    rng_path = found / ckpt.rng_file(rank)
    if rng_path.is_file():
        ckpt.load_rng(rng_path)
    else:  # resumed on more ranks than saved: the new ranks keep their seeded RNG
        log.warning("learner[%d]: no RNG state in %s", rank, found)
    dist.barrier()
    return step, dict(trainer["extra"])
