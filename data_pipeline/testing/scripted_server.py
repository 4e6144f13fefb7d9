"""A scripted OpenAI-compatible chat server over a real socket, for tests, benchmarks and the CPU demo.

``POST /v1/chat/completions`` answers deterministically from the prompt content (no model): it recognises the
four v1 curation prompts by their wording and writes a valid response for each, so the pipeline logic can be
tested end to end. ``usage`` counts words as tokens. Markers anywhere in the prompt inject faults:

* ``[http500:N]`` / ``[http429:N]``: the first N arrivals of that exact request body get a 500 / a 429 with
  ``Retry-After: <retry_after>``.
* ``[timeout:N]``: the first N arrivals stall for ``stall_s`` before answering (set the client timeout lower).
* ``[bad-trace:N]``: trace requests with seed < N (the attempt number, for base seed 0) get an unparseable trace.
* ``[verify-fail:N]``: trace requests with seed < N leave the answer out of the captions, so the verifier,
  which reads only times and captions, cannot find it (N >= attempts: the row is dropped).
* ``[bad-json:N]``: question requests with seed < N get invalid JSON.

The scripted verifier answers with the option whose text the trace's captions name after "consistent with:",
which the scripted trace writer puts in its last caption. ``hang_after=K`` blocks every request after the K-th
until :meth:`stop` (a crash-and-resume test kills the client meanwhile). Counters record what arrived.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

_MARK_RE = re.compile(r"\[(http500|http429|timeout|bad-trace|verify-fail|bad-json):(\d+)\]")
_SEG_RE = re.compile(r"^\[(\d+)\] \S+ \([\d.]+-[\d.]+ s\): (.*)$", re.MULTILINE)
_OPT_RE = re.compile(r"^([A-Z])\. (.*)$", re.MULTILINE)
_EVIDENCE_RE = re.compile(r"^- (\S+) \| (.*)$", re.MULTILINE)
_HINT_RE = re.compile(r"consistent with: (.*?)\)")


def _text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(parts)


def _images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")


def step_of(prompt: str) -> str:
    if "Reply with only a JSON object" in prompt:
        return "question"
    if "Describe what happens in this window" in prompt:
        return "caption"
    if "Write the trace in exactly this format" in prompt:
        return "trace"
    if "Observations of the video:" in prompt:
        return "verify"
    return "other"


def _marks(prompt: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in _MARK_RE.finditer(prompt)}


def _question(prompt: str, seed: int, marks: dict[str, int]) -> str:
    if seed < marks.get("bad-json", 0):
        return "Here is a question: {not json}"
    caps = [c for _, c in sorted((int(i), c) for i, c in _SEG_RE.findall(prompt))]
    c0, c1 = (caps + caps)[:2] if caps else ("something", "something else")
    options = [f"{c0} then {c1}", f"{c1} then {c0}", f"only {c0}", f"only {c1}"]
    shift = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 4  # vary the correct letter
    options = options[shift:] + options[:shift]
    answer = "ABCD"[options.index(f"{c0} then {c1}")]
    return json.dumps({"question": f"What happens in order in this video? ({c0[:30]})", "options": options,
                       "answer": answer, "segments": sorted({0, min(1, len(caps) - 1)}) if caps else [0]})


def _answer_parts(prompt: str) -> tuple[str | None, str]:
    m = re.search(r"^Correct answer: (.*)$", prompt, re.MULTILINE)
    raw = m.group(1).strip() if m else ""
    mc = re.match(r"^([A-Z])\. (.*)$", raw)
    return (mc.group(1), mc.group(2)) if mc else (None, raw)


def _trace(prompt: str, seed: int, marks: dict[str, int]) -> str:
    if seed < marks.get("bad-trace", 0):
        return "<time>soon</time> <caption>an unclosed caption"
    letter, text = _answer_parts(prompt)
    evidence = _EVIDENCE_RE.findall(prompt) or [("00:00-00:01", "the video")]
    hint = "" if seed < marks.get("verify-fail", 0) else f" (consistent with: {text})"
    steps = [f"<time>{w}</time> <caption>{c}{hint if i == len(evidence) - 1 else ''}</caption> "
             f"<think>Step {i + 1} matters for the question.</think>" for i, (w, c) in enumerate(evidence)]
    return " Hmm, let me look further. ".join(steps) + f" Weighing the options. <answer>{letter or text}</answer>"


def _verify(prompt: str) -> str:
    hint = _HINT_RE.search(prompt)
    if hint is None:
        return "The observations do not say. <answer>none</answer>"
    after_question = prompt.split("Question:", 1)[-1]
    for letter, option in _OPT_RE.findall(after_question):
        if option.strip() == hint.group(1).strip():
            return f"The captions point to it. <answer>{letter}</answer>"
    return f"<answer>{hint.group(1)}</answer>"


def _caption(prompt: str, n_images: int) -> str:
    _, text = _answer_parts(prompt)
    window = re.search(r"time window (\S+)", prompt)
    return f"In {window.group(1) if window else 'this window'} one sees {text} ({n_images} frames)."


def respond(body: dict[str, Any]) -> tuple[str, str]:
    """(step, content) for a chat request: the deterministic script."""
    messages = body.get("messages") or []
    prompt, seed = _text(messages), int(body.get("seed") or 0)
    step, marks = step_of(prompt), _marks(prompt)
    content = {"question": lambda: _question(prompt, seed, marks), "trace": lambda: _trace(prompt, seed, marks),
               "verify": lambda: _verify(prompt), "caption": lambda: _caption(prompt, _images(messages)),
               "other": lambda: "ok"}[step]()
    return step, content


class ScriptedServer:
    """``with ScriptedServer(latency_s=0.05) as server: ... server.url ...``."""

    def __init__(self, latency_s: float = 0.0, retry_after: str = "0.05", stall_s: float = 2.0,
                 hang_after: int | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.latency_s, self.retry_after, self.stall_s, self.hang_after = latency_s, retry_after, stall_s, hang_after
        self.lock = threading.Lock()
        self.requests = 0  # every POST received
        self.by_step: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.received: list[str] = []  # request-body hashes in arrival order
        self.answered: set[str] = set()  # hashes answered with 200
        self.authorization: Counter[str] = Counter()  # Authorization headers seen (tests check the key arrives)
        self.images = 0
        self.first_arrival: float | None = None  # time.monotonic() of the first POST (benchmarks)
        self.last_reply: float | None = None  # ... and of the last reply sent
        self._arrivals: Counter[str] = Counter()
        self._stop = threading.Event()
        self.arrived = threading.Condition(self.lock)
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = cast(tuple[str, int], self._httpd.server_address[:2])  # AF_INET: (host, port)
        return f"http://{host}:{port}/v1"

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_requests(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` requests have arrived (False on timeout): a deadline, not a timing assertion."""
        with self.arrived:
            return self.arrived.wait_for(lambda: self.requests >= count, timeout=timeout_s)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: object) -> None:  # quiet: tests read counters, not logs
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    with server.lock:
                        server.requests += 1
                        server.statuses[404] += 1
                    self._send(404, {"error": {"message": "not found"}})
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "invalid JSON"}})
                    return
                key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
                step, content = respond(body)
                marks = _marks(_text(body.get("messages") or []))
                with server.lock:
                    server.requests += 1
                    number = server.requests
                    server.first_arrival = server.first_arrival or time.monotonic()
                    server.by_step[step] += 1
                    server.received.append(key)
                    server.authorization[self.headers.get("Authorization") or ""] += 1
                    server.images += _images(body.get("messages") or [])
                    server._arrivals[key] += 1
                    arrival = server._arrivals[key]
                    server.arrived.notify_all()
                if server.hang_after is not None and number > server.hang_after:
                    server._stop.wait()
                    self._reply(503, key, {"error": {"message": "server stopped"}})
                    return
                if server.latency_s:
                    time.sleep(server.latency_s)
                if arrival <= marks.get("timeout", 0):
                    server._stop.wait(server.stall_s)
                if arrival <= marks.get("http500", 0):
                    self._reply(500, key, {"error": {"message": "injected failure"}})
                elif arrival <= marks.get("http429", 0):
                    self._reply(429, key, {"error": {"message": "rate limited"}}, {"Retry-After": server.retry_after})
                else:
                    prompt_tokens = len(_text(body.get("messages") or []).split())
                    completion_tokens = len(content.split())
                    self._reply(200, key, {
                        "id": f"chatcmpl-{key[:12]}", "object": "chat.completion", "created": 0,
                        "model": body.get("model", "scripted"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}})

            def _reply(self, status: int, key: str, payload: dict[str, Any],
                       headers: dict[str, str] | None = None) -> None:
                with server.lock:
                    server.statuses[status] += 1
                    if status == 200:
                        server.answered.add(key)
                    server.last_reply = time.monotonic()
                self._send(status, payload, headers)

        return Handler


def main() -> None:
    """``python -m data_pipeline.testing.scripted_server --port 8000 --latency 0.05``: serve until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    server = ScriptedServer(latency_s=args.latency, port=args.port).start()
    print(f"scripted server on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
