"""What every learner backend's rank does the same way, whatever shards the model: micro-batching a shard,
reducing a step's metrics, the optimizer and schedule, the step's cached batch (:mod:`vt_ray.learner.step_batch`),
the weight-stream store, and writing a Hugging Face directory.

Factored out of :class:`vt_ray.learner.worker.LearnerWorker` so the Megatron backend
(:mod:`vt_ray.learner.megatron.backend`) reports the same metrics and writes the same files, not a copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vt_ray.common.timeouts import ActorInfo, install_stack_dumps
from vt_ray.common.weight_stream import host_store
from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.losses import LossFn, resolve_loss
from vt_ray.learner.rendezvous import free_port, node_ip
from vt_ray.learner.schedule import lr_schedule
from vt_ray.learner.step_batch import StepCache, StepCall


def micro_batches(shard: TrainBatch, num_micro: int, size: int) -> tuple[list[TrainBatch], list[bool]]:
    """``num_micro`` micro-batches of ``size`` at most; fillers (flag False) pad a short rank."""
    real = shard.chunks(size)
    if len(real) > num_micro:
        raise ValueError(f"{len(shard)} sequences need {len(real)} micro-batches, but num_micro={num_micro}")
    fillers = [shard.without_loss() for _ in range(num_micro - len(real))]
    return real + fillers, [True] * len(real) + [False] * len(fillers)


def accumulate(sums: dict[str, float], maxes: dict[str, float], metrics: dict[str, torch.Tensor],
               is_real: bool) -> None:
    """Add one micro-batch's metric shares. Fillers add their keys too (as 0 or -inf): a rank holding only
    fillers must all_reduce the same tensors as its peers, or the collective fails (gloo) or hangs (NCCL)."""
    for key, value in metrics.items():
        if key.endswith("_max"):  # a maximum, not a share: reduced with max
            maxes[key] = max(maxes.get(key, float("-inf")), float(value) if is_real else float("-inf"))
        else:
            sums[key] = sums.get(key, 0.0) + (float(value) if is_real else 0.0)


def reduce_metrics(sums: dict[str, float], maxes: dict[str, float], group: Any = None) -> dict[str, float]:
    """Sum the shares and take the maxima over ``group`` (default: every rank): the mini-batch's metrics."""
    keys = sorted(sums)
    reduced = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(reduced, group=group)
    out = {k: float(v) for k, v in zip(keys, reduced.tolist())}
    if maxes:
        max_keys = sorted(maxes)
        peak = torch.tensor([maxes[k] for k in max_keys], dtype=torch.float64)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        out.update({k: float(v) for k, v in zip(max_keys, peak.tolist())})
    return out


class RankCommon:
    """What every learner backend's rank has in the same form: its identity and device, the rendezvous address,
    the loss lookup, AdamW with the lr schedule, the step's cached batch, rank 0's weight-stream store (started
    on first use, kept for every later sync) and the Hugging Face export. A backend sets ``hf_config``,
    ``model_path`` and ``processor`` in ``setup`` and has ``compute_logprobs``, ``train_step`` and
    ``export_state_dict``."""

    hf_config: Any
    model_path: str
    processor: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    _stream_store: tuple[Any, int] | None = None

    def __init__(self, cfg: LearnerRoleConfig, rank: int = 0, world_size: int = 1) -> None:
        """``cfg``: what a learner rank reads of the recipe (``LearnerRoleConfig.of(recipe)``)."""
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.info = install_stack_dumps("learner", rank)
        self.lcfg = cfg.learner
        use_cuda = cfg.resources.gpus_per_worker > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.step = 0
        self._losses: dict[str, LossFn] = {}
        self.step_cache = StepCache(rank)

    def ready(self) -> ActorInfo:
        """Where this rank runs (pid, node, stack dump file): the group needs it to dump a stuck rank."""
        return self.info

    def address(self) -> tuple[str, int]:
        """Rank 0's node address and a free port there: the rendezvous point of the process group."""
        return node_ip(), free_port()

    def _loss_fn(self, name: str) -> LossFn:
        if name not in self._losses:
            self._losses[name] = resolve_loss(name, self.cfg)
        return self._losses[name]

    def _build_optimizer(self, params: Iterable[torch.nn.Parameter], total_steps: int, lr: float | None) -> None:
        """AdamW over ``params`` at ``lr`` (default ``learner.lr``) and the warmup + cosine schedule."""
        self.optimizer = torch.optim.AdamW(
            params,
            lr=self.lcfg.lr if lr is None else lr,
            betas=(self.lcfg.betas[0], self.lcfg.betas[1]),  # two, checked by LearnerConfig
            eps=self.lcfg.eps,
            weight_decay=self.lcfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(
            total_steps, self.lcfg.warmup_steps, self.lcfg.warmup_ratio, self.lcfg.min_lr_ratio))
        self.step = 0

    def compute_logprobs(self, shard: TrainBatch, num_micro: int, which: str = "policy") -> torch.Tensor:
        raise NotImplementedError

    def train_step(self, shard: TrainBatch, num_micro: int, loss_name: str = "sft") -> dict[str, float]:
        raise NotImplementedError

    def export_state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ---- a step's batch, sent once per step (vt_ray.learner.step_batch) -------------------------------------
    def cache_step(self, step: str, shard: TrainBatch) -> None:
        """Hold this rank's shard of the step ``step`` for the step's later calls."""
        self.step_cache.put(step, shard)

    def step_logprobs(self, step: str, num_micro: int, which: str = "policy", keep: bool = True) -> torch.Tensor:
        """:meth:`compute_logprobs` of the cached step shard; ``keep``: also left on the shard (``old_logprobs``
        or ``ref_logprobs``) for the step's train calls."""
        logprobs = self.compute_logprobs(self.step_cache.get(step), num_micro, which)
        if keep:
            self.step_cache.keep_logprobs(step, which, logprobs)
        return logprobs

    def step_train(self, call: StepCall, num_micro: int, loss_name: str = "grpo") -> dict[str, float]:
        """:meth:`train_step` on the rows of the cached step shard that ``call`` names."""
        return self.train_step(self.step_cache.call(call), num_micro, loss_name)

    def drop_steps(self, step: str | None = None) -> list[str]:
        """Forget the step ``step`` (None: every step); returns the steps still held."""
        self.step_cache.drop(step)
        return self.step_cache.keys()

    def export_safetensors(self, dtype: str | None = None) -> bytes | None:
        """Rank 0: the state dict as one safetensors blob, the rollout engines' weight-update format."""
        state = self.export_state_dict(dtype)
        return safetensors_blob(state) if self.rank == 0 else None

    def stream_address(self) -> tuple[str, int]:
        """Where this rank's weight-stream store listens (rank 0's serves stream sessions; every rank's, ipc)."""
        if self._stream_store is None:
            port = free_port()
            self._stream_store = (host_store(port, self.cfg.weight_sync_timeout_s), port)
        return node_ip(), self._stream_store[1]

    def stream_endpoint(self) -> tuple[str, int, str]:
        """Where this rank's weight-stream store listens and what its shared buffers are on (``ipc`` syncs:
        :func:`vt_ray.common.weight_share.device_key`)."""
        from vt_ray.common.weight_share import device_key

        addr, port = self.stream_address()
        return addr, port, device_key(self.device)

    def _store(self) -> Any:
        return self._stream_store[0] if self._stream_store is not None else None

    def save_hf(self, out_dir: str, dtype: str | None = None) -> str:
        """A Hugging Face model directory (safetensors + config + generation config + processor) that
        transformers and vLLM load directly, written by rank 0 (:func:`write_hf_dir`). Collective."""
        dtype = dtype or self.cfg.model.dtype
        state = self.export_state_dict(dtype)
        if self.rank == 0:
            write_hf_dir(out_dir, state, self.hf_config, dtype, self.model_path, self.processor)
        dist.barrier()
        return str(Path(out_dir))


def safetensors_blob(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def write_hf_dir(out_dir: str, state: dict[str, torch.Tensor], hf_config: Any, dtype: str, model_path: str,
                 processor: Any) -> Path:
    """Rank 0: a Hugging Face model directory (safetensors + config + generation config + processor) that
    transformers and vLLM load directly. Written to a temp dir, then renamed."""
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    out = Path(out_dir)
    tmp = out.with_name(f".tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_torch_state_dict(state, tmp, max_shard_size="5GB")
    hf_config.dtype = dtype
    if getattr(hf_config, "text_config", None) is not None:
        hf_config.text_config.dtype = dtype
    hf_config.save_pretrained(tmp)
    try:
        GenerationConfig.from_pretrained(model_path).save_pretrained(tmp)
    except OSError:  # the source model had no generation config
        pass
    processor.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
