"""The built-in learner backends, registered under the names ``learner.backend`` takes."""

from __future__ import annotations

from vt_ray.config.backends import LEARNER_BACKENDS
from vt_ray.learner.megatron.backend import MegatronWorker
from vt_ray.learner.worker import LearnerWorker

LEARNER_BACKENDS.register("fsdp2")(LearnerWorker)  # torch FSDP2: gloo on CPU, NCCL on GPU
# megatron-core + mbridge, TP over gloo/NCCL; megatron-core is imported in setup(), not here
LEARNER_BACKENDS.register("megatron")(MegatronWorker)
