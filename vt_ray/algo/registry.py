"""Name -> function registries for the algorithm's parts: advantage estimators, policy losses, KL estimators and
loss-aggregation modes (verl's ``register_adv_est`` / ``register_policy_loss`` idea).

Torch-free on purpose: the recipe schema checks names at load time, and loading a recipe must not import torch.
So each registry knows its built-in names statically and imports the module that defines them only on first
lookup (a test keeps the two in sync). A recipe value is either a registered name or an import path
``package.module:function``; the path is imported at load time (a missing module, attribute or a non-callable
fails there, naming the key) and then registered under the path itself.

User code can also register by name with the decorator, as long as its module is imported before the recipe
is loaded (and in every Ray worker, which is what the import path guarantees for you)::

    from vt_ray.algo.registry import ADV_ESTIMATORS

    @ADV_ESTIMATORS.register("my_baseline")
    def my_baseline(scores, group_ids, cfg, lengths): ...
"""

from __future__ import annotations

from vt_ray.common.registry import Registry, is_import_path, resolve_import_path

__all__ = ["ADV_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGG_MODES", "POLICY_LOSSES", "REGISTRIES", "Registry",
           "is_import_path", "resolve_import_path"]

ADV_ESTIMATORS = Registry(
    "advantage estimator", "algorithm.adv_estimator", "vt_ray.algo.advantages",
    ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"),
)
POLICY_LOSSES = Registry(
    "policy loss", "algorithm.policy_loss", "vt_ray.algo.loss_terms", ("vanilla", "gspo", "gspo_token", "cispo"),
)
KL_ESTIMATORS = Registry("KL estimator", "algorithm.kl_estimator", "vt_ray.algo.loss_terms", ("k1", "k2", "k3"))
LOSS_AGG_MODES = Registry(
    "loss aggregation", "algorithm.loss_agg_mode", "vt_ray.algo.loss_terms",
    ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
)
REGISTRIES = (ADV_ESTIMATORS, POLICY_LOSSES, KL_ESTIMATORS, LOSS_AGG_MODES)
