"""A logger that fails at its second row (BENCHBASE_EXTRA_PLUGINS=broken_logger): the cell must train on."""

from benchbase.api.contracts import Logger, MetricRow
from benchbase.api.hookspecs import hookimpl


class _FailsAtSecondRow:
    def __init__(self) -> None:
        self.rows = 0

    def write(self, row: MetricRow) -> None:
        self.rows += 1
        if self.rows == 2:
            raise RuntimeError("the disk is on fire")

    def close(self) -> None:
        pass


class Broken(Logger):
    name = "broken"
    description = "fails at its second row (tests)"

    def open(self, params, run) -> _FailsAtSecondRow:
        return _FailsAtSecondRow()


@hookimpl
def register_loggers(register) -> None:
    register(Broken())
