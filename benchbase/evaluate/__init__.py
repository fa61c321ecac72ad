"""`bench eval`: evaluating checkpoints on any split or family, summaries and videos."""
