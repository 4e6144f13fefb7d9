"""Megatron's model-parallel groups on top of an initialised ``torch.distributed`` default group."""

from __future__ import annotations

import torch.distributed as dist


def init_model_parallel(tensor_parallel: int = 1, pipeline_parallel: int = 1, seed: int = 0) -> None:
    """Create megatron's TP/PP/DP groups. The world size must be a multiple of ``tensor_parallel *
    pipeline_parallel`` (the rest is data parallel); megatron checks it and says so. With CUDA, also seed
    megatron's CUDA RNG tracker, which its GPU weight init forks (not needed, and not possible, on CPU)."""
    import torch
    from megatron.core import parallel_state
    from megatron.core import tensor_parallel as megatron_tp

    if not dist.is_initialized():
        raise RuntimeError("init_model_parallel: call torch.distributed.init_process_group first")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                             pipeline_model_parallel_size=pipeline_parallel)
    if torch.cuda.is_available():
        megatron_tp.model_parallel_cuda_manual_seed(seed)
    else:
        from vt_ray.learner.megatron.cpu import use_cpu_rng_tracker

        use_cpu_rng_tracker()


def destroy_model_parallel() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()

