"""Run user reward functions so that one that raises, hangs or kills its process scores 0 and is counted.

Why not ``signal.alarm``/``setitimer``: signals only work in the main thread, and Ray actors call methods from
other threads (verl PR #5635: the alarm failed silently and every score became 0). Two isolation modes:

* :class:`ProcessGuard` (default): one persistent worker subprocess (``python -m vt_ray.rewards.worker``)
  speaking JSON lines. A call that exceeds the time limit gets the worker killed (SIGKILL) and restarted on
  the next call; a worker that dies (``os._exit``, segfault) is restarted too. Costs one round trip per call.
* :class:`ThreadGuard`: the call runs in a daemon thread joined with a timeout. Cheap, but a stuck call keeps
  running in the background (counted in ``leaked_threads``) and a call to ``os._exit`` ends the caller.

Both return ``(value, outcome)`` with outcome ``ok`` | ``error`` | ``timeout``; non-finite or non-numeric
values are errors. Neither executes model text: the response is passed to the user's function as a string.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from vt_ray.common.imports import import_callable
from vt_ray.rewards.target import RewardTarget

log = logging.getLogger(__name__)
RewardFn = Callable[[str, RewardTarget], float]
STARTUP_TIMEOUT_S = 120.0  # worker start (interpreter + imports) is not charged to the reward's time limit


def resolve_import_path(path: str, key: str = "reward.custom.path") -> RewardFn:
    """``package.module:function`` (attribute chains allowed after the colon) to a callable. Raises
    :class:`ConfigError` naming ``key`` when the module, attribute or callable is missing."""
    return import_callable(path, key)


def as_reward_value(value: Any) -> float:
    """A finite float, or ValueError (a reward returning NaN, None or a string is an error, not a score)."""
    if isinstance(value, bool):
        return float(value)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"reward returned a non-finite value {out!r}")
    return out


class RewardGuard(Protocol):
    def call(self, path: str, response: str, target: RewardTarget) -> tuple[float, str]: ...

    def close(self) -> None: ...


class ThreadGuard:
    """Runs each call in a fresh daemon thread with a join timeout (see the module docstring for limits)."""

    def __init__(self, functions: dict[str, RewardFn], timeout_s: float) -> None:
        self.functions, self.timeout_s = functions, timeout_s
        self.leaked_threads = 0

    def call(self, path: str, response: str, target: RewardTarget) -> tuple[float, str]:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = as_reward_value(self.functions[path](response, target))
            except BaseException as err:  # noqa: BLE001 - user code may raise anything, even SystemExit
                box["error"] = err

        thread = threading.Thread(target=run, name=f"reward:{path}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self.leaked_threads += 1
            log.warning("reward %s exceeded %.1f s; its thread keeps running", path, self.timeout_s)
            return 0.0, "timeout"
        if "error" in box:
            log.warning("reward %s raised %r", path, box["error"])
            return 0.0, "error"
        return box["value"], "ok"

    def close(self) -> None:
        pass


class ProcessGuard:
    """Runs calls in a persistent worker subprocess that is killed on timeout and restarted when needed."""

    def __init__(self, timeout_s: float, paths: tuple[str, ...] = ()) -> None:
        self.timeout_s, self.paths = timeout_s, paths
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # The worker must import what the caller can (user reward modules on sys.path, e.g. a tests folder).
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        # The worker imports the reward modules before it reports ready: import time is not charged to a call.
        proc = subprocess.Popen(
            [sys.executable, "-m", "vt_ray.rewards.worker", *self.paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        line = self._read_line(proc, STARTUP_TIMEOUT_S)
        if not line or json.loads(line).get("ready") is not True:
            self._kill(proc)
            raise RuntimeError("reward worker failed to start (see its stderr above)")
        return proc

    @staticmethod
    def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes | None:
        """One protocol line; None on timeout; b"" at end of file (the worker died)."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        return proc.stdout.readline()

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def _drop(self) -> None:
        if self._proc is not None:
            self._kill(self._proc)
            self._proc = None
            self.restarts += 1

    def call(self, path: str, response: str, target: RewardTarget) -> tuple[float, str]:
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._drop()
            try:
                self._proc = self._start()
            except (OSError, RuntimeError, ValueError) as err:
                log.error("reward worker unavailable: %s", err)
                return 0.0, "error"
        proc = self._proc
        assert proc.stdin is not None
        request = json.dumps({"path": path, "response": response, "target": target.to_json()}) + "\n"
        try:
            proc.stdin.write(request.encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._drop()
            return 0.0, "error"
        line = self._read_line(proc, self.timeout_s)
        if line is None:
            self._drop()
            log.warning("reward %s exceeded %.1f s; worker killed", path, self.timeout_s)
            return 0.0, "timeout"
        if not line:
            self._drop()
            log.warning("reward %s ended its worker process (exit %s)", path, proc.returncode)
            return 0.0, "error"
        reply = json.loads(line)
        if not reply.get("ok"):
            log.warning("reward %s failed: %s", path, reply.get("error"))
            return 0.0, "error"
        return float(reply["value"]), "ok"

    def close(self) -> None:
        if self._proc is not None:
            self._kill(self._proc)
            self._proc = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def make_guard(isolation: str, functions: dict[str, RewardFn], timeout_s: float) -> RewardGuard:
    if isolation == "process":
        return ProcessGuard(timeout_s, tuple(functions))
    if isolation == "thread":
        return ThreadGuard(functions, timeout_s)
    raise ValueError(f"unknown isolation {isolation!r} (process | thread)")
