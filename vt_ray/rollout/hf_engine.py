"""transformers ``generate`` behind the same interface as :class:`VllmEngine`: for debugging, as a fallback
where vLLM is unavailable, and as the reference in the rollout benchmark.

Log-probs are of the raw (untempered) model distribution, as vLLM returns them by default, so both backends
feed GRPO the same quantity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vt_ray.common.weight_stream import BucketReceiver, StreamGroup, StreamPlan, StreamSession
from vt_ray.config.schema import ModelConfig, RolloutConfig
from vt_ray.prompts.chat import banned_token_ids
from vt_ray.prompts.encode import encode_prompt
from vt_ray.rollout.types import (
    Completion,
    GenerationRequest,
    RolloutResult,
    SamplingSettings,
)
from vt_ray.rollout.weight_sync import (
    UNKNOWN_VERSION,
    WeightManifest,
    WeightSyncError,
    validate_blob,
    validate_specs,
)
from vt_ray.testing.faults import crash_point

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HfEngine:
    def __init__(self, model: ModelConfig, rollout: RolloutConfig, seed: int = 0, model_path: str | None = None):
        from transformers import AutoProcessor

        from vt_ray.models.hf_load import load_vl_model

        self.model_path = model_path or model.path
        self.rollout = rollout
        self.seed = seed
        self.weight_version = 0
        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.tokenizer = self.processor.tokenizer
        self.model = load_vl_model(self.model_path, _DTYPES[model.dtype]).eval()
        self._banned = [[i] for i in banned_token_ids(self.tokenizer)]  # vision placeholders: never sampled
        self._eos = {self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        self.manifest = WeightManifest.from_model(self.model)  # what every pushed blob must match

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingSettings) -> list[RolloutResult]:
        if self.weight_version == UNKNOWN_VERSION:
            raise WeightSyncError("this engine's weights are in an unknown state after a failed weight sync; "
                                  "push a complete blob before generating", applied=True)
        return [self._generate_one(r, sampling) for r in requests]

    def _generate_one(self, req: GenerationRequest, s: SamplingSettings) -> RolloutResult:
        # Frames + vLLM-style metadata, exactly as the learner encodes them: same temporal positions everywhere
        # (transformers ignores a bare ``fps`` kwarg when frames are pre-sampled).
        inputs = encode_prompt(self.processor, req.prompt, req.frames, req.video_metadata, req.media)
        prompt_len = inputs["input_ids"].shape[1]
        if s.seed is not None:
            torch.manual_seed(s.seed)
        greedy = s.temperature == 0
        out = self.model.generate(
            **inputs,
            max_new_tokens=s.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else s.temperature,
            top_p=None if greedy else s.top_p,
            num_return_sequences=s.n,
            stop_strings=list(s.stop) or None,
            bad_words_ids=self._banned or None,
            tokenizer=self.tokenizer,
            output_logits=True,
            return_dict_in_generate=True,
        )
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [n, L, V]
        completions = []
        for i in range(s.n):
            ids = out.sequences[i, prompt_len:].tolist()  # [L] padded after EOS
            length = next((j + 1 for j, t in enumerate(ids) if t in self._eos), len(ids))
            ids = ids[:length]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            finished = length < len(out.logits) or (ids and ids[-1] in self._eos) or _ends_with_stop(text, s.stop)
            completions.append(
                Completion(
                    text=text,
                    token_ids=ids,
                    logprobs=[float(logprobs[i, j, t]) for j, t in enumerate(ids)],
                    finish_reason="stop" if finished else "length",
                )
            )
        return RolloutResult(req.uid, inputs["input_ids"][0].tolist(), completions)

    @torch.no_grad()
    def prompt_logprobs(self, text: str) -> list[float]:
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]  # [1, T]
        logits = self.model(input_ids=ids).logits.float()  # [1, T, V]
        lp = logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])  # [T-1, 1]
        return lp[:, 0].tolist()

    def sleep(self) -> None:  # the debugging backend keeps its weights: nothing to free
        pass

    def wake_up(self) -> None:
        pass

    def reseed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def update_weights(self, state_dict: Mapping[str, torch.Tensor] | bytes | None, version: int) -> int:
        """Load new weights; the same contract as ``VllmEngine.update_weights``: every tensor is validated
        (name, shape, dtype kind) before any is copied, so a bad blob raises :class:`WeightSyncError` naming the
        tensor and the engine keeps serving its previous weights and version (``load_state_dict`` alone would
        copy the tensors before a bad one). ``None`` reloads the checkpoint the engine started from."""
        if state_dict is None:
            from vt_ray.models.hf_load import load_vl_model

            state_dict = load_vl_model(self.model_path, next(self.model.parameters()).dtype).state_dict()
        validate_blob(state_dict, self.manifest)
        if isinstance(state_dict, bytes | bytearray):
            from safetensors.torch import load

            state_dict = load(bytes(state_dict))
        tensors = dict(state_dict)
        try:
            self.model.load_state_dict(tensors, strict=False)  # validated: only a tied alias can be absent
        except Exception as err:
            self.weight_version = UNKNOWN_VERSION
            raise WeightSyncError(f"transformers weight load failed: {type(err).__name__}: {err}",
                                  applied=True) from err
        self.weight_version = version
        return len(tensors)

    def check_weight_plan(self, plan: dict[str, Any]) -> int:
        """As ``VllmEngine.check_weight_plan``: the plan against the model, before any bucket is sent."""
        return validate_specs(StreamPlan.from_dict(plan).specs(), self.manifest)

    @torch.no_grad()
    def receive_weights(self, session: dict[str, Any], base_rank: int, plan: dict[str, Any], version: int,
                        engine_rank: int = 0) -> int:
        """Join a streamed sync as rank ``base_rank`` and copy each tensor into the model as it arrives; the
        contract of ``VllmEngine.receive_weights``."""
        parsed = StreamPlan.from_dict(plan)
        group = StreamGroup(StreamSession(**session), base_rank)
        receiver = BucketReceiver(group, parsed, group.device)
        try:
            validate_specs(parsed.specs(), self.manifest)
        except WeightSyncError:
            receiver.drain()  # joined and drained: the sender and the other engines are not left blocked
            raise
        live = self.model.state_dict()  # the model's own tensors: copy_ writes the weights in place
        try:
            for name, tensor in receiver.tensors():
                live[name].copy_(tensor)
                if receiver.delivered == 1:
                    crash_point("rollout.receive_weights", engine_rank)  # tests: an engine lost mid-stream
        except Exception as err:
            receiver.abandon()
            if receiver.delivered > 0:
                self.weight_version = UNKNOWN_VERSION
            raise WeightSyncError(f"streamed load failed at or after tensor {receiver.current!r}: "
                                  f"{type(err).__name__}: {err}", tensor=getattr(err, "tensor", None)
                                  or receiver.current, applied=receiver.delivered > 0) from err
        self.weight_version = version
        return receiver.delivered


def _ends_with_stop(text: str, stops: Sequence[str]) -> bool:
    return any(text.endswith(s) for s in stops)

