"""Per-GPU learner memory of a Megatron layout (``learner.backend: megatron``): tensor x pipeline x data parallel.

The terms describe the backend as written (vt_ray/learner/megatron/, docs/megatron.md; Korthikanti et al. 2022
for the activation split), with t = TP, p = PP, d = learner ranks / (t p), c = compute dtype bytes:
- Parameters of the peak pipeline stage P_s: its layers/p decoder layers over t, the embedding (first stage)
  and the lm_head (last stage) over t (vocab-parallel), the vision tower on the first stage: whole with
  ``learner.megatron.vision_impl: hf`` (every TP rank runs the same Hugging Face tower on the same pixels), over t
  with ``megatron`` (its norms, patch embedding and row-parallel biases, replicated, are a rounding error here).
  float32 compute: 4 P_s (the parameters are the masters). bf16 compute (``learner.param_dtype``): c P_s bf16
  parameters + 4 P_s float32 masters.
- Gradients: 4 P_s (float32, freed after the step: only the train phase holds them). With bf16 the backward
  leaves c P_s, each copied into its master's float32 gradient and freed: 4 P_s at the peak.
- Optimizer: 8 P_s (a torch AdamW's m and v on the local shards, replicated over d).
- With ``learner.megatron.distributed_optimizer`` (vt_ray/learner/megatron/dist_optim.py, ZeRO-1) each of the d
  replicas keeps a 1/d slice of the float32 masters and of the moments: parameters c P_s + 4 P_s / d (the
  float32 slice is a copy in either dtype), gradients c P_s (the model's, until the reduce-scatter) + 4 P_s / d
  (the slice's), optimizer 8 P_s / d.
- Reference: c P_s (the same layout, forward only) when the recipe keeps one on the GPU.
- Activations (1F1B schedule): stage i holds p - i micro-batches in flight, each through layers/p layers, so the
  first stage stores ``layers`` layers' worth. Without sequence parallelism a layer's norm inputs and residual
  (2h) are replicated over TP and the rest (5h + 2 kv_dim + 4I) split: c S b (2h + (5h + 2kv + 4I)/t) per layer;
  with sequence parallelism (``learner.megatron.sequence_parallel``) those are split along the sequence too:
  c S b (7h + 2kv + 4I)/t. With activation checkpointing (megatron's full recompute): c S b h per layer input
  kept (/t with sequence parallelism: the layer inputs are sequence slices), plus two layers recomputed. Logits
  (last stage): (c + 8) R b V / t, vocab-parallel. Vision (first stage): as the FSDP2 plan (whole, with either
  tower: an overestimate for ``vision_impl: megatron``, whose attention and MLP activations split over t too).
  Without checkpointing, the FSDP2 plan's backward transients too: ``transients`` x (text + logits + vision).
The first and the last stage are both sized; the larger is the learner's budget (they differ only for p > 1).
Context parallelism (``learner.megatron.context_parallel_size``, CP): d = learner ranks / (t CP p), and the text
activations and logits are those of S / CP and R / CP tokens (each CP rank keeps its chunks of every sequence);
the vision tower's are not divided (every CP rank runs it whole). Not counted: the keys and values of the whole
sequence each layer attends to (TE's ring exchanges them chunk by chunk; the CPU path all-gathers them, 2 kv_dim
per token per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from vt_ray.cluster.model_shapes import ModelShape
from vt_ray.config.schema import RecipeConfig

GIB = 1024**3


@dataclass(frozen=True)
class MegatronLayout:
    tp: int
    pp: int
    dp: int
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    cp: int = 1

    @classmethod
    def of(cls, cfg: RecipeConfig, shape: ModelShape) -> MegatronLayout:
        """The recipe's layout, checked against the model shape the planner resolved (``config.json`` or the
        ``resources.model_size`` table: the recipe loader can only check a ``config.json`` on this machine)."""
        section = cfg.learner.megatron
        tp, pp, ranks = section.tensor_parallel_size, section.pipeline_parallel_size, cfg.resources.learner.num_workers
        cp = section.context_parallel_size
        section.check_shape(shape.heads, shape.kv_heads, shape.vocab, shape.layers, f"({shape.name})")
        section.check_ranks(ranks)
        return cls(tp, pp, ranks // (tp * cp * pp), section.sequence_parallel, section.distributed_optimizer, cp)

    def describe(self) -> str:
        cp = f" x CP {self.cp}" if self.cp > 1 else ""
        sliced = " (distributed optimizer)" if self.distributed_optimizer else ""
        return (f"Megatron TP {self.tp}{' (SP)' if self.sequence_parallel else ''}{cp} x PP {self.pp} x DP {self.dp}"
                f"{sliced}")

    def state_bytes(self, c: int) -> tuple[float, float, float]:
        """Bytes per local parameter of (parameters, gradients, optimizer) at c-byte compute. The distributed
        optimizer shards the float32 masters and moments over the data- and context-parallel ranks (the ranks
        that hold the same parameters)."""
        if self.distributed_optimizer:
            shards = self.dp * self.cp
            return c + 4 / shards, c + 4 / shards, 8 / shards
        return param_bytes(c), 4, 8


@dataclass(frozen=True)
class StageMemory:
    """One pipeline stage's learner terms in bytes, with the formula each was computed by."""

    name: str
    params: int
    activations: float
    activation_note: str
    per_param: float = 0.0  # parameters + gradients + optimizer bytes per parameter (MegatronLayout.state_bytes)

    def total(self, c: int, reference: bool) -> float:
        return self.params * (self.per_param + (c if reference else 0)) + self.activations


def param_bytes(c: int) -> int:
    """Parameter bytes per parameter: float32 (its own master), or c-byte parameters + a float32 master."""
    return 4 if c == 4 else c + 4


def _stage(cfg: RecipeConfig, s: ModelShape, lay: MegatronLayout, first: bool, last: bool, micro_batch: int,
           c: int, checkpointing: bool, vision_activations: float, transients: float) -> StageMemory:
    layers = s.layers // lay.pp
    params = layers * s.text_layer_params // lay.tp
    params += (s.vocab * s.hidden // lay.tp) * (int(first) + int(last and not s.tie_embeddings))
    if first:
        params += s.vision_params // lay.tp if cfg.learner.megatron.vision_impl == "megatron" else s.vision_params
    b, h = micro_batch, s.hidden
    # context parallelism: each rank holds its share of every sequence
    seq, resp = (cfg.data.max_prompt_tokens + cfg.rollout.max_tokens) / lay.cp, cfg.rollout.max_tokens / lay.cp
    split = 5 * h + 2 * s.kv_dim + 4 * s.intermediate  # attention and MLP inside: split over TP
    replicated = 2 * h  # norm inputs and residual: replicated over TP, or sequence slices with SP
    sp = lay.tp if lay.sequence_parallel else 1
    per_layer = c * seq * b * (replicated / sp + split / lay.tp)
    stage_index = 0 if first else lay.pp - 1
    in_flight_layers = (lay.pp - stage_index) * layers  # 1F1B: p - i micro-batches through this stage's layers
    if checkpointing:
        text = c * in_flight_layers * seq * b * h / sp + 2 * per_layer
        note = "layer inputs in flight + 2 recomputed"
    else:
        text, note = in_flight_layers * per_layer, "every in-flight layer's saved tensors"
    logits = (c + 8) * resp * b * s.vocab / lay.tp if last else 0.0
    vision = vision_activations if first else 0.0
    extra = 0.0 if checkpointing else transients * (text + logits + vision)
    name = "only stage" if lay.pp == 1 else ("first stage" if first else "last stage")
    per_cp = f" (/CP {lay.cp})" if lay.cp > 1 else ""
    note = (f"{name}, S={seq:g}{per_cp}, b={b}: {note} {text / GIB:.2f} + logits {logits / GIB:.2f} (vocab/TP) "
            f"+ vision {vision / GIB:.2f}")
    if extra:
        note += f" + transients {transients:g} x saved {extra / GIB:.2f}"
    return StageMemory(name, params, text + logits + vision + extra, note, sum(lay.state_bytes(c)))


def peak_stage(cfg: RecipeConfig, s: ModelShape, lay: MegatronLayout, micro_batch: int, c: int,
               checkpointing: bool, reference: bool, vision_activations: float,
               transients: float = 0.0) -> StageMemory:
    """The stage (first or last) whose learner memory is larger. ``transients``: the backward's peak beyond the
    saved tensors, as a share of them, without checkpointing (the planner's ``BACKWARD_TRANSIENTS``)."""
    stages = [_stage(cfg, s, lay, True, lay.pp == 1, micro_batch, c, checkpointing, vision_activations,
                     transients)]
    if lay.pp > 1:
        stages.append(_stage(cfg, s, lay, False, True, micro_batch, c, checkpointing, vision_activations,
                             transients))
    return max(stages, key=lambda st: st.total(c, reference))


__all__ = ["MegatronLayout", "StageMemory", "param_bytes", "peak_stage"]
