"""Checkpoint files, resuming a cell from them, and the sources `bench eval` and `--init-from` read."""
