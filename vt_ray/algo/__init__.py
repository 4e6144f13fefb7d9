"""GRPO core in pure torch (no Ray, vLLM or transformers): :mod:`.advantages` (group-relative advantages,
zero-variance filter), :mod:`.losses` (clipped surrogate, KL estimators, entropy, aggregation) and :mod:`.grpo`
(the entry points the driver and learner call, driven by :class:`.config.AlgorithmConfig`) and :mod:`.loss`
(the learner's ``grpo`` loss: micro-batch shares of the mini-batch loss).

Nothing is re-exported here: the recipe schema imports ``vt_ray.algo.config``, and loading a recipe must not
import torch.
"""

# The recipe schema imports our config module; loading it first avoids the vt_ray.config import cycle.
import vt_ray.config  # noqa: F401
