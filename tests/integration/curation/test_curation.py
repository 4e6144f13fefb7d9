"""Hindsight-Curation pipeline against the scripted OpenAI-compatible server over a real socket.

Asserts outcomes only (server counters, output rows, stats, cache contents), never wall time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from data_pipeline.cache import RequestCache, request_key
from data_pipeline.client import ChatClient, EndpointError, cache_payload
from data_pipeline.fixtures import make_fixtures
from data_pipeline.testing.scripted_server import ScriptedServer
from vt_ray.common.errors import ConfigError
from vt_ray.config.curate import CurateConfig, EndpointConfig, EndpointsConfig, SourceConfig
from vt_ray.config.loader import load_config
from vt_ray.data.schema import read_samples
from vt_ray.trace import parse_trace

ROOT = Path(__file__).resolve().parents[3]
SECRET = "sk-test-Zq8v3NcurationSECRETvalue"  # must never appear in any output, cache entry or log


def _endpoint(url: str, **kw: object) -> EndpointConfig:
    base = dict(base_url=url, model="scripted", max_concurrency=4, backoff_base_s=0.01, backoff_max_s=0.5,
                timeout_s=5.0, max_retries=3)
    return EndpointConfig(**{**base, **kw})  # type: ignore[arg-type]


def _config(tmp: Path, url: str, sources: list[SourceConfig], **kw: object) -> CurateConfig:
    eps = EndpointsConfig(**{s: _endpoint(url) for s in ("question", "caption", "trace", "verify")})
    return CurateConfig(**{"sources": sources, "endpoints": eps, "output_dir": str(tmp / "out"),
                           "cache_dir": str(tmp / "cache"), "workers": 1, "batch_size": 2, "caption_frames": 2,
                           "caption_decode_frames": 8, **kw})  # type: ignore[arg-type]


def _records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _caption_record(uid: str, *captions: str) -> dict:
    segs = [{"start": 2.0 * i, "end": 2.0 * i + 1.5, "caption": c} for i, c in enumerate(captions)]
    return {"uid": uid, "source": "activitynet_captions", "video": "none.mp4", "duration": 10.0, "segments": segs}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ["CURATE_TEST_API_KEY"] = SECRET  # workers inherit the driver's env at ray.init, as in production
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    del os.environ["CURATE_TEST_API_KEY"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_fixtures(tmp_path_factory.mktemp("curate_fixtures"), num_videos=4, faults=True)


# --- config, cache, client (no Ray) ---------------------------------------------------------------------------


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="curate.endpoints.trace.api_key_env"):
        load_config(None, ["curate.endpoints.trace.api_key_env=sk-abc-123"])
    with pytest.raises(ConfigError, match="curate.endpoints.verify.kind"):
        load_config(None, ["curate.endpoints.verify.kind=grpc"])
    with pytest.raises(ConfigError, match="curate.max_regenerations"):
        load_config(None, ["curate.max_regenerations=-1"])
    with pytest.raises(ConfigError, match="curate.sources.0.name"):
        CurateConfig(sources=[SourceConfig(name="nope", path="x")])
    with pytest.raises(ConfigError, match="curate.no_such_key"):
        load_config(None, ["curate.no_such_key=1"])
    cfg = load_config(ROOT / "recipes" / "curate_tiny.yaml").curate
    assert cfg.scripted_server and len(cfg.sources) == 2
    example = load_config(ROOT / "recipes" / "curate_activitynet_example.yaml").curate
    assert example.endpoints.trace.api_key_env == "OPENAI_API_KEY" and example.max_regenerations == 3
    local = EndpointConfig(kind="vllm_local", model="/models/qwen")
    local.validate("curate.endpoints.caption")  # vllm_local: construction-config validation only
    with pytest.raises(ConfigError, match="curate.endpoints.caption.num_gpus"):
        replace(local, num_gpus=-1).validate("curate.endpoints.caption")


def test_cache_key_distinguishes_attempts_and_templates_and_excludes_the_key(tmp_path: Path) -> None:
    cfg = _endpoint("http://h/v1", api_key_env="CURATE_TEST_KEY")
    msgs = [{"role": "user", "content": "hi"}]
    keys = {request_key(cache_payload(cfg, msgs, a, t)) for a in (0, 1) for t in ("trace.v1", "trace.v2")}
    assert len(keys) == 4
    assert request_key(cache_payload(cfg, msgs, 0, "t")) != request_key(
        cache_payload(replace(cfg, base_url="http://other/v1"), msgs, 0, "t"))
    pinned = replace(cfg, cache_id="qwen-verifier")  # same model behind a new URL: still the same requests
    assert request_key(cache_payload(pinned, msgs, 0, "t")) == request_key(
        cache_payload(replace(pinned, base_url="http://other/v1"), msgs, 0, "t"))
    os.environ["CURATE_TEST_KEY"] = SECRET
    try:
        assert SECRET not in json.dumps(cache_payload(cfg, msgs, 0, "t"))
    finally:
        del os.environ["CURATE_TEST_KEY"]
    cache = RequestCache(tmp_path)
    cache.put("ab" * 32, {"content": "x"})
    assert cache.get("ab" * 32) == {"content": "x"} and cache.get("cd" * 32) is None and len(cache) == 1
    assert not list(tmp_path.rglob(".tmp-*"))  # the temp file was renamed into place


def test_client_retries_errors_and_honours_retry_after(tmp_path: Path) -> None:
    with ScriptedServer(retry_after="0.3", stall_s=3.0) as server:
        cache = RequestCache(tmp_path)
        client = ChatClient("trace", _endpoint(server.url, timeout_s=0.5), cache)
        r500 = client.chat([{"role": "user", "content": "hello [http500:2]"}])
        assert (r500.retries, r500.cached, server.statuses[500]) == (2, False, 2)
        r429 = client.chat([{"role": "user", "content": "hello [http429:1]"}])
        assert (r429.rate_limited, r429.retries) == (1, 1) and r429.backoff_s >= 0.3  # Retry-After, not jitter
        rtimeout = client.chat([{"role": "user", "content": "hello [timeout:1]"}])
        assert rtimeout.retries == 1 and rtimeout.content == "ok"
        before = server.requests
        again = client.chat([{"role": "user", "content": "hello [http500:2]"}])
        assert again.cached and again.content == r500.content and server.requests == before  # never pays twice
        with pytest.raises(EndpointError, match="gave up after 4 attempts: HTTP 500"):
            client.chat([{"role": "user", "content": "always [http500:99]"}])
        wrong = ChatClient("trace", _endpoint(server.url.replace("/v1", "/v2")), cache)
        before = server.requests
        with pytest.raises(EndpointError, match="HTTP 404"):
            wrong.chat([{"role": "user", "content": "x"}])
        assert server.requests == before + 1  # a 4xx other than 429 is not retried
        usage = client.chat([{"role": "user", "content": "one two three"}])
        assert usage.prompt_tokens == 3 and usage.completion_tokens == 1


def test_missing_api_key_env_fails_without_a_request(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        client = ChatClient("verify", _endpoint(server.url, api_key_env="CURATE_UNSET_KEY_VAR"), RequestCache(tmp_path))
        with pytest.raises(EndpointError, match="CURATE_UNSET_KEY_VAR is not set"):
            client.chat([{"role": "user", "content": "x"}])
        assert server.requests == 0


# --- the pipeline on Ray Data ---------------------------------------------------------------------------------


def test_pipeline_end_to_end_then_rerun_is_free(ray_local, fixtures: dict[str, Path], tmp_path: Path) -> None:
    from data_pipeline.pipeline import run_curation

    root = str(fixtures["video_root"])
    sources = [SourceConfig("records", str(fixtures["caption_only"]), root),
               SourceConfig("records", str(fixtures["qa_only"]), root)]
    with ScriptedServer() as server:
        cfg = _config(tmp_path, server.url, sources, caption_decode_frames=32)
        stats = run_curation(cfg)
        first = server.requests
        out = Path(cfg.output_dir)
        sft, rl = read_samples(out / "sft.jsonl"), read_samples(out / "rl.jsonl")
        dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]

        # faults=True: caption row 0 fails verification once (kept after one regeneration), caption row 1
        # never verifies (dropped after 1 + 3 traces), QA row 2 meets one HTTP 500 per request (retried).
        assert stats["records"] == 8 and stats["kept"] == 7 and len(sft) == len(rl) == 7
        assert [d["reason"] for d in dropped] == ["verify_failed:after_3_regenerations"]
        assert dropped[0]["steps"]["trace"]["attempts"] == 4 and dropped[0]["steps"]["verify"]["attempts"] == 4
        anet = stats["per_source"]["activitynet_captions"]
        assert (anet["records"], anet["kept"], anet["dropped"], anet["regenerated"]) == (4, 3, 1, 2)
        assert stats["per_source"]["star"]["kept"] == 4 and stats["per_source"]["star"]["completion"] == {"caption": 4}
        assert stats["per_step"]["verify"]["dropped"] == 1 and stats["per_step"]["trace"]["regenerated"] == 2
        assert stats["cost"]["retries"] >= 3 and server.statuses[500] == stats["cost"]["retries"]
        assert stats["cost"]["calls"] == server.statuses[200] and stats["cost"]["cache_hits"] == 0
        assert stats["cost"]["prompt_tokens"] > 0 and stats["cost"]["completion_tokens"] > 0
        cap = stats["per_step"]["caption"]
        assert cap["requests"] >= 4 and server.images == 2 * (cap["requests"] + cap["retries"])  # 2 JPEGs/window
        for s in sft:
            parsed = parse_trace(s.trace)
            assert not parsed.violations and parsed.complete_triples() >= 1 and parsed.answer == s.answer
            assert Path(s.video).is_file() and len(s.windows) == len(s.captions) >= 1
            assert s.extra["prompts"]["trace"] == "trace.v1" and s.extra["prompts"]["verify"] == "verify.v1"
        regenerated = [s for s in sft if s.extra["trace_attempts"] == 2]
        assert len(regenerated) == 1 and "[verify-fail:1]" in regenerated[0].captions[0]
        assert all(r.trace is None for r in rl) and [r.uid for r in rl] == [s.uid for s in sft]
        assert (out / "stats.md").read_text().startswith("# Hindsight-Curation report")

        rerun = run_curation(cfg)  # same config: everything from the cache
        assert server.requests == first
        assert rerun["cost"]["calls"] == 0 and rerun["cost"]["cache_hits"] == stats["cost"]["calls"]
        assert [s.to_json() for s in read_samples(out / "sft.jsonl")] == [s.to_json() for s in sft]


def test_regeneration_budget_and_parse_retries(ray_local, tmp_path: Path) -> None:
    from data_pipeline.pipeline import run_curation

    path = _records(tmp_path / "r.jsonl", [
        _caption_record("never", "a red ball rolls [verify-fail:99]", "a blue cup falls"),
        _caption_record("badtrace", "a dog runs [bad-trace:2]", "a cat sleeps"),
        _caption_record("badjson", "a man sings [bad-json:1]", "a woman claps"),
        _caption_record("single", "only one segment"),
        _caption_record("down", "a bell rings [http500:99]", "a door opens"),  # the endpoint never recovers
        {"uid": "empty", "source": "star", "video": "x.mp4", "duration": None, "segments": []},
        {"uid": "num", "source": "scalelong", "video": "x.mp4", "duration": 30.0, "segments": [],
         "question": "How many jumps?", "answer": "3", "answer_type": "numeric", "windows": [[1.0, 4.0]]},
    ])
    with ScriptedServer() as server:
        cfg = _config(tmp_path, server.url, [SourceConfig("records", str(path))], max_regenerations=1,
                      caption_frames=0)
        stats = run_curation(cfg)
    rows = {d["uid"]: d for d in map(json.loads, (tmp_path / "out" / "dropped.jsonl").read_text().splitlines())}
    assert rows["activitynet_captions/never"]["reason"] == "verify_failed:after_1_regenerations"
    assert rows["activitynet_captions/never"]["steps"]["trace"]["attempts"] == 2  # 1 + max_regenerations
    assert rows["activitynet_captions/badtrace"]["reason"].startswith("trace_format")  # 2 bad traces, budget 2
    assert rows["activitynet_captions/single"]["reason"] == "too_few_segments"
    assert rows["star/empty"]["reason"] == "no_qa_no_captions"
    # Retries exhausted: the row is emitted as dropped with the reason, the block and the run go on.
    assert rows["activitynet_captions/down"]["reason"].startswith("endpoint_error")
    assert rows["activitynet_captions/down"]["dropped_at"] == "question"
    sft = {s.uid: s for s in read_samples(tmp_path / "out" / "sft.jsonl")}
    assert set(sft) == {"activitynet_captions/badjson", "scalelong/num"}
    assert sft["scalelong/num"].answer == "3" and sft["scalelong/num"].windows == [[1.0, 4.0]]
    assert stats["per_step"]["question"]["failures"] == {"bad_json": 1}
    q = stats["per_step"]["question"]
    assert q["calls"] == 4  # never, badtrace, badjson x2 answered; "single" cost nothing
    assert (q["failed_calls"], q["retries"]) == (1, 3)  # "down": 1 + max_retries attempts, all HTTP 500


def test_api_key_is_sent_but_never_written_or_logged(ray_local, tmp_path: Path) -> None:
    from data_pipeline.pipeline import run_curation

    path = _records(tmp_path / "r.jsonl", [_caption_record("k1", "a kite flies", "a boy waves"),
                                           _caption_record("k2", "rain starts [http500:1]", "people run")])
    with ScriptedServer() as server:
        cfg = _config(tmp_path, server.url, [SourceConfig("records", str(path))])
        eps = cfg.endpoints
        cfg = replace(cfg, endpoints=replace(eps, **{s: replace(getattr(eps, s), api_key_env="CURATE_TEST_API_KEY")
                                                     for s in ("question", "caption", "trace", "verify")}))
        stats = run_curation(cfg)
    assert stats["kept"] == 2
    assert set(server.authorization) == {f"Bearer {SECRET}"}  # every request carried the key
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" and "cache" in p.parts for p in written)
    for p in written:
        assert SECRET not in p.read_text(errors="replace"), p
    session = Path(ray_local._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    for p in session.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


@pytest.mark.slow  # two CLI runs, each starting its own Ray cluster: ~20-30 s on 2 shared cores
def test_crash_and_resume_never_pays_twice(fixtures: dict[str, Path], tmp_path: Path) -> None:
    """Kill the whole pipeline (driver + its Ray cluster) mid-run; the rerun re-issues no finished request."""
    root = str(fixtures["video_root"])
    out, cache_dir, k = tmp_path / "out", tmp_path / "cache", 6

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"curate": {  # JSON is YAML
        "output_dir": str(out), "cache_dir": str(cache_dir), "workers": 1, "batch_size": 2, "caption_frames": 0,
        "sources": [{"name": "records", "path": str(fixtures[n]), "video_root": root}
                    for n in ("caption_only", "qa_only")]}}))

    def command(url: str) -> list[str]:
        overrides = [f"recipe={recipe}"]
        for step in ("question", "caption", "trace", "verify"):
            overrides += [f"curate.endpoints.{step}.base_url={url}", f"curate.endpoints.{step}.backoff_base_s=0.01",
                          f"curate.endpoints.{step}.cache_id=scripted"]  # the rerun's server has a new port
        return [sys.executable, "-m", "vt_ray", "curate", *overrides]

    env = {k_: v for k_, v in os.environ.items() if k_ != "RAY_ADDRESS"}
    with ScriptedServer(hang_after=k) as server:
        proc = subprocess.Popen(command(server.url), cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert server.wait_for_requests(k + 1, timeout_s=240), proc.stderr.read().decode()[-3000:] \
                if proc.poll() is not None else "pipeline made no progress"
            deadline = time.monotonic() + 60
            while (sum(server.statuses.values()) < k or len(RequestCache(cache_dir)) < len(server.answered)) \
                    and time.monotonic() < deadline:  # the first k replied to, and every 200 cached
                time.sleep(0.05)  # wait for the condition (answered responses on disk), not for a duration
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the crash: driver, Ray Data workers and the local cluster
            proc.wait()
        first_answered = set(server.answered)
        paid = server.statuses[200]
    # The first k requests arrived; those answered 200 (not the injected 500s) are all in the cache.
    assert 0 < paid == len(first_answered) == len(RequestCache(cache_dir)) and server.requests > k
    assert not (out / "sft.jsonl").exists()  # the killed run wrote no (partial) outputs

    with ScriptedServer() as server:
        done = subprocess.run(command(server.url), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not first_answered & set(server.received)  # no finished request was issued again
        assert server.statuses[200] == len(server.answered)  # each request answered once (500s are retried)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["cost"]["cache_hits"] == paid and stats["records"] == 8
    kept = read_samples(out / "sft.jsonl")
    dropped = (out / "dropped.jsonl").read_text().splitlines()
    assert len(kept) + len(dropped) == 8 and len(kept) == stats["kept"]
