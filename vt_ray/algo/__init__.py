"""GRPO family core in pure torch (no Ray, vLLM or transformers): :mod:`.registry` (name -> function registries
the recipe keys choose from; torch-free), :mod:`.advantages` (advantage estimators, zero-variance filter),
:mod:`.loss_terms` (policy losses, KL estimators, entropy, aggregation), :mod:`.shaping` (DAPO and T-GRPO score
shaping, dynamic-sampling selection), :mod:`.grpo` (the entry points the driver and learner call, driven by
:class:`.config.AlgorithmConfig`) and :mod:`.objective` (the learner's ``grpo`` loss: micro-batch shares of
the mini-batch loss). docs/algorithms.md lists every registered entry.

Nothing is re-exported here: the recipe schema imports ``vt_ray.algo.config``, and loading a recipe must not
import torch.
"""
