"""Learner (FSDP2, Megatron) and SFT sections of the recipe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vt_ray.common.choices import Dtype, set_choice
from vt_ray.common.errors import check
from vt_ray.config.backends import LEARNER_BACKENDS


class TransformerImpl(StrEnum):
    auto = "auto"
    transformer_engine = "transformer_engine"
    local = "local"


class RecomputeGranularity(StrEnum):
    """megatron-core's ``recompute_granularity``: what ``learner.activation_checkpointing`` recomputes."""

    full = "full"  # whole layers: only each recompute unit's input is kept
    selective = "selective"  # the core attention only (megatron's default selective module)


class RecomputeMethod(StrEnum):
    """megatron-core's ``recompute_method`` (``full`` only): which layers are recomputed."""

    uniform = "uniform"  # every layer, in units of recompute_num_layers layers
    block = "block"  # the first recompute_num_layers layers of each pipeline stage; the rest keep everything


class VisionImpl(StrEnum):
    """The Megatron learner's vision tower (``learner.megatron.vision_impl``)."""

    hf = "hf"  # the Hugging Face module, whole and replicated on every TP rank
    megatron = "megatron"  # mbridge's Megatron ViT, split over the TP group (vt_ray/learner/megatron/vision.py)


class OptimizerImpl(StrEnum):
    """The Megatron learner's optimizer (``learner.megatron.optimizer_impl``)."""

    vt_ray = "vt_ray"  # ours: torch AdamW, our DP sum or ZeRO-1 (dist_optim.py); any device
    megatron = "megatron"  # megatron-core's DDP + DistributedOptimizer: CUDA only (megatron_optim.py)


class DistBackend(StrEnum):
    auto = "auto"
    gloo = "gloo"
    nccl = "nccl"


class ReferencePlacement(StrEnum):
    sharded = "sharded"
    cpu_offload = "cpu_offload"
    none = "none"



@dataclass(frozen=True)
class MegatronConfig:
    """The Megatron-core learner's parallel layout (``learner.backend: megatron``; vt_ray/learner/megatron/,
    docs/megatron.md). Checked against the model when the recipe loads, so a layout that cannot split the model
    fails there, naming the key."""

    tensor_parallel_size: int = 1
    """Ranks each layer's matrices are split over (attention heads, KV heads, MLP columns, vocabulary). Must
    divide the attention heads, the KV heads and the vocabulary size."""
    pipeline_parallel_size: int = 1
    """Pipeline stages the decoder layers are split into (megatron's 1F1B schedule); must divide the layers.
    With tied embeddings the last stage keeps a copy of the embedding (megatron's), kept equal to it."""
    transformer_impl: TransformerImpl = TransformerImpl.auto
    """Layer modules: auto (transformer-engine when CUDA and TE are present, else local) | transformer_engine |
    local (megatron-core's own modules with SDPA attention: what runs on CPU)."""
    recompute_granularity: RecomputeGranularity = RecomputeGranularity.full
    """With ``learner.activation_checkpointing``: full (whole layers recomputed in the backward, per
    ``recompute_method``) | selective (the core attention only). Read only when checkpointing is on."""
    recompute_method: RecomputeMethod = RecomputeMethod.uniform
    """``full`` only: uniform (every layer, in units of ``recompute_num_layers``) | block (the first
    ``recompute_num_layers`` layers of each pipeline stage)."""
    recompute_num_layers: int = 1
    """``full`` only: layers per recompute unit (uniform) or recomputed layers per stage (block)."""
    vision_impl: VisionImpl = VisionImpl.hf
    """The vision tower: hf (the Hugging Face module, replicated on every TP rank) | megatron (megatron-core
    modules, split over the TP group: TP must divide the tower's heads and MLP width too)."""
    context_parallel_size: int = 1
    """Ranks each sequence is split over (context parallelism: megatron's load-balanced 2 CP chunks, keys and
    values exchanged in attention); the learner's ranks must be a multiple of TP x CP x PP. The vision tower
    (either) runs whole on every CP rank."""
    sequence_parallel: bool = False
    """megatron's sequence parallelism: the activations outside attention and MLP (norms, residual, dropout) split
    along the sequence over the TP group instead of replicated (per-layer activations / TP). Needs
    ``tensor_parallel_size`` > 1."""
    distributed_optimizer: bool = False
    """megatron's distributed optimizer (ZeRO-1): each data-parallel replica keeps only its 1/DP slice of the
    float32 masters and AdamW moments; gradients are reduce-scattered, the stepped slices all-gathered
    (vt_ray/learner/megatron/dist_optim.py). Same update; checkpoints in the same format either way."""
    optimizer_impl: OptimizerImpl = OptimizerImpl.vt_ray
    """vt_ray (ours, above: runs anywhere) | megatron (megatron-core's ``DistributedDataParallel`` and
    ``DistributedOptimizer``, vt_ray/learner/megatron/megatron_optim.py: CUDA only, written and not run here; needs
    ``distributed_optimizer: true`` and ``vision_impl: megatron``; its checkpoints are megatron's format, which the
    vt_ray optimizer does not resume, nor the other way)."""
    overlap_grad_reduce: bool = False
    """``optimizer_impl: megatron`` only: megatron's DDP reduce-scatters gradient buckets during the backward of
    the last micro-batch (on its own CUDA stream) instead of after it."""

    def __post_init__(self) -> None:
        check(self.tensor_parallel_size >= 1, "learner.megatron.tensor_parallel_size", "must be >= 1")
        check(self.pipeline_parallel_size >= 1, "learner.megatron.pipeline_parallel_size", "must be >= 1")
        set_choice(self, "transformer_impl", TransformerImpl, "learner.megatron.transformer_impl")
        set_choice(self, "recompute_granularity", RecomputeGranularity, "learner.megatron.recompute_granularity")
        set_choice(self, "recompute_method", RecomputeMethod, "learner.megatron.recompute_method")
        set_choice(self, "vision_impl", VisionImpl, "learner.megatron.vision_impl")
        check(self.recompute_num_layers >= 1, "learner.megatron.recompute_num_layers", "must be >= 1")
        check(self.context_parallel_size >= 1, "learner.megatron.context_parallel_size", "must be >= 1")
        set_choice(self, "optimizer_impl", OptimizerImpl, "learner.megatron.optimizer_impl")
        if self.optimizer_impl == OptimizerImpl.megatron:
            check(self.distributed_optimizer, "learner.megatron.optimizer_impl",
                  "megatron is megatron-core's distributed optimizer: set learner.megatron.distributed_optimizer=true")
            check(self.vision_impl == VisionImpl.megatron, "learner.megatron.optimizer_impl",
                  "megatron wraps every trained module in megatron's DDP; the HF vision tower is not a megatron "
                  "module: set learner.megatron.vision_impl=megatron")
        check(not self.overlap_grad_reduce or self.optimizer_impl == OptimizerImpl.megatron,
              "learner.megatron.overlap_grad_reduce",
              "is megatron's DDP: needs learner.megatron.optimizer_impl=megatron")
        check(not self.sequence_parallel or self.tensor_parallel_size > 1, "learner.megatron.sequence_parallel",
              "splits the sequence over the tensor-parallel group: it needs learner.megatron.tensor_parallel_size "
              f"> 1 (got {self.tensor_parallel_size})")

    def check_model(self, model_path: str, learner_ranks: int) -> None:
        """The layout against the model's shape (``<model_path>/config.json``, when it is on this machine) and the
        learner's rank count. Reads the JSON directly: the planner's reader (vt_ray.cluster.model_shapes) sits
        above the config layer."""
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        if tp * pp == 1 and self.recompute_num_layers == 1:  # nothing to split: any model fits
            self.check_ranks(learner_ranks)
            return
        text = _text_config(model_path)
        if text is not None:
            heads = int(text["num_attention_heads"])
            self.check_shape(heads, int(text.get("num_key_value_heads") or heads), int(text["vocab_size"]),
                             int(text["num_hidden_layers"]), f"({model_path}/config.json)")
            vision = _vision_config(model_path) if self.vision_impl == VisionImpl.megatron else None
            if vision is not None:
                self.check_vision(int(vision["num_heads"]), int(vision["intermediate_size"]),
                                  f"({model_path}/config.json)")
        self.check_ranks(learner_ranks)

    def check_device(self, gpus_per_worker: float, dist_backend: str) -> None:
        """``optimizer_impl: megatron`` needs a CUDA device per learner rank and NCCL (its gradient buffers and
        streams are CUDA): refused at load when the recipe already says there is none."""
        if self.optimizer_impl != OptimizerImpl.megatron:
            return
        check(gpus_per_worker > 0, "learner.megatron.optimizer_impl",
              "megatron (megatron-core's DistributedOptimizer) needs CUDA: resources.learner.gpus_per_worker is 0 "
              "(use optimizer_impl=vt_ray on CPU)")
        check(dist_backend != DistBackend.gloo, "learner.megatron.optimizer_impl",
              "megatron (megatron-core's DistributedOptimizer) runs on NCCL, not learner.dist_backend=gloo")

    def check_ranks(self, learner_ranks: int) -> None:
        """TP x PP, and TP x CP x PP, must divide the learner's ranks (the rest are data-parallel replicas)."""
        tp, pp, cp = self.tensor_parallel_size, self.pipeline_parallel_size, self.context_parallel_size
        check(learner_ranks % (tp * pp) == 0, "learner.megatron.tensor_parallel_size",
              f"tensor_parallel_size x pipeline_parallel_size = {tp * pp} does not divide the "
              f"{learner_ranks} learner ranks (resources.learner.num_workers)")
        check(learner_ranks % (tp * cp * pp) == 0, "learner.megatron.context_parallel_size",
              f"tensor_parallel_size x context_parallel_size x pipeline_parallel_size = {tp * cp * pp} does not "
              f"divide the {learner_ranks} learner ranks (resources.learner.num_workers)")

    def check_vision(self, heads: int, mlp_width: int, source: str) -> None:
        """With ``vision_impl: megatron`` TP splits the vision tower too: it must divide its heads and MLP width."""
        tp = self.tensor_parallel_size
        for what, n in {"attention heads": heads, "MLP width": mlp_width}.items():
            check(n % tp == 0, "learner.megatron.tensor_parallel_size",
                  f"{tp} does not divide the vision tower's {n} {what} {source} (learner.megatron.vision_impl="
                  "megatron splits the tower; hf keeps it whole)")

    def check_shape(self, heads: int, kv_heads: int, vocab: int, layers: int, source: str) -> None:
        """TP must divide the heads, KV heads and vocabulary, PP the layers, of the model ``source`` names (the
        recipe's ``config.json`` here; the planner passes the shape it resolved)."""
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        for what, n in {"attention heads": heads, "KV heads": kv_heads, "vocabulary size": vocab}.items():
            check(n % tp == 0, "learner.megatron.tensor_parallel_size",
                  f"{tp} does not divide the model's {n} {what} {source}")
        check(layers % pp == 0, "learner.megatron.pipeline_parallel_size",
              f"{pp} does not divide the model's {layers} layers {source}")
        n = self.recompute_num_layers
        if self.recompute_method == RecomputeMethod.uniform:  # megatron's units must tile each stage's layers
            check((layers // pp) % n == 0, "learner.megatron.recompute_num_layers",
                  f"{n} does not divide the {layers // pp} layers of each pipeline stage {source}")
        else:
            check(n <= layers // pp, "learner.megatron.recompute_num_layers",
                  f"{n} is more than the {layers // pp} layers of each pipeline stage {source}")


def _text_config(model_path: str) -> dict[str, Any] | None:
    """The language-model keys of a Qwen2.5-VL ``config.json`` (``text_config`` in transformers 5, the top level
    before); None when there is no readable file."""
    path = Path(model_path) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    text = config.get("text_config") or config
    if not isinstance(text, dict) or "num_attention_heads" not in text:
        return None
    return text


def _vision_config(model_path: str) -> dict[str, Any] | None:
    """The ``vision_config`` of a Qwen2.5-VL ``config.json``; None when there is no readable file or section."""
    try:
        vision = json.loads((Path(model_path) / "config.json").read_text()).get("vision_config")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return vision if isinstance(vision, dict) and "num_heads" in vision else None


@dataclass(frozen=True)
class LearnerConfig:
    # Worker count, CPUs and GPUs per rank live in ``resources.learner`` (one place for placement).
    backend: str = "fsdp2"
    """The training backend (vt_ray.config.backends.LEARNER_BACKENDS): fsdp2 (torch FSDP2) | megatron
    (megatron-core tensor parallel, ``learner.megatron``; docs/megatron.md), or a class by import path
    ``package.module:Class`` (docs/backends.md)."""
    dist_backend: DistBackend = DistBackend.auto
    """torch.distributed backend: auto (gloo on CPU, nccl on GPU) | gloo | nccl."""
    param_dtype: Dtype = Dtype.float32
    """FSDP2 mixed precision: dtype of the all-gathered parameters used in forward/backward (bfloat16 on GPU).
    Sharded master weights and optimizer state always stay float32."""
    reduce_dtype: Dtype = Dtype.float32
    """FSDP2 mixed precision: dtype of the gradient reduce-scatter."""
    reshard_after_forward: bool = True
    """FSDP2, policy only: free each block's all-gathered parameters after its forward and gather them again in
    backward (ZeRO-3 memory). False keeps them from forward to backward (ZeRO-2-like): one all-gather fewer
    per block and micro-batch, at the memory of an unsharded copy of the policy. For small models and CPU runs
    (measured on the tiny model, 2 gloo ranks, 4 micro-batches: with ``reduce_every_micro_batch: false``, a
    train step 0.42 -> 0.31 s)."""
    reduce_every_micro_batch: bool = True
    """FSDP2: reduce-scatter gradients after every micro-batch's backward. False accumulates them unsharded over
    a rank's micro-batches and reduce-scatters once per optimizer step (FSDP2 ``set_requires_gradient_sync``):
    less communication, at the memory of one unsharded gradient."""
    dedup_videos: bool = True
    """Run the vision tower once per distinct video in a forward pass, not once per response: a GRPO group's G
    responses share one video (vt_ray/learner/vision_dedup.py). Same result up to float summation order."""
    activation_checkpointing: bool = False
    """Recompute each decoder/vision block in backward (HF gradient checkpointing, non-reentrant)."""
    load_on_rank0: bool = True
    """Memory-efficient model loading with more than one rank: every rank builds the policy and the reference on
    the meta device and shards them, allocating only its own shard; rank 0 alone reads each checkpoint (one full
    model at a time) and broadcasts it. At 7B with 8 ranks per node the other ranks then never hold the full
    28 GB float32 policy or 15 GB bfloat16 reference, only their 1/8 shards. False (or a single rank): every
    rank loads the full checkpoint, then shards it. The resulting learner is the same either way."""
    micro_batch_size: int = 1
    """Sequences per forward/backward on one rank. Gradient accumulation is implied: a mini-batch is split
    over ranks, then into micro-batches of this size, and their gradients are summed before one step."""
    lr: float = 5e-6
    """Peak AdamW learning rate (paper, GRPO: 5e-6; 1e-5 collapses training). SFT uses ``sft.lr``."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (assumption: torch defaults)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (paper: 0.01)."""
    warmup_steps: int = 0
    """Linear warmup optimizer steps; when 0, ``warmup_ratio`` of the total steps is used."""
    warmup_ratio: float = 0.0
    """Warmup as a share of the total optimizer steps (used when ``warmup_steps`` is 0)."""
    min_lr_ratio: float = 0.0
    """Cosine decay floor as a share of the peak lr (1.0 = constant lr after warmup)."""
    grad_clip: float = 5.0
    """Max global gradient norm (paper: 5); <= 0 disables clipping (the norm is still reported)."""
    reference: ReferencePlacement = ReferencePlacement.sharded
    """Frozen reference model for the KL term: sharded (FSDP2 like the policy) | cpu_offload (FSDP2 with
    parameters kept in host memory, GPU only; same as sharded on CPU) | none (no KL term)."""
    reference_path: str = ""
    """Reference model directory; empty = the policy's initial weights (model.path, i.e. the SFT model)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every K optimizer steps (0 = only at the end)."""
    keep_last: int = 2
    """Resumable checkpoints to keep; older ones are deleted after a new one is complete."""
    timeout_s: float = 1800.0
    """Timeout for collectives and for every remote call from the driver (a hang becomes a named error)."""
    megatron: MegatronConfig = field(default_factory=MegatronConfig)
    """The Megatron-core learner's parallel layout (read by ``learner.backend: megatron``)."""

    def __post_init__(self) -> None:
        check(self.backend not in ("auto", "gloo", "nccl"), "learner.backend",
              f"{self.backend!r} is a torch.distributed backend: that key is learner.dist_backend now; "
              "learner.backend names the training backend (fsdp2, or package.module:Class)")
        LEARNER_BACKENDS.check(self.backend)
        check(not self.megatron.distributed_optimizer or self.backend == "megatron",
              "learner.megatron.distributed_optimizer",
              f"shards the Megatron learner's optimizer state; learner.backend is {self.backend!r} (FSDP2 shards "
              "its optimizer state already)")
        set_choice(self, "dist_backend", DistBackend, "learner.dist_backend")
        set_choice(self, "param_dtype", Dtype, "learner.param_dtype")
        set_choice(self, "reduce_dtype", Dtype, "learner.reduce_dtype")
        check(self.micro_batch_size >= 1, "learner.micro_batch_size", "must be >= 1")
        # 0 is allowed: a frozen policy is the baseline that shows how much of a curve is evaluation noise
        check(self.lr >= 0, "learner.lr", "must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "learner.betas", "need two in [0, 1)")
        check(self.weight_decay >= 0, "learner.weight_decay", "must be >= 0")
        check(self.warmup_steps >= 0, "learner.warmup_steps", "must be >= 0")
        check(0 <= self.warmup_ratio < 1, "learner.warmup_ratio", "must be in [0, 1)")
        check(0 <= self.min_lr_ratio <= 1, "learner.min_lr_ratio", "must be in [0, 1]")
        set_choice(self, "reference", ReferencePlacement, "learner.reference")
        check(self.checkpoint_every >= 0, "learner.checkpoint_every", "must be >= 0")
        check(self.keep_last >= 1, "learner.keep_last", "must be >= 1")
        check(self.timeout_s > 0, "learner.timeout_s", "must be > 0")


@dataclass(frozen=True)
class SftConfig:
    train_file: str = ""
    """SFT samples with a gold ``trace`` (project JSONL schema); empty = data.train_file."""
    epochs: int = 1
    """Passes over the SFT data (paper: 1)."""
    batch_size: int = 16
    """Sequences per optimizer step, over all learner ranks (paper: 16)."""
    lr: float = 1e-5
    """Peak learning rate for SFT (paper: 1e-5); the schedule shape comes from the learner section."""
    output_dir: str = ""
    """Where the SFT run writes ``hf/`` (the Hugging Face checkpoint GRPO starts from) and ``checkpoints/``;
    empty = {run.output_dir}/{run.name}/sft."""
    resume: bool = True
    """Continue from the latest resumable checkpoint in ``output_dir`` when there is one."""
    drop_last: bool = False
    """Drop a final partial batch (kept by default: small datasets would lose a large share)."""
    prefetch_batches: int = 2
    """Batches decoded and tokenised ahead, in a driver thread, while the learners train on the current one
    (0 = build each batch only when it is needed). Costs this many batches of pixels in driver memory."""

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "sft.epochs", "must be >= 1")
        check(self.prefetch_batches >= 0, "sft.prefetch_batches", "must be >= 0")
        check(self.batch_size >= 1, "sft.batch_size", "must be >= 1")
        check(self.lr > 0, "sft.lr", "must be > 0")
