"""`bench reproduce`: published claims run as grids and compared with the published figures.

`catalogue` reads the claims (package data in `claims/`: one TOML file per claim, with its grids in
the `bench run --grid` format, its published figures and their sources, and per-scale budgets),
`execute` runs them with the same runner as `bench run`, `measure` computes ours with the report's
code, and `tables` writes `comparison.parquet` and `reproduction.md`.
"""
