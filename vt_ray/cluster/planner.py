"""Per-GPU memory plan for a recipe's model and layout, so a layout that cannot fit fails before any model loads.

Assumptions (each one is a term's formula in the printed table; change them here and nowhere else):
- Learner: FSDP2 over all learner GPUs (F = learner ranks), fp32 sharded master weights, compute in
  c = bytes of ``learner.param_dtype`` (``model.dtype`` if the learner section has none). Per GPU:
  parameters = 4P/F + c x (embedding + lm_head + 2 text layers) (the root's and two prefetched layers' unsharded
  copies), gradients = 4P/F (fp32, sharded), optimizer = 8P/F (AdamW exp_avg + exp_avg_sq in fp32, sharded).
  ``learner.reshard_after_forward: false`` adds cP to parameters (every gathered copy kept until backward);
  ``learner.reduce_every_micro_batch: false`` adds cP to gradients (accumulated unsharded).
- Learner with ``learner.backend: megatron``: tensor x pipeline x data parallel instead of FSDP; its terms are
  computed in :mod:`vt_ray.cluster.megatron_memory` (the same names, so the budgets below are unchanged).
- Reference model (KL to the SFT policy, paper 1.2): FSDP-sharded in c, forward only: cP/F. None on the GPU when
  ``algorithm.needs_reference`` is false or ``learner.reference`` is not ``sharded``.
- Activations, micro batch b = ``learner.micro_batch_size`` (or ``--micro-batch-size``), S = data.max_prompt_tokens
  + rollout.max_tokens tokens, R = rollout.max_tokens. One layer's saved tensors (attention + SwiGLU, flash
  attention so no S^2 term) are A = c x S x b x (7h + 2 kv_dim + 4 I).
  with ``learner.activation_checkpointing``: c x layers x S x b x h (layer inputs) + 2A (one layer recomputed,
  and its gradients); without: (layers + 1) x A.
  logits: (c + 8) x R x b x V (logits only at response positions, as the learner asks with logits_to_keep; the
  model's logits, their fp32 copy and its gradient).
  vision tower, per video: c x T x (depth x B_v + patch_in) without checkpointing, c x T x (depth x h_v + 2 B_v +
  patch_in) with, where B_v = 14 h_v + 4 I_v (one block's saved tensors per patch), patch_in = the patch
  embedding's input width (3 x 2 x 14 x 14), T = patches of one video at video.max_frames and video.max_pixels;
  times the distinct videos in a micro-batch: b, or with ``learner.dedup_videos`` (each distinct video encoded
  once) the most a run of b rows in groups of G = rollout.n sharing one video can hold, min(b, ceil((b-1)/G)+1).
  Measured (benchmarks/activation_bytes.py, autograd's saved tensors, docs/scaling.md): text within 6% of the
  formula, vision 22.4 h_v per block for I_v = 2 h_v (the formula: 22).
  pixel inputs: 4 x T x b x patch_in (float32 patches, one copy per row of the micro-batch, as the learner
  passes them to the model).
  transients, without checkpointing: 0.4 x the saved tensors above (activation gradients and forward/backward
  temporaries alive at the peak; measured on CPU, docs/scaling.md: one micro-batch's forward + backward peaks at
  1.31-1.41x its saved bytes, a GRPO step's learner rank at 1.36-1.42x). With checkpointing the recomputed
  layer's 2A already counts its gradients (not measured).
- vLLM (per engine, TP = rollout.tensor_parallel_size): weights cP/TP; runtime = 2 GiB with enforce_eager, else
  3 GiB (profiling activations, CUDA graphs, non-torch allocations; measure on the cluster); KV cache need =
  max_num_seqs x max_model_len x kv_bytes_per_token / TP. vLLM reserves gpu_memory_utilization x GPU memory up
  front, and weights + runtime + KV need must fit inside that reservation.
- Every GPU holds back 2 GiB for the CUDA context and NCCL buffers and 5% for allocator fragmentation.
- Colocated: vLLM keeps its reservation during rollout, while the learner holds parameters, optimizer and reference
  (gradients are freed after each step). While the learner trains, vLLM sleeps (level 1: weights to host, KV
  dropped), so the train phase holds the learner alone.
The term named as overflowing is the one at which the running total (in table order) passes the capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vt_ray.cluster.megatron_memory import MegatronLayout, peak_stage
from vt_ray.cluster.model_shapes import ModelShape, resolve_shape
from vt_ray.common.errors import check
from vt_ray.config.schema import RecipeConfig

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CONTEXT_GIB = 2.0
FRAGMENTATION = 0.05
BACKWARD_TRANSIENTS = 0.4
"""A learner's forward + backward peak beyond autograd's saved tensors, as a share of them (module docstring)."""


@dataclass(frozen=True)
class Term:
    name: str
    gib: float
    formula: str


@dataclass
class Budget:
    """One device phase: the terms that are resident at its peak, and what they must fit in."""

    title: str
    capacity_gib: float
    terms: list[Term] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return sum(t.gib for t in self.terms)

    def overflow(self) -> Term | None:
        running = 0.0
        for term in self.terms:
            running += term.gib
            if running > self.capacity_gib:
                return term
        return None


@dataclass
class MemoryPlan:
    shape: ModelShape | None
    shape_source: str
    summary: list[str]
    budgets: list[Budget]

    def first_overflow(self) -> tuple[Budget, Term] | None:
        for budget in self.budgets:
            term = budget.overflow()
            if term is not None:
                return budget, term
        return None


def check_layout(cfg: RecipeConfig) -> None:
    """Cross-section rules the resources section cannot see by itself."""
    res, tp = cfg.resources, cfg.rollout.tensor_parallel_size
    g = res.rollout.gpus_per_worker
    if g >= 1:
        check(g == tp, "resources.rollout.gpus_per_worker",
              f"{g:g} GPUs per engine but rollout.tensor_parallel_size is {tp}: they must be equal")
    else:
        check(tp == 1, "rollout.tensor_parallel_size", "engines with a fraction of a GPU (or none) cannot use TP")


def _gib(n_bytes: float) -> float:
    return n_bytes / GIB


def _vision_patches(cfg: RecipeConfig, shape: ModelShape) -> int:
    """Patches the vision tower sees for one video at the recipe's frame and pixel caps."""
    frames = cfg.video.max_frames
    return (frames + shape.temporal_patch - 1) // shape.temporal_patch * (cfg.video.max_pixels // shape.patch**2)


def _learner_settings(cfg: RecipeConfig) -> tuple[int, bool, bool]:
    """(compute dtype bytes, activation checkpointing, reference on GPU) from the learner and algorithm
    sections; each falls back to the module-docstring default when its section does not define it."""
    learner, algo = cfg.learner, cfg.algorithm
    c = DTYPE_BYTES[getattr(learner, "param_dtype", cfg.model.dtype)]
    checkpointing = bool(getattr(learner, "activation_checkpointing", True))
    needs_ref = getattr(algo, "needs_reference", getattr(algo, "kl_coef", 1.0) != 0)
    ref_on_gpu = needs_ref and getattr(learner, "reference", "sharded") == "sharded"
    return c, checkpointing, ref_on_gpu


def videos_per_micro_batch(cfg: RecipeConfig, micro_batch: int) -> int:
    """Distinct videos the vision tower encodes in one micro-batch. A GRPO batch keeps each prompt's
    ``rollout.n`` responses (one video) contiguous through sharding and micro-batching, so ``b`` consecutive rows
    span at most ceil((b-1)/n) + 1 prompts; ``learner.dedup_videos`` encodes each once (without it, every row)."""
    b, n = micro_batch, max(cfg.rollout.n, 1)
    if not cfg.learner.dedup_videos:
        return b
    return min(b, -(-(b - 1) // n) + 1)


def vision_activation_bytes(cfg: RecipeConfig, s: ModelShape, micro_batch: int, c: int, checkpointing: bool) -> int:
    """What the vision tower saves for backward in one micro-batch (the module docstring's formula)."""
    block = 14 * s.vision_hidden + 4 * s.vision_intermediate  # per patch: norms, qkv, attention, SwiGLU MLP
    patch_in = s.in_channels * s.temporal_patch * s.patch**2
    per_patch = (s.vision_depth * s.vision_hidden + 2 * block) if checkpointing else s.vision_depth * block
    return c * _vision_patches(cfg, s) * videos_per_micro_batch(cfg, micro_batch) * (per_patch + patch_in)


def pixel_input_bytes(cfg: RecipeConfig, s: ModelShape, micro_batch: int) -> int:
    """The micro-batch's float32 patches as the model receives them: one copy per row (each distinct video's
    copies share one encoding, not one input)."""
    return 4 * _vision_patches(cfg, s) * micro_batch * s.in_channels * s.temporal_patch * s.patch**2


def _megatron_terms(cfg: RecipeConfig, s: ModelShape, micro_batch: int, vision: float) -> dict[str, Term]:
    """The learner terms of a Megatron layout (vt_ray.cluster.megatron_memory says how each is computed)."""
    c, checkpointing, ref_on_gpu = _learner_settings(cfg)
    lay = MegatronLayout.of(cfg, s)
    st = peak_stage(cfg, s, lay, micro_batch, c, checkpointing, ref_on_gpu, vision, BACKWARD_TRANSIENTS)
    p_s = f"P_s={st.params / 1e9:.2f}B ({st.name}), TP={lay.tp}, PP={lay.pp}, DP={lay.dp}"
    params = ("4P_s (fp32, the optimizer's own)" if c == 4 else f"{c}P_s (bf16) + 4P_s (fp32 masters)")
    grads = ("4P_s (fp32, this rank's shards)" if c == 4
             else f"4P_s (fp32 master grads; the {c}P_s bf16 ones freed as they are copied)")
    moments = "8P_s (AdamW m, v in fp32, not sharded over DP)"
    if lay.distributed_optimizer:  # vt_ray/learner/megatron/dist_optim.py
        params = f"{c}P_s + 4P_s/DP (this replica's slice of the fp32 masters)"
        grads = f"{c}P_s (the model's, until the reduce-scatter) + 4P_s/DP (the slice's)"
        moments = "8P_s/DP (AdamW m, v of this replica's slice: distributed optimizer)"
    param_b, grad_b, optim_b = lay.state_bytes(c)
    return {
        "parameters": Term("parameters", _gib(param_b * st.params), f"{params}; {p_s}"),
        "gradients": Term("gradients", _gib(grad_b * st.params), grads),
        "optimizer": Term("optimizer", _gib(optim_b * st.params), moments),
        "reference": Term("reference", _gib(c * st.params) if ref_on_gpu else 0.0,
                          f"{c}P_s (same layout, forward only)" if ref_on_gpu
                          else "no reference on GPU (KL off or offloaded)"),
        "activations": Term("activations", _gib(st.activations), st.activation_note),
    }


def _learner_terms(cfg: RecipeConfig, s: ModelShape, micro_batch: int) -> dict[str, Term]:
    c, checkpointing, ref_on_gpu = _learner_settings(cfg)
    f = cfg.resources.learner.num_workers
    p = s.total_params
    gathered = s.embedding_params + 2 * s.text_layer_params
    seq, resp = cfg.data.max_prompt_tokens + cfg.rollout.max_tokens, cfg.rollout.max_tokens
    b, h = micro_batch, s.hidden
    per_layer = c * seq * b * (7 * h + 2 * s.kv_dim + 4 * s.intermediate)  # saved tensors of one layer
    if checkpointing:
        text, text_note = c * s.layers * seq * b * h + 2 * per_layer, "layer inputs + 1 layer recomputed"
    else:
        text, text_note = s.layers * per_layer + per_layer, "every layer's saved tensors"
    logits = (c + 8) * resp * b * s.vocab
    vision = vision_activation_bytes(cfg, s, b, c, checkpointing)
    inputs = pixel_input_bytes(cfg, s, b)
    if cfg.learner.backend == "megatron":
        return _megatron_terms(cfg, s, micro_batch, vision + inputs)
    transients = 0.0 if checkpointing else BACKWARD_TRANSIENTS * (text + logits + vision)
    learner = cfg.learner
    if getattr(learner, "reshard_after_forward", True):
        params = Term("parameters", _gib(4 * p / f + c * gathered),
                      f"4P/F + {c}(emb+head+2 layers); P={p / 1e9:.2f}B, F={f}")
    else:  # every block's gathered copy is kept from forward to backward
        params = Term("parameters", _gib(4 * p / f + c * p),
                      f"4P/F + {c}P (reshard_after_forward=false); P={p / 1e9:.2f}B, F={f}")
    if getattr(learner, "reduce_every_micro_batch", True):
        grads = Term("gradients", _gib(4 * p / f), "4P/F (fp32, sharded)")
    else:  # accumulated unsharded over the micro-batches, reduce-scattered once per step
        grads = Term("gradients", _gib(4 * p / f + c * p), f"4P/F + {c}P (unsharded until the step's reduce-scatter)")
    return {
        "parameters": params,
        "gradients": grads,
        "optimizer": Term("optimizer", _gib(8 * p / f), "8P/F (AdamW m, v in fp32, sharded)"),
        "reference": Term("reference", _gib(c * p / f) if ref_on_gpu else 0.0,
                          f"{c}P/F (forward only)" if ref_on_gpu else "no reference on GPU (KL off or offloaded)"),
        "activations": Term("activations", _gib(text + logits + vision + inputs + transients),
                            f"S={seq}, b={b}: {text_note} {_gib(text):.2f} + logits of {resp} response tokens "
                            f"{_gib(logits):.2f} + vision {_gib(vision):.2f} + pixel inputs {_gib(inputs):.2f}"
                            + (f" + transients {BACKWARD_TRANSIENTS:g} x saved {_gib(transients):.2f}"
                               if transients else "")),
    }


def _vllm_terms(cfg: RecipeConfig, s: ModelShape) -> list[Term]:
    ro = cfg.rollout
    c = DTYPE_BYTES[cfg.model.dtype]  # vLLM serves in model.dtype
    tp = ro.tensor_parallel_size
    kv = ro.max_num_seqs * ro.max_model_len * s.kv_bytes_per_token(c) / tp
    runtime = 2.0 if ro.enforce_eager else 3.0
    return [
        Term("vllm_weights", _gib(c * s.total_params / tp), f"{c}P/TP, TP={tp}"),
        Term("vllm_runtime", runtime, "profiling activations, CUDA graphs, non-torch (assumed)"),
        Term("vllm_kv_cache", _gib(kv), f"max_num_seqs {ro.max_num_seqs} x max_model_len {ro.max_model_len} x "
                                        f"{s.kv_bytes_per_token(c) // 1024} KiB/token / TP"),
    ]


def _learner_layout(cfg: RecipeConfig, shape: ModelShape) -> str:
    return MegatronLayout.of(cfg, shape).describe() if cfg.learner.backend == "megatron" else "FSDP"


def plan_memory(cfg: RecipeConfig, micro_batch: int = 1) -> MemoryPlan:
    """The per-GPU budgets of the recipe's layout. Raises ConfigError when the layout is inconsistent."""
    check(micro_batch >= 1, "micro_batch_size", "must be >= 1")
    check_layout(cfg)
    res = cfg.resources
    if res.gpus_per_node == 0:  # the tiny recipe: nothing to size, and its model may not be built yet
        return MemoryPlan(None, "", ["CPU-only layout (resources.gpus_per_node=0): no GPU memory to plan"], [])
    shape, source = resolve_shape(cfg.model.path, res.model_size)
    mem = res.gpu_memory_gib
    usable = mem * (1 - FRAGMENTATION)
    context = Term("cuda_context", CONTEXT_GIB, "CUDA context + NCCL buffers (assumed)")
    lt = _learner_terms(cfg, shape, micro_batch)
    vt = _vllm_terms(cfg, shape)
    reservation = cfg.rollout.gpu_memory_utilization * mem
    vllm_budget = Budget(f"vLLM engine, inside its reservation (gpu_memory_utilization "
                         f"{cfg.rollout.gpu_memory_utilization} x {mem:g} GiB)", reservation, vt)
    learner_train = [context, lt["parameters"], lt["gradients"], lt["optimizer"], lt["reference"], lt["activations"]]
    summary = [
        f"model: {shape.name} from {source}: {shape.total_params / 1e9:.2f}B parameters "
        f"(vision {shape.vision_params / 1e9:.2f}B), dtype {cfg.model.dtype}",
        f"layout: {res.num_nodes} node(s) x {res.gpus_per_node} GPUs of {mem:g} GiB; "
        f"{res.learner.num_workers} learner ranks ({_learner_layout(cfg, shape)}), "
        f"{res.rollout.num_workers} vLLM engines "
        f"(TP {cfg.rollout.tensor_parallel_size}), {'colocated' if res.colocate else 'split'}",
    ]
    if res.colocate:
        rollout_phase = [context, lt["parameters"], lt["optimizer"], lt["reference"],
                         Term("vllm_reserved", reservation, "gpu_memory_utilization x GPU memory")]
        budgets = [
            Budget("colocated GPU, rollout phase", usable, rollout_phase),
            vllm_budget,
            Budget("colocated GPU, train phase (vLLM asleep)", usable, learner_train),
        ]
    else:
        g = res.learner.gpus_per_worker
        ranks_per_gpu = round(1 / g) if g < 1 else 1  # fractional learner bundles stack ranks on one GPU
        if ranks_per_gpu > 1:
            learner_train = [context] + [Term(t.name, t.gib * ranks_per_gpu, f"{ranks_per_gpu} ranks x ({t.formula})")
                                         for t in learner_train[1:]]
        budgets = [Budget("learner GPU", usable, learner_train), vllm_budget]
        engines_per_gpu = round(1 / res.rollout.gpus_per_worker) if res.rollout.gpus_per_worker < 1 else 1
        budgets.append(Budget("rollout GPU", usable, [context, Term(
            "vllm_reserved", reservation * engines_per_gpu, f"{engines_per_gpu} engine(s) x reservation")]))
    return MemoryPlan(shape, source, summary, budgets)


def format_plan(plan: MemoryPlan) -> str:
    lines = list(plan.summary)
    for budget in plan.budgets:
        over = budget.overflow()
        status = f"DOES NOT FIT: {over.name} overflows" if over else "fits"
        lines += ["", f"{budget.title}: capacity {budget.capacity_gib:.1f} GiB",
                  f"  {'term':<16}{'GiB':>8}  formula"]
        lines += [f"  {t.name:<16}{t.gib:>8.2f}  {t.formula}" for t in budget.terms]
        lines.append(f"  {'total':<16}{budget.total_gib:>8.2f}  {status}")
    return "\n".join(lines)


def overflow_message(plan: MemoryPlan) -> str | None:
    """The refusal, naming the term at which the running total passes the capacity; None when it fits."""
    found = plan.first_overflow()
    if found is None:
        return None
    budget, term = found
    return (f"the plan does not fit: term '{term.name}' ({term.gib:.2f} GiB) overflows '{budget.title}' "
            f"({budget.total_gib:.2f} GiB > {budget.capacity_gib:.1f} GiB)")


__all__ = ["Budget", "MemoryPlan", "Term", "check_layout", "format_plan", "overflow_message", "plan_memory",
           "pixel_input_bytes", "videos_per_micro_batch", "vision_activation_bytes"]
