"""Turning one cell into N learner processes: locally now, under torchrun on many nodes."""
