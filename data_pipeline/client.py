"""Chat calls to a model endpoint, cached by request hash, with retries, backoff and a concurrency cap.

One :class:`ChatClient` per (endpoint, worker process). ``chat`` first looks the request up in the
:class:`~data_pipeline.cache.RequestCache`; only a miss goes to the endpoint, and the response is cached the
moment it arrives, so a rerun after a crash re-issues no finished request ("never pay twice").

Errors: transport errors, timeouts, 429 and 5xx are retried up to ``max_retries`` times with exponential
backoff and full jitter; a 429's ``Retry-After`` (seconds or HTTP date) replaces the backoff. Other 4xx fail at
once. A request that still fails raises :class:`EndpointError`, which the steps turn into a dropped row.

Secrets: the API key is read from the environment at call time, sent only in the Authorization header, and
scrubbed from every error message; it is never part of the cache key or the cached value.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from data_pipeline.cache import RequestCache, request_key
from data_pipeline.errors import EndpointError
from vt_ray.config.curate import EndpointConfig

Messages = list[dict[str, Any]]


@dataclass
class ChatResult:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str
    retries: int = 0  # failed HTTP attempts before the answer (0 when cached)
    rate_limited: int = 0  # 429s among them
    backoff_s: float = 0.0  # total time waited before retries


def sampling_params(cfg: EndpointConfig, attempt: int) -> dict[str, Any]:
    """The request's sampling fields. The seed carries the attempt, so a regeneration is a distinct request
    (distinct cache key, and a different sample from a seeded server)."""
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
            "seed": cfg.seed + attempt, **cfg.extra_body}


def cache_payload(cfg: EndpointConfig, messages: Messages, attempt: int, template: str) -> dict[str, Any]:
    """Everything that decides the answer and nothing secret: hashed into the cache key."""
    endpoint = cfg.cache_id or (cfg.base_url.rstrip("/") if cfg.kind == "openai" else "vllm_local")
    return {"base_url": endpoint, "model": cfg.model,
            "messages": messages, "params": sampling_params(cfg, attempt), "attempt": attempt, "template": template}


def _retry_after(value: str | None, cap: float) -> float | None:
    if not value:
        return None
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else min(cap, max(0.0, parsed.timestamp() - time.time()))


class ChatClient:
    """Cached chat completions against one endpoint. Thread-safe: workers call it from a thread pool."""

    def __init__(self, name: str, cfg: EndpointConfig, cache: RequestCache, concurrency: int | None = None) -> None:
        self.name, self.cfg, self.cache = name, cfg, cache
        self.concurrency = concurrency or cfg.max_concurrency
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._rng = random.Random()
        self._http: httpx.Client | None = None
        if cfg.kind == "openai":
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._http = httpx.Client(timeout=httpx.Timeout(cfg.timeout_s), limits=limits)
        self._engine: Any = None  # vllm_local: a LocalEngine (data_pipeline.vllm_local), made on first use

    # --- public -----------------------------------------------------------------------------------------------

    def chat(self, messages: Messages, *, attempt: int = 0, template: str = "") -> ChatResult:
        key = request_key(cache_payload(self.cfg, messages, attempt, template))
        hit = self.cache.get(key)
        if hit is not None:
            return ChatResult(hit["content"], hit["prompt_tokens"], hit["completion_tokens"], True, key)
        with self._slots:
            result = self._send(messages, attempt, key)
        self.cache.put(key, {"content": result.content, "prompt_tokens": result.prompt_tokens,
                             "completion_tokens": result.completion_tokens, "endpoint": self.name,
                             "model": self.cfg.model, "template": template, "attempt": attempt})
        return result

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # --- transport --------------------------------------------------------------------------------------------

    def _send(self, messages: Messages, attempt: int, key: str) -> ChatResult:
        if self.cfg.kind == "vllm_local":
            from data_pipeline.vllm_local import LocalEngine

            if self._engine is None:
                self._engine = LocalEngine(self.cfg, self.name)
            content, usage = self._engine.chat(messages, sampling_params(self.cfg, attempt))
            return ChatResult(content, usage[0], usage[1], False, key)
        return self._send_http(messages, attempt, key)

    def _api_key(self) -> str | None:
        if not self.cfg.api_key_env:
            return None
        value = os.environ.get(self.cfg.api_key_env)
        if not value:
            raise EndpointError(f"{self.name}: environment variable {self.cfg.api_key_env} is not set")
        return value

    def _scrub(self, text: str, secret: str | None) -> str:
        return text.replace(secret, "***") if secret else text

    def _send_http(self, messages: Messages, attempt: int, key: str) -> ChatResult:
        secret = self._api_key()
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        body = {"model": self.cfg.model, "messages": messages, **sampling_params(self.cfg, attempt)}
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        retries = rate_limited = 0
        waited = 0.0
        last = ""
        for k in range(self.cfg.max_retries + 1):
            delay: float | None = None
            try:
                resp = self._http.post(url, json=body, headers=headers)  # type: ignore[union-attr]
            except httpx.TimeoutException:
                last = f"timeout after {self.cfg.timeout_s:g} s"
            except httpx.TransportError as err:
                last = f"transport error {type(err).__name__}"
            else:
                if resp.status_code == 200:
                    return self._parse(resp, key, retries, rate_limited, waited, secret)
                last = f"HTTP {resp.status_code}: {self._scrub(resp.text[:200], secret)}"
                if resp.status_code == 429:
                    rate_limited += 1
                    delay = _retry_after(resp.headers.get("retry-after"), self.cfg.backoff_max_s)
                elif resp.status_code < 500:
                    raise EndpointError(f"{self.name}: {last}", retries + 1, rate_limited)
            if k == self.cfg.max_retries:
                break
            if delay is None:  # full jitter: spreads retries of many workers after a shared outage
                delay = self._rng.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**k))
            retries += 1
            waited += delay
            time.sleep(delay)
        raise EndpointError(f"{self.name}: gave up after {retries + 1} attempts: {last}", retries + 1, rate_limited)

    def _parse(self, resp: httpx.Response, key: str, retries: int, rate_limited: int, waited: float,
               secret: str | None) -> ChatResult:
        try:
            data = resp.json()
            content = data["choices"][0]["message"].get("content") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise EndpointError(f"{self.name}: malformed response ({type(err).__name__}): "
                                f"{self._scrub(resp.text[:200], secret)}") from None
        return ChatResult(content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                          False, key, retries, rate_limited, waited)
