"""The GRPO driver: the step loop that ties rollout, reward and learner roles together on Ray."""
