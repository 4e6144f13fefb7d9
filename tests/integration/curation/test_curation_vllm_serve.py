"""Protocol compatibility of the curation client with a real ``vllm serve`` (OpenAI API server) on CPU.

The tiny model is random, so only the protocol is asserted: the response parses into our types, usage is
counted, the request cache answers the repeat without a request (the server's own request counter), and a
pipeline step (hindsight verification) runs against it end to end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from data_pipeline.cache import RequestCache
from data_pipeline.client import ChatClient
from data_pipeline.frames import jpeg_data_url
from data_pipeline.steps import Clients, verify
from vt_ray.config.curate import CurateConfig, EndpointConfig, EndpointsConfig

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finished_requests(base: str) -> float:
    """vLLM's own count of finished requests (Prometheus text at /metrics)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096",
           "--enforce-eager", "--seed", "0", "--limit-mm-per-prompt", '{"image": 2, "video": 0}']
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:  # wait for /health, with a deadline; fail fast if the server died
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy after 300 s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_client_speaks_openai_with_vllm_serve_and_caches(vllm_server: str, tmp_path: Path) -> None:
    cfg = EndpointConfig(base_url=f"{vllm_server}/v1", model="tiny", temperature=0.0, max_tokens=12,
                         timeout_s=120, max_retries=1)
    client = ChatClient("verify", cfg, RequestCache(tmp_path / "cache"))
    messages = [{"role": "system", "content": "You answer questions."},
                {"role": "user", "content": "Which colour appeared first? A. red B. blue"}]
    first = client.chat(messages, template="verify.v1")
    assert isinstance(first.content, str) and not first.cached and first.retries == 0
    assert first.prompt_tokens > 10 and 1 <= first.completion_tokens <= 12

    finished = _finished_requests(vllm_server)
    again = client.chat(messages, template="verify.v1")
    assert again.cached and again.content == first.content and again.prompt_tokens == first.prompt_tokens
    assert _finished_requests(vllm_server) == finished  # the repeat never reached the server
    other = client.chat(messages, attempt=1, template="verify.v1")  # a regeneration is a new request
    assert not other.cached and _finished_requests(vllm_server) == finished + 1

    # The caption step's message shape: text plus base64 JPEG image_url parts.
    frame = np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)
    text_only = client.chat([{"role": "user", "content": "Describe the frame."}], template="caption.v1")
    vision = client.chat([{"role": "user", "content": [
        {"type": "text", "text": "Describe the frame."},
        {"type": "image_url", "image_url": {"url": jpeg_data_url(frame, 85)}}]}], template="caption.v1")
    assert not vision.cached and vision.completion_tokens >= 1
    assert vision.prompt_tokens > text_only.prompt_tokens  # the image's tokens are counted


def test_verification_step_runs_against_vllm_serve(vllm_server: str, tmp_path: Path) -> None:
    ep = EndpointConfig(base_url=f"{vllm_server}/v1", model="tiny", temperature=0.0, max_tokens=16, timeout_s=120)
    cfg = CurateConfig(endpoints=EndpointsConfig(question=ep, caption=ep, trace=ep, verify=ep),
                       cache_dir=str(tmp_path / "cache"))
    cache = RequestCache(cfg.cache_dir)
    clients = Clients(*(ChatClient(s, ep, cache) for s in ("question", "caption", "trace", "verify")))
    row = {"sample": {"question": "What turned green?", "options": ["the ball", "the cup"], "answer": "A",
                      "answer_type": "multiple_choice"}, "steps": {}, "usage": {}, "prompts": {}}
    trace = "<time>00:01-00:03</time> <caption>the ball turns green</caption> <think>so A</think> <answer>A</answer>"
    passed = verify(row, trace, clients, cfg, attempt=0)
    assert passed in (True, False)  # gibberish from a random model: only the round trip is asserted
    assert row["usage"]["verify"]["calls"] == 1 and row["usage"]["verify"]["completion_tokens"] >= 1
    assert row["prompts"]["verify"] == "verify.v1"


def test_vllm_local_endpoint_in_a_ray_actor(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The ``vllm_local`` kind: one shared engine actor, same client, same cache."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
        "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        cfg = EndpointConfig(kind="vllm_local", model=str(tiny_model_dir), temperature=0.0, max_tokens=8,
                             max_model_len=2048, timeout_s=300)
        cfg.validate("curate.endpoints.verify")
        client = ChatClient("verify", cfg, RequestCache(tmp_path / "cache"))
        messages = [{"role": "user", "content": "Which colour appeared first? A. red B. blue"}]
        first = client.chat(messages, template="verify.v1")
        assert not first.cached and first.prompt_tokens > 5 and 1 <= first.completion_tokens <= 8
        again = ChatClient("verify", cfg, RequestCache(tmp_path / "cache")).chat(messages, template="verify.v1")
        assert again.cached and again.content == first.content
    finally:
        ray.shutdown()
