"""``python -m vt_ray train recipe=PATH [key=value ...]``: GRPO training, locally or as a Ray job.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) it joins that cluster; otherwise it starts an embedded
local cluster sized from ``resources`` (num_nodes x cpus_per_node logical CPUs). Running the same command again
resumes from the run directory's latest complete checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os

from vt_ray.config.loader import load_from_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def init_ray(cfg) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}}
    if os.environ.get("RAY_ADDRESS"):  # a cluster: ray job submit sets this for the entrypoint
        # The job's runtime env (--working-dir, --runtime-env) already applies to every actor; passing another
        # here is an error under a job ("Failed to merge the Job's runtime env").
        ray.init(address="auto", log_to_driver=True)
        return
    res = cfg.resources
    ray.init(num_cpus=res.num_nodes * res.cpus_per_node, num_gpus=res.num_nodes * res.gpus_per_node,
             include_dashboard=False, runtime_env=env, log_to_driver=False)


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    init_ray(cfg)
    from vt_ray.trainer.driver import GRPOTrainer

    summary = GRPOTrainer(cfg).fit()
    print(json.dumps(summary, indent=2))
    return 0
