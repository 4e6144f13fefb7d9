"""Issue 9: a simulated multi-node run, and the training entrypoint as a Ray job. A local Ray cluster of a head
(driver only, 0 CPUs, as on KubeRay) and two worker nodes, each a separate ``ray start`` with its own CPUs and
marker resource; the tiny recipe is submitted with ``ray job submit --working-dir`` exactly as on KubeRay, its
success and console output read back through the job API, and the run's ``placement.json`` shows its roles on
both worker nodes (STRICT_SPREAD puts the two learner ranks on different nodes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vt_ray.cluster.local_cluster import MARKER_PREFIX, LocalRayCluster, NodeSpec

ROOT = Path(__file__).resolve().parents[3]
RAY = str(Path(sys.executable).with_name("ray"))
OVERRIDES = [
    "resources.num_nodes=2", "resources.cpus_per_node=3", "resources.placement_strategy=STRICT_SPREAD",
    "resources.learner.num_workers=2", "resources.rollout.num_workers=1", "resources.reward.num_workers=1",
    "trainer.total_steps=2", "trainer.prompts_per_step=2", "trainer.save_every=2", "trainer.val_samples=1",
    "trainer.wandb_mode=disabled", "rollout.n=2", "rollout.max_tokens=24",
]


def _submit(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    for _ in range(60):  # the head's job agent registers a little after the node is up
        submit = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in submit.stderr + submit.stdout:
            return submit
        time.sleep(2)  # poll interval while the agent registers, bounded by the loop
    return submit


@pytest.mark.slow
def test_tiny_recipe_runs_across_two_worker_nodes(
    tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # The job's `python` is looked up on the head's PATH (inherited by `ray start`): make it this venv's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    out = tmp_path / "outputs"
    entry = [
        "python", "-m", "vt_ray", "train", "recipe=recipes/tiny_cpu.yaml", f"model.path={tiny_model_dir}",
        f"data.train_file={synthetic_dir / 'train.jsonl'}", f"data.val_file={synthetic_dir / 'val.jsonl'}",
        f"run.output_dir={out}", "run.name=multi", *OVERRIDES,
    ]
    with LocalRayCluster(NodeSpec("head", 0), [NodeSpec("w1", 3), NodeSpec("w2", 3)], dashboard=True) as cluster:
        names = {n["NodeID"]: k[len(MARKER_PREFIX):] for n in ray.nodes() if n["Alive"]
                 for k in n["Resources"] if k.startswith(MARKER_PREFIX)}
        address = cluster.dashboard_url
        # The cluster's token is in this process's environment (LocalRayCluster put it there): the job CLI and,
        # through the raylets, the job's driver use it.
        env = dict(os.environ)
        submit = _submit([RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                          "--runtime-env", str(ROOT / "cluster/runtime_env.yaml"), "--submission-id", "vt-multinode",
                          "--", *entry], env)
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(address)
        logs = client.get_job_logs("vt-multinode")
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert client.get_job_status("vt-multinode") == JobStatus.SUCCEEDED, logs[-3000:]
        assert "[step 2]" in logs  # the job's own console output, read back through the job API

    run_dir = out / "multi"
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    placed = json.loads((run_dir / "placement.json").read_text())
    where = {(p["role"], p["rank"]): names[p["node_id"]] for p in placed}
    assert sorted(where) == [("learner", 0), ("learner", 1), ("reward", 0), ("rollout", 0)]
    assert set(where.values()) <= {"w1", "w2"}, f"nothing may run on the head (0 CPUs): {where}"
    assert {where[("learner", 0)], where[("learner", 1)]} == {"w1", "w2"}  # STRICT_SPREAD: one rank per node
    assert all(p["node_ip"] and p["resources"]["CPU"] > 0 for p in placed)  # one machine: one IP for all nodes
    assert (run_dir / "hf" / "config.json").is_file()  # the final checkpoint, exported for Hugging Face
