"""A local Ray cluster of a head and two worker nodes (separate ``ray start`` processes, simulated GPUs): the
recipe's placement groups put each role where the layout says, and the cluster is always torn down.

The training run across these nodes waits for the trainer; this checks the placement it will use.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vt_ray.cluster.local_cluster import MARKER_PREFIX, LocalRayCluster, NodeSpec
from vt_ray.config import load_config
from vt_ray.config.resources import ResourcesConfig

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "recipes/tiny_cpu.yaml"
# Two worker nodes of 2 (logical) GPUs and 3 CPUs; the head has no CPUs, as on KubeRay (num-cpus: "0").
NODES = ["resources.num_nodes=2", "resources.gpus_per_node=2", "resources.cpus_per_node=3"]
COLOCATED = [
    *NODES, "resources.colocate=true", "resources.placement_strategy=PACK",
    "resources.learner.num_workers=4", "resources.learner.gpus_per_worker=1", "resources.learner.cpus_per_worker=0.5",
    "resources.rollout.num_workers=4", "resources.rollout.gpus_per_worker=1", "resources.rollout.cpus_per_worker=0.5",
    "resources.reward.num_workers=2", "resources.reward.cpus_per_worker=0.5",
]
SPLIT_SPREAD = [
    *NODES, "resources.colocate=false", "resources.placement_strategy=STRICT_SPREAD",
    "resources.learner.num_workers=2", "resources.learner.gpus_per_worker=1",
    "resources.rollout.num_workers=2", "resources.rollout.gpus_per_worker=1",
    "resources.reward.num_workers=1",
]


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names our private temp dir: Ray session processes we started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def _place(res: ResourcesConfig) -> list[tuple[str, int, str, list[str]]]:
    """Start one trivial actor per (role, rank) in the recipe's placement groups; return where each runs."""
    import ray

    from vt_ray.cluster.placement import create_placement_groups, remove_placement_groups

    @ray.remote
    class Probe:  # defined here so it is pickled by value (workers cannot import this test module)
        def where(self) -> tuple[str, list[str]]:
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]

    names = {n["NodeID"]: k[len(MARKER_PREFIX):] for n in ray.nodes() if n["Alive"]
             for k in n["Resources"] if k.startswith(MARKER_PREFIX)}
    placed = create_placement_groups(res, timeout_s=120)
    try:
        jobs = [(role, rank, Probe.options(**group.actor_options(role, rank)).remote())
                for group in placed.values() for role in group.spec.roles for rank in range(len(group.spec.bundles))]
        found = ray.get([actor.where.remote() for _, _, actor in jobs], timeout=300)
        for _, _, actor in jobs:
            ray.kill(actor)
    finally:
        remove_placement_groups(placed)
    return [(role, rank, names[node], gpus) for (role, rank, _), (node, gpus) in zip(jobs, found, strict=True)]


@pytest.mark.slow
def test_roles_placed_across_local_nodes() -> None:
    from vt_ray.cluster.placement import InsufficientResources, create_placement_groups

    colocated = load_config(TINY, COLOCATED).resources
    spread = load_config(TINY, SPLIT_SPREAD).resources
    too_big = load_config(TINY, [  # a valid recipe for 3 nodes, run on our 2
        "resources.num_nodes=3", "resources.gpus_per_node=2", "resources.cpus_per_node=3",
        "resources.learner.num_workers=3", "resources.learner.gpus_per_worker=1",
        "resources.rollout.num_workers=3", "resources.rollout.gpus_per_worker=1",
    ]).resources

    cluster = LocalRayCluster(NodeSpec("head", 0), [NodeSpec("w1", 3, 2), NodeSpec("w2", 3, 2)])
    temp_dir = str(cluster.temp_dir)
    try:
        cluster.start()
        assert _pids_mentioning(temp_dir), "the teardown check below must see the cluster's processes"

        # Colocated: 4 bundles of 1 GPU over 2 nodes of 2 GPUs -> 2 per node; learner r and rollout r share
        # bundle r, hence the same node and the same GPU id.
        placed = _place(colocated)
        by = {(role, rank): (node, gpus) for role, rank, node, gpus in placed}
        assert {node for node, _ in by.values()} == {"w1", "w2"}, "nothing may land on the head (0 CPUs)"
        for rank in range(4):
            assert by[("learner", rank)] == by[("rollout", rank)]
            assert len(by[("learner", rank)][1]) == 1
        per_node = [sum(1 for (role, _), (n, _) in by.items() if role == "learner" and n == w) for w in ("w1", "w2")]
        assert per_node == [2, 2]
        assert {by[("reward", r)][0] for r in range(2)} <= {"w1", "w2"}

        # Split with STRICT_SPREAD: each group puts one bundle on each worker node.
        placed = _place(spread)
        for role in ("learner", "rollout"):
            assert sorted(node for r, _, node, _ in placed if r == role) == ["w1", "w2"]

        # A recipe that asks for more GPUs than the cluster has is refused before any actor starts.
        with pytest.raises(InsufficientResources, match="need 6 GPU, cluster has 4"):
            create_placement_groups(too_big)
    finally:
        cluster.stop()
    assert _pids_mentioning(temp_dir) == [], "every process of the local cluster must be gone"
    assert not Path(temp_dir).exists()


def _raylet_of(session: int) -> list:
    """The raylet processes of the ``ray start`` session ``session`` (its process group)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] == "raylet" and os.getpgid(proc.pid) == session:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.slow
def test_a_worker_node_that_dies_under_the_run_is_reported_with_its_logs_kept(capfd: pytest.CaptureFixture) -> None:
    """SIGKILL a worker's raylet (as an OOM killer would): ``stop()`` prints that node's own account (which
    process died and how) and keeps the logs, where a clean stop removes them (the test above)."""
    cluster = LocalRayCluster(NodeSpec("head", 0), [NodeSpec("w1", 1)])
    try:
        cluster.start()
        worker = cluster.procs[1]
        raylets = _raylet_of(worker.pid)
        assert len(raylets) == 1, raylets
        raylets[0].kill()
        worker.wait(timeout=120)  # `ray start --block` ends the node when its raylet dies: a deadline, not a sleep
        assert [node.name for node, _ in cluster.dead_nodes()] == ["w1"]
    finally:
        cluster.stop()
    try:
        err = capfd.readouterr().err
        report = err[err.index("node 'w1': `ray start` exited on its own"):]
        assert f"logs kept in {cluster.temp_dir}" in report
        assert "raylet" in report and "signal 9" in report  # which process died, and how
        assert "node 'head'" not in err  # the head was stopped by us: nothing to report
        assert (cluster.temp_dir / "w1.log").is_file()
    finally:
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
