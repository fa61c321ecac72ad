"""Pieces the built-in algorithms share: networks, the rollout learner bases, return targets."""
