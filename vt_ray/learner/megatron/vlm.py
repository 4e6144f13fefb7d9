"""One Qwen2.5-VL for the Megatron learner: this rank's tensor-parallel shard of the language model (a
megatron-core ``GPTModel``) and the vision tower, as one module, so the optimizer, ``train()``/``eval()`` and
checkpoints see both. The tower (``learner.megatron.vision_impl``) is the Hugging Face module, replicated on
every TP rank (``hf``), or mbridge's Megatron ViT, split over the TP group as the language model is
(``megatron``, :mod:`vt_ray.learner.megatron.vision`).

Why the HF tower can train replicated: the decoder's input is replicated over the TP group and megatron all-reduces
its gradient (the first column-parallel linear's input, the vocab-parallel embedding's output), so every TP
rank gets the same, full gradient for the tower and applies the same AdamW update to its copy.
"""

from __future__ import annotations

from typing import Any

import torch

from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.megatron.logprobs import StageInputs, batch_logprobs_and_entropy, causal_mask, stage_inputs
from vt_ray.learner.megatron.model import Recompute, TextShape, build_language_model, load_hf_config
from vt_ray.learner.megatron.multimodal import decoder_input, pad_sequence
from vt_ray.learner.megatron.optim import Float32Masters
from vt_ray.learner.megatron.weights import LANGUAGE, HfCheckpoint, load_hf_weights, make_bridge


class MegatronVL(torch.nn.Module):
    """``lm`` (GPTModel shard) + ``visual`` (the HF tower, or this rank's shard of the Megatron one); ``bridge``
    converts names (mbridge)."""

    def __init__(self, lm: Any, visual: torch.nn.Module, hf_config: Any, dedup_videos: bool = False) -> None:
        super().__init__()
        self.lm, self.visual, self.hf_config, self.dedup_videos = lm, visual, hf_config, dedup_videos
        self.bridge = make_bridge(hf_config)
        # The optimizer's float32 copies when the model is bf16 (set by the backend; the weight export and the
        # checkpoint read them, so what leaves the learner is the float32 state, as FSDP2's sharded masters).
        self.masters: Float32Masters | None = None
        # With the distributed optimizer (learner.megatron.distributed_optimizer) the masters are sharded over
        # the data-parallel replicas instead: its master_of puts a whole one together (dist_optim.py).
        self.sharded_masters: Any = None

    def master_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The float32 master of a parameter (the tensor itself without masters, or when it is float32).
        Collective over the data-parallel group with the distributed optimizer."""
        if self.sharded_masters is not None:
            return self.sharded_masters.master_of(tensor)
        return tensor if self.masters is None else self.masters.master_of(tensor)

    @classmethod
    def load(cls, path: str, tensor_parallel: int, use_te: bool, device: torch.device,
             dedup_videos: bool = False, pipeline_parallel: int = 1, recompute: Recompute | None = None,
             vision_impl: str = "hf", dtype: torch.dtype = torch.float32, trained: bool = False,
             sequence_parallel: bool = False) -> MegatronVL:
        """The checkpoint at ``path``: the language model split over the TP group and into pipeline stages (every
        rank reads the tensors it needs, weights.load_hf_weights), the vision tower on the first stage (an
        empty module on the others): ``vision_impl`` ``hf`` (whole) or ``megatron`` (this TP rank's shard, only
        the ``visual.*`` tensors read, through mbridge's mapping). Parameters in ``dtype`` (megatron's
        ``params_dtype``; its local RMSNorm keeps float32 weights). ``trained``: the optimizer's float32 masters
        too (``masters``, from the checkpoint's values, not their bf16 rounding). ``recompute``: megatron's
        activation recompute of the language model in training (and transformers' gradient checkpointing in the
        HF tower's blocks); ``sequence_parallel``: megatron's sequence parallelism (TP > 1). Collective over
        megatron's groups."""
        from megatron.core import parallel_state

        hf_config = load_hf_config(path)
        lm = build_language_model(TextShape.from_hf(hf_config), tensor_parallel=tensor_parallel,
                                  pipeline_parallel=pipeline_parallel, dtype=dtype, use_te=use_te,
                                  recompute=recompute, sequence_parallel=sequence_parallel)
        vl = cls(lm, torch.nn.Module(), hf_config, dedup_videos)
        checkpoint = HfCheckpoint(path)
        float32: dict[int, torch.Tensor] = {}
        load_hf_weights(lm, vl.bridge, checkpoint, float32_copies=float32)
        if parallel_state.is_pipeline_first_stage():
            vl.visual = vl._load_tower(path, checkpoint, vision_impl, tensor_parallel, use_te, dtype, recompute,
                                       float32)
        vl.to(device)
        if trained:
            vl.masters = Float32Masters(vl.parameters(), {k: v.to(device) for k, v in float32.items()})
        return vl

    def _load_tower(self, path: str, checkpoint: HfCheckpoint, vision_impl: str, tensor_parallel: int,
                    use_te: bool, dtype: torch.dtype, recompute: Recompute | None,
                    float32: dict[int, torch.Tensor]) -> torch.nn.Module:
        """The vision tower of the first stage in ``dtype``; ``float32`` gains the checkpoint's float32 values of
        its parameters that are not float32 (their masters)."""
        if vision_impl == "megatron":
            from vt_ray.learner.megatron import vision

            # built and loaded in float32, then cast whole as the HF tower is: megatron's local RMSNorm and
            # mbridge's patch embedding stay float32 under a bf16 params_dtype, and their float32 outputs would
            # meet bf16 linears
            tower = vision.build_vision_model(self.hf_config, tensor_parallel, use_te=use_te)
            load_hf_weights(tower, self.bridge, checkpoint, prefix=vision.PREFIX)
        elif vision_impl == "hf":
            from vt_ray.models.hf_load import load_vl_model

            # The tower from transformers' own loader (same module and attention as the FSDP2 learner). It reads
            # the whole checkpoint once at setup (vision_impl megatron reads only ``visual.*``).
            tower = load_vl_model(path, torch.float32).model.visual
            if recompute is not None:  # the tower's blocks recompute too (transformers' own, as the FSDP2 learner)
                enable = tower.gradient_checkpointing_enable  # a transformers PreTrainedModel method
                enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            raise ValueError(f"learner.megatron.vision_impl: {vision_impl!r} (hf | megatron)")
        if dtype != torch.float32:  # the masters keep the checkpoint's float32 values
            float32.update((id(p), p.detach()) for p in tower.parameters())  # .to() replaces p.data
            tower.to(dtype)
        return tower

    def megatron_parts(self) -> dict[str, tuple[torch.nn.Module, str]]:
        """The Megatron modules on this rank, by attribute (``lm``, and ``visual`` when it is the Megatron
        tower), each with its mbridge prefix: what goes through mbridge's mapping and the TP gather."""
        from vt_ray.learner.megatron.vision import PREFIX, is_megatron_tower

        parts: dict[str, tuple[torch.nn.Module, str]] = {"lm": (self.lm, LANGUAGE)}
        if is_megatron_tower(self.visual):
            parts["visual"] = (self.visual, PREFIX)
        return parts

    def logprobs(self, batch: TrainBatch, entropy: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, L] response-token log-probs (and entropy when asked) of a learner batch."""
        device = next(self.lm.parameters()).device
        return batch_logprobs_and_entropy(self.lm, self.visual, batch, self.hf_config, entropy, device,
                                          self.dedup_videos)

    def stage_inputs(self, batch: TrainBatch, entropy: str | None = None) -> StageInputs:
        """A learner batch as one pipeline micro-batch (:mod:`vt_ray.learner.megatron.pipeline`)."""
        device = next(self.lm.parameters()).device
        return stage_inputs(self.lm, self.visual, batch, self.hf_config, entropy, device, self.dedup_videos)

    def text_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """[T-1] float64 log-probs of a text-only sequence ``ids`` [1, T]: full-vocabulary logits gathered over
        the TP group and a float64 softmax, as the FSDP2 learner's weight probe computes it. With pipeline
        stages, through the schedule (forward only), the result broadcast from the last stage."""
        from megatron.core import parallel_state

        positions = torch.arange(ids.shape[1], device=ids.device).expand(3, 1, -1)
        padded, positions = pad_sequence(self.lm, ids), pad_sequence(self.lm, positions)  # sequence parallelism
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            from vt_ray.learner.megatron import pipeline

            inputs = StageInputs(padded, positions, None, torch.ones_like(ids, dtype=torch.bool),
                                 lambda: decoder_input(self.lm, padded, {}))
            return pipeline.run(self.lm, [inputs], lambda _, out: (out.sum() * 0,
                                                                   self._full_logprobs(ids, padded, out)),
                                forward_only=True)[0]
        output = self.lm(padded, positions, causal_mask(padded.shape[1]).to(ids.device),
                         decoder_input=decoder_input(self.lm, padded, {}))
        return self._full_logprobs(ids, padded, output)

    @staticmethod
    def _full_logprobs(ids: torch.Tensor, padded: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """From this rank's output ``[1, L', V/TP]`` (L' the padded length, or this CP rank's part of it): the
        log-prob of each next token at its positions, gathered over CP into sequence order, cut to ``T-1``."""
        import torch.distributed as dist
        from megatron.core import parallel_state

        from vt_ray.learner.megatron import context

        logits = output[0].contiguous()  # [L', V/TP]
        labels = context.split(torch.roll(padded, -1, dims=1), 1)[0]  # the next token at each of these positions
        group = parallel_state.get_tensor_model_parallel_group()
        # TP rank r holds vocabulary slice r. megatron's own gather allocates on the CUDA device: gathered here.
        pieces = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, logits, group=group)
        full = torch.cat(pieces, dim=-1).double()
        next_lp = full.log_softmax(-1).gather(-1, labels[:, None])[:, 0]
        return context.gather_sequence(next_lp[None])[0, : ids.shape[1] - 1]
