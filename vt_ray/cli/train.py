"""``python -m vt_ray train recipe=PATH [key=value ...]``: GRPO training, locally or as a Ray job.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) it joins that cluster; otherwise it starts a local
single-node cluster sized from ``resources`` (num_nodes x cpus_per_node logical CPUs) in a session of its own
(:mod:`vt_ray.cluster.embedded`), so a signal sent to the driver's whole process group stops only the
driver. Running the same command again resumes from the run directory's latest complete checkpoint.

Exit codes: 0 when training finished; 128+signal (143 for SIGTERM, 130 for SIGINT) when a signal stopped it,
so schedulers and RayJob retries see an unfinished run. After a clean stop the summary printed last has
``stopped_early: true`` and ``checkpoint_step`` (the step a rerun resumes from); when the stop could not
checkpoint within ``trainer.stop_grace_s``, or a second signal came, the process exits with the same code
without a summary and the previous complete checkpoint stands. 1 on errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time

from vt_ray.cluster.session import init_ray
from vt_ray.config.loader import load_from_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    started = time.perf_counter()
    cluster = init_ray(cfg, while_booting=lambda: importlib.import_module("vt_ray.trainer.driver"))
    from vt_ray.trainer.driver import RESTART_BUDGET_EXIT_CODE, GRPOTrainer, RestartBudgetExhausted
    from vt_ray.trainer.run_costs import add_outer_phases

    ray_init_s = time.perf_counter() - started  # with the driver's imports, which overlap the head's start
    ok = False
    try:
        summary = GRPOTrainer(cfg).fit()
        ok = True
    except RestartBudgetExhausted as err:
        print(f"[train] {err}", flush=True)
        return RESTART_BUDGET_EXIT_CODE
    finally:
        stopping = time.perf_counter()
        if cluster is not None:
            cluster.stop(keep_logs=not ok)  # after a failure the Ray session logs are worth keeping
        ray_stop_s = time.perf_counter() - stopping
    add_outer_phases(summary["run_dir"], ray_init_s=ray_init_s, ray_stop_s=ray_stop_s)
    print(json.dumps(summary, indent=2))
    if cfg.trainer.write_report and not summary.get("stopped_early"):  # a stopped run's grace time is not ours
        from vt_ray.report.page import report_after_run

        report_after_run(summary["run_dir"], "train")
    return 128 + summary["stop_signal"] if summary.get("stopped_early") else 0
