"""Pieces the built-in algorithms share: the learner bases (`rollout`, `on_policy`, `off_policy`),
networks, the action distribution, normalisation, return targets and schedules."""
