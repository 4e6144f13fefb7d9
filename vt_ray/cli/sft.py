"""``python -m vt_ray sft recipe=PATH [key=value ...]``: SFT on gold traces; writes the HF checkpoint GRPO uses.

Connects to the Ray cluster in ``RAY_ADDRESS`` (e.g. under ``ray job submit``), or starts a local one.
Exit codes, as ``train``'s: 0 when the stage finished; 128+signal (143 for SIGTERM, 130 for SIGINT) when a
signal stopped it after a checkpoint (``sft.resume`` continues from there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from dataclasses import asdict

from vt_ray.config.loader import load_from_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from vt_ray.cluster.session import ray_session

    # joins the job's cluster, or starts the same local one `train` uses (importing the SFT driver meanwhile)
    with ray_session(cfg, while_booting=lambda: importlib.import_module("vt_ray.trainer.sft")):
        from vt_ray.trainer.sft import run_sft

        start = time.perf_counter()
        result = run_sft(cfg)
    print(json.dumps({**asdict(result), "time_s": round(time.perf_counter() - start, 1)}, indent=2))
    from vt_ray.report.page import report_after_run
    from vt_ray.trainer.sft import sft_output_dir

    report_after_run(sft_output_dir(cfg), "sft")
    return 128 + result.stop_signal if result.stopped_early else 0
