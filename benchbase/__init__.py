"""benchbase: a plugin-based benchmarking suite for decentralised, multitask deep RL."""

__version__ = "0.1.0"
