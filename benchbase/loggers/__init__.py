"""The built-in loggers: live metric rows of a running cell, one output per learner.

Each module is a plugin, loaded by name like the ones under plugins/ (`benchbase.api.registry`):
nothing in benchbase imports it, and it imports only `benchbase.api`. A learner process opens the
loggers a run chose and gives them its metric rows from a thread of its own (`benchbase.learner.live`).

- `files`: ``jsonl`` and ``csv`` under ``OUT/live/<cell_id>/``, no dependency;
- `tensorboard`: event files under ``OUT/tensorboard/<cell_id>/learner-<r>/`` (``benchbase[tensorboard]``);
- `wandb`: a Weights & Biases run per cell, grouped by grid (``benchbase[wandb]``).
"""
