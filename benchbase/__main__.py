"""`python -m benchbase`: the `bench` command (it names itself `bench` in its help and errors)."""

from benchbase.cli import main

main()
