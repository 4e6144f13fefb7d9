"""Pieces shared by every Ray role (rollout, reward, learner) and the driver that calls them."""
