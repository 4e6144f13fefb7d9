"""Tensor collectives that torch names differently across versions (a leaf module: no vt_ray imports)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def reduce_scatter_into(output: Any, source: Any, group: Any) -> None:
    """``output`` = this rank's slice (along dim 0) of ``source`` summed over ``group``: NCCL and, since torch
    2.13, gloo (``reduce_scatter_single``; ``reduce_scatter_tensor`` before)."""
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    reduce_scatter(output, source, group=group)


def all_gather_into(output: Any, source: Any, group: Any) -> None:
    """``output`` = every rank's ``source`` concatenated along dim 0, in rank order (gloo and NCCL)."""
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    all_gather(output, source, group=group)
