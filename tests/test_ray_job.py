"""The training entrypoint as a Ray job against a running cluster (``ray start --head`` locally): submit with
``--working-dir``, wait for success, read its logs and outputs. The same command a user runs on KubeRay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vt_ray.cluster.local_cluster import LocalRayCluster, NodeSpec

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture()
def head_node(monkeypatch: pytest.MonkeyPatch):
    """A one-node cluster with the dashboard (the job server), in sessions of its own and torn down by ending
    exactly those (never ``ray stop``, which would kill every Ray cluster on the machine)."""
    # The job's `python` is looked up on the head's PATH (inherited by `ray start`): make it this venv's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with LocalRayCluster(NodeSpec("head", 4), [], dashboard=True) as cluster:
        # The cluster's token is in this process's environment now (LocalRayCluster put it there): the job CLI
        # and, through the raylet, the job's driver use it.
        yield cluster.dashboard_url, dict(os.environ)


@pytest.mark.slow
def test_train_runs_as_a_ray_job(head_node, tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    address, env = head_node
    out = tmp_path / "outputs"
    entry = (
        "python -m vt_ray train recipe=recipes/tiny_cpu.yaml "
        f"model.path={tiny_model_dir} data.train_file={synthetic_dir / 'train.jsonl'} "
        f"data.val_file={synthetic_dir / 'val.jsonl'} run.output_dir={out} run.name=job "
        "trainer.total_steps=1 trainer.prompts_per_step=2 rollout.max_tokens=24 trainer.wandb_mode=disabled"
    )
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--runtime-env", str(ROOT / "cluster/runtime_env.yaml"), "--submission-id", "vt-test-job", "--",
           *entry.split()]
    for _ in range(60):  # the head's job agent registers a little after `ray start` returns
        submit = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in submit.stderr + submit.stdout:
            break
        time.sleep(2)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    logs = client.get_job_logs("vt-test-job")
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert client.get_job_status("vt-test-job") == JobStatus.SUCCEEDED, logs[-3000:]
    assert "[step 1]" in logs  # the job's own console output, read back through the job API
    rows = [json.loads(line) for line in (out / "job" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert (out / "job" / "hf" / "config.json").is_file()
