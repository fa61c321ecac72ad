"""User-facing errors: one clear line, exit code 2, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user asked for. The CLI prints it as one line and exits with 2."""


def close_match(name: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to a (probably misspelt) `name`, or None."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """'unknown topology "rnig"; did you mean "ring"? (available: …)'."""
    choices = sorted(set(choices))
    suggestion = close_match(name, choices)
    hint = f'; did you mean "{suggestion}"?' if suggestion else ""
    available = ", ".join(choices) if choices else "none"
    return UserError(f'unknown {kind} "{name}"{hint} (available: {available})')
