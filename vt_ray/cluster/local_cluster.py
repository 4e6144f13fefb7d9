"""A multi-node Ray cluster on one machine: a head and workers as separate ``ray start --block`` processes.

It stands in for a KubeRay cluster on CPU machines: each node has its own raylet, CPUs, (simulated) GPUs and a
marker resource ``vt_node_<name>`` so tests can see where actors land. Everything is private to one instance:
a fresh short temp dir (unix socket paths are limited to ~100 bytes), free ports for every listener, its own
auth token, and ``ray start`` processes in their own sessions. :meth:`LocalRayCluster.stop` ends exactly those
process groups (SIGTERM, then SIGKILL) and never calls ``ray stop``, which would kill every Ray on the machine.

Each worker node gets a temp dir of its own under the cluster's: with one shared dir, the nodes' runtime-env
agents unpack a job's ``--working-dir`` package into the same place, each removing the others' copy first, and
the job's modules vanish while it imports them. ``dashboard=True`` starts the head's dashboard, the job server
``ray job submit`` talks to (at :attr:`LocalRayCluster.dashboard_url`).

Simulated GPUs are Ray's logical ``GPU`` resource (``--num-gpus``): actors get a ``CUDA_VISIBLE_DEVICES`` but
there is no device, so only placement is exercised, not CUDA. Set VT_RAY_KEEP_TMP=1 to keep the session logs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

MARKER_PREFIX = "vt_node_"
WORKER_PORTS_PER_NODE = 24  # one per worker process (actor or task worker) a node may run at once


@dataclass(frozen=True)
class NodeSpec:
    name: str
    num_cpus: float
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS reports free now (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalRayCluster:
    """``with LocalRayCluster(head, workers) as cluster: ray.init(address=cluster.address)``."""

    def __init__(self, head: NodeSpec, workers: list[NodeSpec], start_timeout_s: float = 180.0,
                 dashboard: bool = False) -> None:
        self.head, self.workers = head, workers
        self.start_timeout_s = start_timeout_s
        self.dashboard = dashboard
        self.dashboard_port = 0
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vtr", dir="/tmp"))
        self.address = ""
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        # A private token for this cluster only: token auth on, and never the user's ~/.ray/auth_token.
        self._auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self._saved_env: dict[str, str | None] = {}

    def _node_args(self, node: NodeSpec, ports: list[int]) -> list[str]:
        node_manager, object_manager, metrics, agent_listen, agent_grpc, runtime_env, *worker_ports = ports
        resources = {**node.resources, MARKER_PREFIX + node.name: 1}
        temp_dir = self.temp_dir if node is self.head else self.temp_dir / node.name  # short: socket path limit
        return [
            f"--num-cpus={node.num_cpus:g}", f"--num-gpus={node.num_gpus}", f"--resources={json.dumps(resources)}",
            "--node-ip-address=127.0.0.1", f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}", f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--worker-port-list={','.join(map(str, worker_ports))}",
            f"--temp-dir={temp_dir}", "--object-store-memory=100000000", "--disable-usage-stats",
            "--block",
        ]

    def _spawn(self, node: NodeSpec, extra: list[str], ports: list[int]) -> None:
        log = open(self.temp_dir / f"{node.name}.log", "wb")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        ray_cli = str(Path(sys.executable).with_name("ray"))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.procs.append(subprocess.Popen(
            [ray_cli, "start", *extra, *self._node_args(node, ports)],
            stdout=log, stderr=subprocess.STDOUT, env={**env, **self._auth_env}, start_new_session=True,
        ))

    def start(self) -> LocalRayCluster:
        """Start the head, connect this process as the driver, then add the workers one at a time (concurrent
        ``ray start``s in one session race for log file names), each waited for until it has registered."""
        # Every port of every node from one batch, so no two listeners of this cluster can collide.
        per_node = 6 + WORKER_PORTS_PER_NODE
        ports = free_ports(3 + per_node * (1 + len(self.workers)))
        gcs, client, dash, ports = ports[0], ports[1], ports[2], ports[3:]
        self.address = f"127.0.0.1:{gcs}"
        dashboard = ["--include-dashboard=false"]
        if self.dashboard:
            self.dashboard_port = dash
            dashboard = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
        try:
            self._spawn(self.head, ["--head", f"--port={gcs}", f"--ray-client-server-port={client}", *dashboard],
                        ports[:per_node])
            self._connect()
            self._wait_for(self.head)
            for i, worker in enumerate(self.workers, start=1):
                self._spawn(worker, [f"--address={self.address}"], ports[i * per_node:(i + 1) * per_node])
                self._wait_for(worker)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def dashboard_url(self) -> str:
        """The job server's address for ``ray job submit --address`` (needs ``dashboard=True``)."""
        if not self.dashboard_port:
            raise RuntimeError("this LocalRayCluster was started without dashboard=True")
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}:\n{self._log_tails()}")

    def _connect(self) -> None:
        """ray.init against our GCS with our token, retried until the GCS answers."""
        import ray

        self._saved_env = {k: os.environ.get(k) for k in (*self._auth_env, "RAY_AUTH_TOKEN_PATH")}
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.update(self._auth_env)
        reset_ray_auth_cache()
        deadline = time.monotonic() + self.start_timeout_s
        while not ray.is_initialized():
            self._check_alive()
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError) as err:  # GCS not up yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"GCS at {self.address} not reachable:\n{self._log_tails()}") from err
                time.sleep(0.5)

    def _wait_for(self, node: NodeSpec) -> None:
        """Poll until ``node`` has registered (a deadline, not a sleep: returns as soon as it has)."""
        import ray

        marker = MARKER_PREFIX + node.name
        deadline = time.monotonic() + self.start_timeout_s
        while not any(n["Alive"] and marker in n["Resources"] for n in ray.nodes()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node.name} not alive after {self.start_timeout_s:.0f} s:\n"
                                   f"{self._log_tails()}")
            time.sleep(0.5)

    def _log_tails(self, lines: int = 15) -> str:
        tails = []
        for log in sorted(self.temp_dir.glob("*.log")):  # ray start's output per node (not the session logs)
            tails.append(f"--- {log.name}\n" + "\n".join(log_lines(log)[-lines:]))
        return "\n".join(tails)

    def dead_nodes(self) -> list[tuple[NodeSpec, subprocess.Popen[bytes]]]:
        """The nodes whose ``ray start --block`` has exited although :meth:`stop` has not signalled it yet."""
        return [(node, proc) for node, proc in zip([self.head, *self.workers], self.procs) if proc.poll() is not None]

    def stop(self) -> None:
        """Disconnect, SIGTERM each ``ray start`` session (workers first), SIGKILL what is left, remove the
        temp dir and restore the environment. Safe to call twice. A node that died under the run (its
        ``ray start`` exited first) gets its own account printed to stderr, and the logs are kept."""
        import ray

        dead = self.dead_nodes()
        for node, proc in dead:
            print(exit_report(f"node {node.name!r}", proc.returncode, self.temp_dir / f"{node.name}.log",
                              self.temp_dir), file=sys.stderr, flush=True)
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(self.procs):  # workers first, while the head's GCS still answers their drain
            stop_ray_start(proc)
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if not dead and not os.environ.get("VT_RAY_KEEP_TMP"):  # debugging: keep the session logs
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved_env:
            reset_ray_auth_cache()
        self._saved_env = {}

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def log_lines(path: Path) -> list[str]:
    """A ``ray start``'s output so far, by line (none before it wrote any)."""
    return path.read_text(errors="replace").splitlines() if path.is_file() else []


def exit_report(who: str, code: int | None, log: Path, temp_dir: Path, lines: int = 40) -> str:
    """Why a node went away when its ``ray start --block`` exited before it was stopped: ``--block`` ends the node
    when one of its processes dies and logs which one, its exit code or signal and its log's tail. Printed by
    the clusters' ``stop()``, so a CI log explains such a crash after the machine is gone (Ray's periodic state
    dumps left out: they fill the tail and say nothing about the death). ``log``: that ``ray start``'s output."""
    kept = [line for line in log_lines(log) if "[state-dump]" not in line] or ["(no output)"]
    return "\n".join([f"[ray] {who}: `ray start` exited on its own (code {code}) before it was stopped; logs kept "
                      f"in {temp_dir}. Its output ends:", *kept[-lines:]])


def reset_ray_auth_cache() -> None:
    """Ray caches the auth mode and token per process; re-read them from the environment (as Ray's own
    ``reset_auth_token_state`` test helper does), so a driver that met another cluster earlier still connects."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # not in _raylet.pyi

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def signal_session(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``start_new_session`` made for the process ``pid`` (its pgid is its pid)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def stop_ray_start(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop a ``ray start --block`` process that leads its own session: SIGTERM to it alone, so it drains the
    node through the still-running GCS and stops its processes (~3 s), then SIGKILL whatever is left of the
    session (raylet, workers). Signalling the whole session instead kills the GCS first, and the drain then
    waits out a 30 s RPC timeout (measured 30.4 s against 3.7 s)."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    signal_session(proc.pid, signal.SIGKILL)
    proc.wait()
