"""The single-node Ray cluster a local ``python -m vt_ray train`` (or ``eval``) runs on, in its own session.

Why not ``ray.init()``: it starts the GCS, raylet and agents as children *in the driver's process group*. A
signal sent to the group (``kill -TERM -PGID``, ``timeout``, systemd/supervisord/docker ``stop`` of the whole
group, a Slurm step) then reaches them too: the GCS and raylet shut down while the driver is still trying to
finish the step and write its checkpoint, and the run dies with "owner's node has crashed". Here the node is a
``ray start --head --block`` in a new session, so only the driver sees such a signal and the graceful stop
(:class:`vt_ray.trainer.stop.GracefulStop`) can use the cluster until it is done.

Fate sharing is kept: the ``ray start`` process gets ``PR_SET_PDEATHSIG=SIGKILL`` (so it dies with the driver,
even on SIGKILL), and ``ray start --block`` gives its own children the same (Ray's kernel fate sharing); actor
workers exit when their raylet does. A clean exit sends SIGTERM to ``ray start`` alone (it drains and stops
the node), then SIGKILL to what is left of the session.

The node is private: a short temp dir of its own (Ray writes ``ray_current_cluster`` there, so another user's
``ray.init(address="auto")`` never finds it), free ports for the listeners whose defaults are fixed, and a
token of its own when token auth is on (Ray's default for new local clusters).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from vt_ray.cluster.local_cluster import exit_report, free_ports, log_lines, reset_ray_auth_cache, stop_ray_start

PR_SET_PDEATHSIG = 1


def _die_with_parent_fn():
    """A ``preexec_fn`` (runs in the child between fork and exec): SIGKILL when the spawning thread, here the
    driver's main thread, exits. libc is loaded here, in the parent, so the child only makes the call."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


class EmbeddedCluster:
    """``cluster = EmbeddedCluster(num_cpus=4).start(env_vars)`` connects this process; ``cluster.stop()``."""

    def __init__(self, num_cpus: float, num_gpus: int = 0, start_timeout_s: float = 180.0) -> None:
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.start_timeout_s = start_timeout_s
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vtray", dir="/tmp"))  # unix socket paths: ~100 bytes max
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._auth: dict[str, str] = {}
        self._stopped = False
        if os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled":
            self._auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    @property
    def session_id(self) -> int:
        """The session of every process of this cluster (``ray start`` leads it), 0 before start."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def log_path(self) -> Path:
        return self.temp_dir / "ray_start.log"

    def start(self, env_vars: dict[str, str], while_booting: Callable[[], object] | None = None) -> EmbeddedCluster:
        """Start the head in a new session, then ``ray.init`` against it. ``env_vars`` reach every worker
        (they inherit the raylet's environment), as ``runtime_env.env_vars`` would. ``while_booting`` runs
        after the head was launched and before the driver connects (the CLIs import torch and the driver
        there: the head's start-up and the imports overlap, a few seconds per run)."""
        import ray

        gcs, client, agent = free_ports(3)
        self.address = f"127.0.0.1:{gcs}"
        os.environ.update(self._auth)  # this driver talks to the cluster with the same token
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        reset_ray_auth_cache()
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(env_vars)
        # Only what a one-driver node uses: no autoscaler monitor (nothing to scale) and no idle workers
        # prestarted for the driver (our actors carry a runtime env, so they never reuse them): ~1.5 s of CPU
        # less at the node's busiest moment. (The Ray Client server cannot be turned off from `ray start`.)
        # No log monitor either: it tails the workers' log files to forward them to drivers that ask
        # (log_to_driver), and this driver does not (the files stay in the session's logs): 80 MB and ~0.5 s of CPU.
        env.setdefault("RAY_prestart_worker_first_driver", "0")
        cmd = [
            str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={gcs}",
            f"--ray-client-server-port={client}", "--no-monitor", f"--dashboard-agent-listen-port={agent}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus:g}", f"--num-gpus={self.num_gpus}",
            "--include-dashboard=false", "--include-log-monitor=false", "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop()); never the driver's stdout
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=_die_with_parent_fn())
        deadline = time.monotonic() + self.start_timeout_s
        try:
            if while_booting is not None:
                while_booting()
            while not ray.is_initialized():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self._tail()}")
                try:
                    ray.init(address=self.address, log_to_driver=False, runtime_env={"env_vars": env_vars})
                except (ConnectionError, RuntimeError) as err:  # GCS or raylet not up yet
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"local Ray head not reachable at {self.address}: {self._tail()}") from err
                    time.sleep(0.5)  # a poll interval, bounded by the deadline above
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self

    def _tail(self, lines: int = 20) -> str:
        return "\n".join(log_lines(self.log_path)[-lines:]) + f"\n(logs: {self.temp_dir})"

    def death_report(self, lines: int = 40) -> str:
        """Why the node went away when ``ray start`` exited before :meth:`stop` signalled it (printed by it)."""
        code = self.proc.returncode if self.proc is not None else None
        return exit_report("the local cluster", code, self.log_path, self.temp_dir, lines)

    def stop(self, keep_logs: bool = False, grace_s: float = 30.0) -> None:
        """Disconnect, SIGTERM ``ray start --block`` (it drains the node and stops its processes), SIGKILL what
        is left of the session. Removes the temp dir unless ``keep_logs`` (or VT_RAY_KEEP_TMP=1). Safe to call twice."""
        import ray

        if self._stopped:
            return
        self._stopped = True
        if self.proc is not None and self.proc.poll() is not None:  # not by us: a raylet or the GCS died
            keep_logs = True
            print(self.death_report(), file=sys.stderr, flush=True)
        if ray.is_initialized():
            ray.shutdown()
        if self.proc is not None:
            stop_ray_start(self.proc, grace_s)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if keep_logs or os.environ.get("VT_RAY_KEEP_TMP"):
            print(f"[ray] local cluster logs kept in {self.temp_dir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

