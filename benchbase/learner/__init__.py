"""Inside a learner process: settings, typed events, building the learner, the training loop,
evaluation.

Importing this package is light (no torch): the command line reads `settings` from it."""
