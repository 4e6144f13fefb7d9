"""Ray start-up in one place, for every command that needs Ray (train, sft, eval, demo, benchmarks).

Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) a command joins that cluster; otherwise it starts a private
single-node cluster sized from the recipe's ``resources`` in a session of its own (:mod:`vt_ray.cluster.embedded`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Iterator

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}


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
    from vt_ray.cluster.embedded import EmbeddedCluster

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
