"""The run report: curves, recipe, environment, checkpoints and the rollout viewer in one HTML page."""
