"""Our rewards inside other frameworks: ``verl_reward.compute_score`` for verl's ``custom_reward_function``
and ``easyr1_reward`` for EasyR1's ``worker.reward.reward_function`` (neither framework is imported)."""
