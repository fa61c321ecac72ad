"""A module that is imported on first use: `torch = lazy_import("torch")`.

The plugin registry imports every plugin module to learn its names and parameters, and the
command line reports a misspelt name only after that; importing torch takes seconds, so a
plugin module names torch through this handle and torch loads when a learner first touches it::

    from typing import TYPE_CHECKING

    from benchbase import lazy_import

    if TYPE_CHECKING:  # type checkers and IDEs see the real module
        import torch
    else:
        torch = lazy_import("torch")

The handle is not put in `sys.modules` (unlike `importlib.util.LazyLoader`): any other module's
`import torch` still gets the real module, and nothing else loads it early. What needs torch while
a module is being defined (an `nn.Module` subclass, a `@torch.no_grad()` decorator) cannot use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module `name`; the first attribute read imports it (`importlib.import_module`).

    Each attribute read is kept on the handle, so later reads cost what a module's do (a module's
    functions, classes and submodules do not change once it is imported)."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name
        self._lazy_module: ModuleType | None = None

    def _lazy_load(self) -> ModuleType:
        if self._lazy_module is None:
            self._lazy_module = importlib.import_module(self._lazy_name)
        return self._lazy_module

    def __getattr__(self, attribute: str) -> Any:  # only called for what the handle does not hold yet
        if attribute.startswith("_lazy_"):
            raise AttributeError(attribute)
        value = getattr(self._lazy_load(), attribute)
        setattr(self, attribute, value)
        return value

    def __dir__(self) -> list[str]:
        return dir(self._lazy_load())

    def __repr__(self) -> str:
        state = "imported" if self._lazy_module is not None else "not imported yet"
        return f"<lazy module {self._lazy_name!r} ({state})>"


def lazy_import(name: str) -> Any:
    """A handle on the module `name` that imports it on first attribute access (see the module docstring)."""
    return LazyModule(name)
