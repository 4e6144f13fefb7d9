"""One Qwen2.5-VL for the Megatron learner: this rank's tensor-parallel shard of the language model (a
megatron-core ``GPTModel``) and the Hugging Face vision tower (replicated on every TP rank), as one module, so
the optimizer, ``train()``/``eval()`` and checkpoints see both.

Why the tower can train replicated: the decoder's input is replicated over the TP group and megatron all-reduces
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
from vt_ray.learner.megatron.weights import HfCheckpoint, load_hf_weights, make_bridge


class MegatronVL(torch.nn.Module):
    """``lm`` (GPTModel shard) + ``visual`` (HF tower); ``bridge`` converts names (mbridge)."""

    def __init__(self, lm: Any, visual: torch.nn.Module, hf_config: Any, dedup_videos: bool = False) -> None:
        super().__init__()
        self.lm, self.visual, self.hf_config, self.dedup_videos = lm, visual, hf_config, dedup_videos
        self.bridge = make_bridge(hf_config)

    @classmethod
    def load(cls, path: str, tensor_parallel: int, use_te: bool, device: torch.device,
             dedup_videos: bool = False, pipeline_parallel: int = 1, recompute: Recompute | None = None,
             sequence_parallel: bool = False) -> MegatronVL:
        """The checkpoint at ``path``: the language model split over the TP group and into pipeline stages (every
        rank reads the tensors it needs, weights.load_hf_weights), the vision tower whole on the first stage (an
        empty module on the others). ``recompute``: megatron's activation recompute in training;
        ``sequence_parallel``: megatron's sequence parallelism (TP > 1). Collective over megatron's groups."""
        from megatron.core import parallel_state

        from vt_ray.models.hf_load import load_vl_model

        hf_config = load_hf_config(path)
        lm = build_language_model(TextShape.from_hf(hf_config), tensor_parallel=tensor_parallel,
                                  pipeline_parallel=pipeline_parallel, use_te=use_te, recompute=recompute,
                                  sequence_parallel=sequence_parallel)
        vl = cls(lm, torch.nn.Module(), hf_config, dedup_videos)
        load_hf_weights(lm, vl.bridge, HfCheckpoint(path))
        if not parallel_state.is_pipeline_first_stage():
            return vl.to(device)
        # The tower from transformers' own loader (same module and attention as the FSDP2 learner). It reads the
        # whole checkpoint once at setup; reading only ``visual.*`` is left for large models (docs/megatron.md).
        vl.visual = load_vl_model(path, torch.float32).model.visual
        return vl.to(device)

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
            return pipeline.run(self.lm, [inputs], lambda _, out: (out.sum() * 0, self._full_logprobs(ids, out)),
                                forward_only=True)[0]
        output = self.lm(padded, positions, causal_mask(padded.shape[1]).to(ids.device),
                         decoder_input=decoder_input(self.lm, padded, {}))
        return self._full_logprobs(ids, output)

    @staticmethod
    def _full_logprobs(ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        from megatron.core import parallel_state

        logits = output[0, : ids.shape[1]].contiguous()  # [T, V/TP] (a sequence-parallel forward's padding dropped)
        group = parallel_state.get_tensor_model_parallel_group()
        # TP rank r holds vocabulary slice r. megatron's own gather allocates on the CUDA device: gathered here.
        pieces = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, logits, group=group)
        full = torch.cat(pieces, dim=-1).double()
        return full[:-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
