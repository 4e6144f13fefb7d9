"""``python -m vt_ray train recipe=PATH [key=value ...]``: GRPO training, locally or as a Ray job.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) it joins that cluster; otherwise it starts a local
single-node cluster sized from ``resources`` (num_nodes x cpus_per_node logical CPUs) in a session of its own
(:mod:`vt_ray.trainer.embedded_cluster`), so a signal sent to the driver's whole process group stops only the
driver. Running the same command again resumes from the run directory's latest complete checkpoint.

Exit codes: 0 when training finished; 128+signal (143 for SIGTERM, 130 for SIGINT) when a signal stopped it,
so schedulers and RayJob retries see an unfinished run. After a clean stop the summary printed last has
``stopped_early: true`` and ``checkpoint_step`` (the step a rerun resumes from); when the stop could not
checkpoint within ``trainer.stop_grace_s``, or a second signal came, the process exits with the same code
without a summary and the previous complete checkpoint stands. 1 on errors.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
from collections.abc import Callable, Iterator

from vt_ray.config.loader import load_from_cli

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def init_ray(cfg, while_booting: Callable[[], object] | None = None):
    """Connect to the job's cluster, or start a local one; returns the local cluster (None under a job). The
    local cluster is also stopped at interpreter exit, so callers that never stop it (eval) leave nothing.
    ``while_booting`` (heavy imports) runs while a local head starts, otherwise first."""
    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):  # no local head to wait for
        if while_booting is not None:
            while_booting()
        if ray.is_initialized():
            return None
        # a cluster: ray job submit sets RAY_ADDRESS for the entrypoint
        # The job's runtime env (--working-dir, --runtime-env) already applies to every actor; passing another
        # here is an error under a job ("Failed to merge the Job's runtime env").
        ray.init(address="auto", log_to_driver=True)
        return None
    from vt_ray.trainer.embedded_cluster import EmbeddedCluster

    res = cfg.resources
    cluster = EmbeddedCluster(num_cpus=res.num_nodes * res.cpus_per_node, num_gpus=res.num_nodes * res.gpus_per_node)
    cluster.start(WORKER_ENV, while_booting)
    atexit.register(cluster.stop)
    print(f"[train] local Ray cluster at {cluster.address}: session {cluster.session_id}, logs {cluster.temp_dir}",
          flush=True)
    return cluster


@contextlib.contextmanager
def ray_session(cfg, while_booting: Callable[[], object] | None = None) -> Iterator[object]:
    """:func:`init_ray` for the length of a block. At its end a local cluster started here is stopped (its
    logs kept when the block raised) and a connection opened here is closed; an existing one is left alone."""
    import ray

    started_here = not ray.is_initialized()
    cluster = init_ray(cfg, while_booting)
    ok = False
    try:
        yield cluster
        ok = True
    finally:
        if cluster is not None:
            cluster.stop(keep_logs=not ok)
        elif started_here:
            ray.shutdown()


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    cluster = init_ray(cfg, while_booting=lambda: importlib.import_module("vt_ray.trainer.driver"))
    from vt_ray.trainer.driver import RESTART_BUDGET_EXIT_CODE, GRPOTrainer, RestartBudgetExhausted

    ok = False
    try:
        summary = GRPOTrainer(cfg).fit()
        ok = True
    except RestartBudgetExhausted as err:
        print(f"[train] {err}", flush=True)
        return RESTART_BUDGET_EXIT_CODE
    finally:
        if cluster is not None:
            cluster.stop(keep_logs=not ok)  # after a failure the Ray session logs are worth keeping
    print(json.dumps(summary, indent=2))
    if cfg.trainer.write_report and not summary.get("stopped_early"):  # a stopped run's grace time is not ours
        from vt_ray.report.page import report_after_run

        report_after_run(summary["run_dir"], "train")
    return 128 + summary["stop_signal"] if summary.get("stopped_early") else 0
