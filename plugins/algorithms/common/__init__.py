"""Pieces the built-in algorithms share: the learner bases (`rollout`, `on_policy`, `off_policy`),
networks (`observations.is_image` chooses one without importing torch), the action distribution,
normalisation, return targets and schedules. Modules the plugin registry imports name torch through
`benchbase.lazy_import`, so registering the algorithms does not wait for it."""
