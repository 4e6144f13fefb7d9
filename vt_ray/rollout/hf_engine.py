"""transformers ``generate`` behind the same interface as :class:`VllmEngine`: for debugging, as a fallback
where vLLM is unavailable, and as the reference in the rollout benchmark. A call's prompts are generated together
in left-padded batches (``rollout.hf_batch_size``).

Log-probs are of the raw (untempered) model distribution, as vLLM returns them by default, so both backends
feed GRPO the same quantity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vt_ray.common.weight_share import open_receiver
from vt_ray.common.weight_stream import StreamGroup, StreamPlan, StreamSession
from vt_ray.config.schema import ModelConfig, RolloutConfig
from vt_ray.prompts.chat import banned_token_ids
from vt_ray.prompts.encode import encode_prompts
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
        if not self._banned:
            raise ValueError(f"{self.model_path}: the tokenizer has no vision placeholder tokens; the hf backend "
                             "serves Qwen2.5-VL models")
        # Finished responses are padded with a vision placeholder, a token generation never samples, so a
        # response's length is where its padding starts. (The tokenizer's own pad, <|endoftext|>, is also an EOS
        # the model may sample: a response ended by a stop string would then look one token longer.)
        self._pad = self._banned[0][0]
        self.manifest = WeightManifest.from_model(self.model)  # what every pushed blob must match

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingSettings) -> list[RolloutResult]:
        """All requests in as few ``generate`` calls as ``rollout.hf_batch_size`` allows (one per media kind
        when it is 0), left-padded, each with its ``sampling.n`` responses.

        Reproducibility: ``sampling.seed`` (or the last :meth:`reseed`) seeds the call once, so a call's samples
        are a function of the seed and the batch it was given. Sampled responses differ from one-prompt-per-call
        generation with the same seed (the batch draws its random numbers together); greedy ones do not
        (tests/unit/rollout/test_hf_engine.py).
        """
        if self.weight_version == UNKNOWN_VERSION:
            raise WeightSyncError("this engine's weights are in an unknown state after a failed weight sync; "
                                  "push a complete blob before generating", applied=True)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        size = self.rollout.hf_batch_size or max(len(requests), 1)
        results: list[RolloutResult | None] = [None] * len(requests)
        for media in dict.fromkeys(r.media for r in requests):  # the processor takes one media kind per batch
            rows = [i for i, r in enumerate(requests) if r.media == media]
            for start in range(0, len(rows), size):
                chunk = rows[start:start + size]
                for i, result in zip(chunk, self._generate_batch([requests[i] for i in chunk], sampling),
                                     strict=True):
                    results[i] = result
        return [r for r in results if r is not None]

    def _generate_batch(self, requests: Sequence[GenerationRequest], s: SamplingSettings) -> list[RolloutResult]:
        from transformers import StoppingCriteriaList, StopStringCriteria

        # Frames + vLLM-style metadata, exactly as the learner encodes them: same temporal positions everywhere
        # (transformers ignores a bare ``fps`` kwarg when frames are pre-sampled). Left padding: every row's new
        # tokens start at column ``width``; the released mRoPE positions skip the padding (vt_ray.models.mrope).
        inputs = encode_prompts(self.processor, [r.prompt for r in requests], [r.frames for r in requests],
                                [r.video_metadata for r in requests], requests[0].media)
        width = inputs["input_ids"].shape[1]
        greedy = s.temperature == 0
        per_prompt = 1 if greedy else s.n  # greedy responses are all alike: generate one, copy it n times
        stopping = StoppingCriteriaList()
        if s.stop:
            stopping.append(_AfterMinTokens(StopStringCriteria(self.tokenizer, list(s.stop)), width, s.min_tokens))
        with _ChosenTokenLogprobs(self.model) as recorder:
            out = self.model.generate(
                **inputs,
                max_new_tokens=s.max_tokens,
                min_new_tokens=s.min_tokens or None,
                do_sample=not greedy,
                temperature=None if greedy else s.temperature,
                top_p=None if greedy else s.top_p,
                num_return_sequences=per_prompt,
                stopping_criteria=stopping,
                bad_words_ids=self._banned,
                eos_token_id=None if s.ignore_eos else sorted(self._eos),
                pad_token_id=self._pad,
                return_dict_in_generate=True,
            )
        new_tokens = out.sequences[:, width:]  # [B*n, L]: row b*n + k is response k of prompt b (n = per_prompt)
        logprobs = recorder.logprobs(new_tokens)  # [B*n, L]
        results = []
        for b, req in enumerate(requests):
            prompt_ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
            rows = [b * per_prompt + k % per_prompt for k in range(s.n)]
            results.append(RolloutResult(req.uid, prompt_ids, [self._completion(new_tokens[i], logprobs[i], s)
                                                                for i in rows]))
        return results

    def _completion(self, tokens: torch.Tensor, logprobs: torch.Tensor, s: SamplingSettings) -> Completion:
        ids = tokens.tolist()  # [L]: a finished response is followed by pad tokens, which are never sampled
        length = ids.index(self._pad) if self._pad in ids else len(ids)
        ids = ids[:length]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finished = (length < len(tokens) or (bool(ids) and ids[-1] in self._eos and not s.ignore_eos)
                    or _ends_with_stop(text, s.stop))
        return Completion(text=text, token_ids=ids, logprobs=logprobs[:length].tolist(),
                          finish_reason="stop" if finished else "length")

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
        contract of ``VllmEngine.receive_weights``. An ``ipc`` session hands out views of the learner's shared
        buffer itself: each is copied into its parameter before the next is asked for (``private=False``)."""
        parsed = StreamPlan.from_dict(plan)
        group = StreamGroup(StreamSession(**session), base_rank)
        receiver = open_receiver(group, parsed, private=False)
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


class _AfterMinTokens:
    """A stopping criterion that counts only once more than ``min_tokens`` tokens follow the prompt (``width``
    columns): stop strings honour ``min_tokens`` as in vLLM's detokenizer (``min_new_tokens`` alone only holds
    EOS back)."""

    def __init__(self, inner: Any, width: int, min_tokens: int) -> None:
        self.inner, self.width, self.min_tokens = inner, width, min_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = self.inner(input_ids, scores, **kwargs)
        return done if input_ids.shape[1] - self.width > self.min_tokens else torch.zeros_like(done)


class _ChosenTokenLogprobs:
    """Records each generated token's log-prob under the raw model distribution while ``generate`` runs.

    Why a forward hook: ``output_logits`` keeps the whole [B, L, V] logits until generation ends (about 5 GB
    for 32 responses x 256 tokens at Qwen's 152k vocabulary), and a ``LogitsProcessor`` runs after the
    bad-words mask (not the raw distribution vLLM reports). The hook keeps one step's log-softmax [B, V] until
    the next forward, whose input is the token chosen from it, then keeps only that token's log-prob.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.steps: list[torch.Tensor] = []  # [B] per generated token but the last
        self.pending: torch.Tensor | None = None  # [B, V] log-probs of the step whose token is not yet known

    def __enter__(self) -> _ChosenTokenLogprobs:
        self.handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _hook(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self.pending is not None:
            chosen = kwargs["input_ids"][:, -1:]  # the token sampled from the pending step
            self.steps.append(self.pending.gather(-1, chosen.to(self.pending.device))[:, 0])
        self.pending = output.logits[:, -1].float().log_softmax(-1)

    def logprobs(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[B, L] log-probs of ``new_tokens`` (generate's output after the prompt)."""
        if self.pending is None or new_tokens.shape[1] == 0:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        last = self.pending.gather(-1, new_tokens[:, -1:].to(self.pending.device))[:, 0]
        out = torch.stack([*self.steps, last], dim=1).cpu()
        if out.shape != new_tokens.shape:
            raise RuntimeError(f"recorded {tuple(out.shape)} log-probs for {tuple(new_tokens.shape)} generated "
                               "tokens: generate ran an unexpected number of forward passes")
        return out
