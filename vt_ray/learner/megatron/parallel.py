"""Megatron's model-parallel groups on top of an initialised ``torch.distributed`` default group."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def init_model_parallel(tensor_parallel: int = 1, pipeline_parallel: int = 1, seed: int = 0,
                        context_parallel: int = 1) -> None:
    """Create megatron's TP/CP/PP/DP groups. The world size must be a multiple of ``tensor_parallel *
    context_parallel * pipeline_parallel`` (the rest is data parallel); megatron checks it and says so. With CUDA,
    also seed megatron's CUDA RNG tracker, which its GPU weight init forks (not needed, and not possible, on
    CPU)."""
    import torch
    from megatron.core import parallel_state
    from megatron.core import tensor_parallel as megatron_tp

    if not dist.is_initialized():
        raise RuntimeError("init_model_parallel: call torch.distributed.init_process_group first")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                             pipeline_model_parallel_size=pipeline_parallel,
                                             context_parallel_size=context_parallel)
    if torch.cuda.is_available():
        megatron_tp.model_parallel_cuda_manual_seed(seed)
    else:
        from vt_ray.learner.megatron.cpu import use_cpu_rng_tracker

        use_cpu_rng_tracker()


def destroy_model_parallel() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()



def replica_group() -> tuple[Any, int]:
    """The group of the ranks that hold one model replica (TP x CP x PP: every rank with this rank's
    data-parallel index) and its size. megatron's model-parallel group is TP x PP only; with CP > 1 this makes one
    (``new_group`` is collective: every rank creates every replica's group, in the same order)."""
    from megatron.core import parallel_state

    if parallel_state.get_context_parallel_world_size() == 1:
        group = parallel_state.get_model_parallel_group()
        return group, dist.get_world_size(group)
    dp_ranks: list[int] = [0] * dist.get_world_size()
    dist.all_gather_object(dp_ranks, parallel_state.get_data_parallel_rank())
    mine = None
    for index in sorted(set(dp_ranks)):
        group = dist.new_group([r for r, d in enumerate(dp_ranks) if d == index])
        if index == parallel_state.get_data_parallel_rank():
            mine = group
    return mine, dp_ranks.count(parallel_state.get_data_parallel_rank())

