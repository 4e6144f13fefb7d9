"""The ``vllm_local`` endpoint: a vLLM engine in a named Ray actor, shared by every curation worker.

The first worker that needs the engine creates the actor (``get_if_exists``: one engine per model, however
many Ray Data actors call it); vLLM is imported only inside that actor. Requests go through ``LLM.chat`` so the
model's own chat template applies, as it would behind ``vllm serve``. Kept small on purpose: on a cluster the
recommended path is ``vllm serve`` plus the HTTP endpoint kind, which needs no code here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import ray

from data_pipeline.errors import EndpointError
from vt_ray.config.curate import EndpointConfig

_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "presence_penalty",
                  "frequency_penalty", "repetition_penalty", "stop")


@ray.remote
class VllmChatEngine:
    def __init__(self, model: str, max_model_len: int, seed: int) -> None:
        from vllm import LLM

        self.llm = LLM(model=model, max_model_len=max_model_len, seed=seed, enforce_eager=True)

    def chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[str, int, int]:
        from vllm import SamplingParams

        sampling = SamplingParams(**{k: v for k, v in params.items() if k in _SAMPLING_KEYS})
        out = self.llm.chat(messages, sampling, use_tqdm=False)[0]  # type: ignore[arg-type]  # plain OpenAI dicts
        return out.outputs[0].text, len(out.prompt_token_ids or []), len(out.outputs[0].token_ids)


def engine_name(model: str) -> str:
    return "curate-vllm-" + hashlib.sha256(model.encode()).hexdigest()[:12]


class LocalEngine:
    """One endpoint's handle on the shared engine actor (created, or found by name, on the first request)."""

    def __init__(self, cfg: EndpointConfig, name: str) -> None:
        self.cfg, self.name = cfg, name
        self._actor: Any = None

    def chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[str, tuple[int, int]]:
        """(content, (prompt_tokens, completion_tokens)); errors become EndpointError."""
        cfg = self.cfg
        if self._actor is None:
            self._actor = VllmChatEngine.options(  # type: ignore[attr-defined]
                name=engine_name(cfg.model), namespace="vt_ray_curate", get_if_exists=True,
                num_cpus=1, num_gpus=cfg.num_gpus).remote(cfg.model, cfg.max_model_len, cfg.seed)
        try:
            text, prompt_tokens, completion_tokens = ray.get(self._actor.chat.remote(messages, params),
                                                             timeout=cfg.timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as err:
            raise EndpointError(f"{self.name}: vllm_local engine failed: {type(err).__name__}") from None
        return text, (prompt_tokens, completion_tokens)
