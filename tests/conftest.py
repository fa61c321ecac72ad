"""Shared test helpers (`dist_helpers`, `bench_helpers`, `fault_plugin`) live in this folder; the
test modules in its subfolders import them by name."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
