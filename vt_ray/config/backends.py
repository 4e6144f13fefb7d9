"""Which classes play the roles: the registries ``learner.backend`` and ``rollout.backend`` name.

Declared here, below every role, so the recipe can check a name at load time without importing torch or vLLM;
the built-ins register themselves in the modules named below, imported on first lookup. A recipe may also give
``package.module:Class`` (see :mod:`vt_ray.common.registry`); the contracts are
:class:`vt_ray.learner.backend_api.LearnerBackend` and :class:`vt_ray.rollout.engine_api.RolloutEngine`, and
docs/backends.md walks through adding one.
"""

from __future__ import annotations

from vt_ray.common.registry import Registry

LEARNER_BACKENDS = Registry("learner backend", "learner.backend", "vt_ray.learner.backends", ("fsdp2", "megatron"))
"""name -> Ray actor class ``Backend(cfg: LearnerRoleConfig, rank, world_size)`` (one rank of a learner group)."""
ROLLOUT_ENGINES = Registry("rollout engine", "rollout.backend", "vt_ray.rollout.engines", ("vllm", "hf"))
"""name -> ``Engine(model, rollout, seed, model_path)`` (a rollout worker's generation backend)."""
