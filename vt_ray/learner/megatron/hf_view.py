"""The Megatron policy under the names the FSDP2 learner's Hugging Face model uses: what rollout engines
receive (the streamed weight sync), ``export_state_dict`` returns and ``save_hf`` writes. The Megatron vision
tower (``learner.megatron.vision_impl: megatron``) goes through mbridge's mapping and the TP gather as the
language model does; the HF tower's tensors are read as they are.

Names and shapes come from the transformers model built on the meta device (no storage), in its
``state_dict`` order; each maps to its checkpoint name through transformers' own conversion mapping
(``revert_weight_conversion``, what ``save_pretrained`` applies), and the checkpoint name to the Megatron
parameter that holds it through mbridge's mapping. A tensor's full value is gathered from the TP shards only
when a bucket needs it (:func:`vt_ray.learner.megatron.weights.gather_param`). A bf16 policy is read from its
float32 masters (``MegatronVL.masters``), so the export is cast to the rollout dtype from float32, as the FSDP2
learner's (its sharded masters are float32).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import torch
import torch.distributed as dist

from vt_ray.learner.fsdp import tied_parameter_groups
from vt_ray.learner.megatron.vlm import MegatronVL
from vt_ray.learner.megatron.weights import gather_param, hf_names_of, layer_offset


class HfView:
    """HF model names -> where each tensor lives in a :class:`MegatronVL` (the same on every rank)."""

    def __init__(self, vl: MegatronVL) -> None:
        from megatron.core import parallel_state
        from transformers.core_model_loading import revert_weight_conversion

        from vt_ray.learner.weight_stream import stream_names
        from vt_ray.models.hf_load import build_vl_model_on_meta

        meta = build_vl_model_on_meta(vl.hf_config, torch.float32)
        state = meta.state_dict()
        self.shapes = {name: tuple(t.shape) for name, t in state.items()}
        self.dtypes = {name: t.dtype for name, t in state.items()}
        self.pp_group = parallel_state.get_pipeline_model_parallel_group()
        self.stage = parallel_state.get_pipeline_model_parallel_rank()
        self.stage_ranks = dist.get_process_group_ranks(self.pp_group)
        first = parallel_state.is_pipeline_first_stage()
        self.names = list(state)
        self.stream_names = stream_names(meta)  # every tensor once (a tied lm_head is left to the embedding)
        # checkpoint name -> (attribute of the Megatron module holding it, its parameter name)
        owner = {hf: (attr, param) for attr, (module, prefix) in vl.megatron_parts().items()
                 for param, hfs in hf_names_of(module, vl.bridge, prefix).items() for hf in hfs}
        # HF name -> (Megatron module attribute or "" for the HF tower, parameter or tower key, checkpoint name)
        self.source: dict[str, tuple[str, str, str]] = {}
        for name, tensor in state.items():
            checkpoint_name = next(iter(revert_weight_conversion(meta, {name: tensor})))
            if checkpoint_name in owner:
                self.source[name] = (*owner[checkpoint_name], checkpoint_name)
            elif checkpoint_name.startswith("visual.") and first:  # the HF tower lives on the first stage
                self.source[name] = ("", checkpoint_name.removeprefix("visual."), "")
        # Pipeline stages: each holds some names; every stage learns which stage holds each (the others' sources
        # are only looked up by their own stage), the same on every rank.
        found: list[Any] = [self.source]
        if len(self.stage_ranks) > 1:
            found = [None] * len(self.stage_ranks)
            dist.all_gather_object(found, self.source, group=self.pp_group)
        self.source = {}
        self.stage_of: dict[str, int] = {}
        for stage, source in enumerate(found):  # a name two stages hold (a tied embedding's copy): the first's
            for name, where in source.items():
                if name not in self.stage_of:
                    self.source[name], self.stage_of[name] = where, stage
        # lm_head tied to the embedding with one stage: one Megatron tensor answers for both names (after the
        # merge, so that every rank picks the same stage for a name)
        for group in tied_parameter_groups(meta):
            known = [n for n in group if n in self.source]
            for name in group:
                if known and name not in self.source:
                    self.source[name], self.stage_of[name] = self.source[known[0]], self.stage_of[known[0]]
        missing = [n for n in self.names if n not in self.source]
        if missing:
            raise ValueError(f"no Megatron parameter or vision-tower tensor holds {missing[:5]}")

    def gathered(self, vl: MegatronVL, names: list[str]) -> Iterator[torch.Tensor]:
        """The full tensors of ``names`` in order, on every rank. Collective over the TP and pipeline groups
        (every rank must iterate it): the stage holding a tensor makes it, then broadcasts it to the other
        stages (one broadcast per tensor over the pipeline group)."""
        local = self._gathered_here(vl)
        next(local)
        for name in names:
            mine = self.stage_of[name] == self.stage
            tensor = local.send(name) if mine else None
            if len(self.stage_ranks) > 1:
                if tensor is None:
                    tensor = torch.empty(self.shapes[name], dtype=self.dtypes[name], device=self._device(vl))
                else:
                    tensor = tensor.contiguous()
                dist.broadcast(tensor, src=self.stage_ranks[self.stage_of[name]], group=self.pp_group)
            assert tensor is not None
            yield tensor

    @staticmethod
    def _device(vl: MegatronVL) -> torch.device:
        return next(vl.lm.parameters()).device

    def _gathered_here(self, vl: MegatronVL) -> Generator[torch.Tensor | None, str, None]:
        """A coroutine: sent a name this stage holds, it answers the full tensor. Collective over the TP group:
        each Megatron parameter is all-gathered when its first HF name comes; its other pieces (q/k/v, gate/up)
        wait until theirs."""
        # The float32 masters when the model is bf16 (vl.master_of): the export is the optimizer's state, as
        # FSDP2's; looked up when a tensor is gathered (sharded masters are put together one at a time)
        parts = {attr: (dict(module.named_parameters()), prefix, layer_offset(module))
                 for attr, (module, prefix) in vl.megatron_parts().items()}
        tower = vl.visual.state_dict(keep_vars=True)
        pending: dict[str, torch.Tensor] = {}
        out: torch.Tensor | None = None
        while True:
            name = yield out
            attr, param, key = self.source[name]
            if not attr:
                out = vl.master_of(tower[param]).detach()
                continue
            if key not in pending:
                params, prefix, offset = parts[attr]
                pending.update(gather_param(param, vl.master_of(params[param]), vl.bridge, offset, prefix))
            out = pending.pop(key)

    def state_dict(self, vl: MegatronVL) -> dict[str, torch.Tensor]:
        """Every tensor of the HF model (tied names included), full, each its own copy (the tower's would
        otherwise be its live parameters). Collective; every rank gets the whole model (fine for the sizes run
        here; a rank-0-only gather is what 72B wants)."""
        return {name: tensor if self.source[name][0] else tensor.clone()
                for name, tensor in zip(self.names, self.gathered(vl, self.names))}
