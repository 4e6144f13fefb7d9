"""The CLIs' private single-node cluster (:mod:`vt_ray.cluster.embedded`) when it dies under a run: the node's
own account of the death reaches the driver's stderr and its logs are kept (a CI log is all that is left of a
failed run's machine). In a subprocess: the killed raylet must not touch this test process's Ray."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Start the cluster, SIGKILL its raylet (as an OOM killer or a stray kill would), wait for `ray start --block`
# to end the node (a deadline, not a sleep), then stop as a run's clean-up does.
SCRIPT = textwrap.dedent("""
    import os, psutil
    from vt_ray.cluster.embedded import EmbeddedCluster
    cluster = EmbeddedCluster(num_cpus=1).start({})
    raylets = [p for p in psutil.process_iter(["name"])
               if p.info["name"] == "raylet" and os.getpgid(p.pid) == cluster.session_id]
    assert len(raylets) == 1, raylets
    raylets[0].kill()
    cluster.proc.wait(timeout=120)
    cluster.stop()
    print("temp dir", cluster.temp_dir, flush=True)
""")


@pytest.mark.slow
def test_a_node_that_dies_under_the_driver_is_reported_with_its_logs_kept() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    temp_dir = Path(re.search(r"temp dir (\S+)", proc.stdout).group(1))
    try:
        report = proc.stderr[proc.stderr.index("exited on its own"):]
        assert f"logs kept in {temp_dir}" in report
        assert "raylet" in report and "signal 9" in report  # which process died, and how
        assert "[state-dump]" not in report.split("Raylet is terminated")[0]  # our part: no state dumps
        assert (temp_dir / "ray_start.log").is_file()  # kept for the post-mortem
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_clean_stop_is_silent_and_removes_the_logs() -> None:
    """The report is for deaths only: a node stopped by us says nothing and leaves no temp dir."""
    script = ("from vt_ray.cluster.embedded import EmbeddedCluster\n"
              "c = EmbeddedCluster(num_cpus=1).start({})\nc.stop()\nprint('temp dir', c.temp_dir)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exited on its own" not in proc.stderr
    assert not Path(re.search(r"temp dir (\S+)", proc.stdout).group(1)).exists()
