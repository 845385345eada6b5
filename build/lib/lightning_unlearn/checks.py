"""Checks of settings, run where each setting is defined (a dataclass's ``__post_init__``, a
class's ``__init__``), so a value that cannot be served is refused when the command line is
parsed: before the run folder, ``stream_settings.json`` or any result exists.

Each check raises :class:`SettingsError` naming the option as the user types it
(``--data.steps_per_request must be >= 1, got 0``); the command line prints it as one
``error:`` line. Also here: the "did you mean ...?" suggestion for a name that is almost one
of the known ones.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from typing import Any

from lightning_unlearn.errors import SettingsError


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is no number (a bool is no number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def at_least(value: Any, minimum: int, option: str) -> None:
    """``value >= minimum`` (counts: steps, batch sizes, seeds per prompt...)."""
    number = _number(value)
    if number is None or not number >= minimum:
        raise SettingsError(f"{option} must be >= {minimum}, got {value!r}")


def positive(value: Any, option: str) -> None:
    """A finite number > 0 (learning rates)."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise SettingsError(f"{option} must be a finite number > 0, got {value!r}")


def non_negative(value: Any, option: str) -> None:
    """A finite number >= 0 (guidance scales, penalty weights)."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0:
        raise SettingsError(f"{option} must be a finite number >= 0, got {value!r}")


def in_interval(value: Any, low: float, high: float, option: str, low_open: bool = True, high_open: bool = False) -> None:
    """``value`` in the interval from ``low`` to ``high`` (open or closed at either end)."""
    number = _number(value)
    above = number is not None and (number > low if low_open else number >= low)
    below = number is not None and (number < high if high_open else number <= high)
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise SettingsError(f"{option} must lie in {interval}, got {value!r}")


def _normal(name: str) -> str:
    """A name without case, spaces, hyphens or underscores ("Van-Gogh" ~ "van gogh")."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn ``a`` into ``b``
    (optimal string alignment distance)."""
    rows = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        rows[i][0] = i
    for j in range(len(b) + 1):
        rows[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                rows[i][j] = min(rows[i][j], rows[i - 2][j - 2] + 1)
    return rows[-1][-1]


def closest_name(name: str, known: Iterable[str], max_edits: int = 2) -> str | None:
    """The known name ``name`` was probably meant to be: equal but for case, spaces and hyphens,
    else at most ``max_edits`` letters away (ignoring case; never more than a third of its
    letters, so a short word is not "corrected" into another one); None if none is that close.
    Ties go to the first in ``known``."""
    known = [k for k in known if k != name]
    target = _normal(name)
    for candidate in known:
        if _normal(candidate) == target:
            return candidate
    allowed = min(max_edits, len(target) // 3)
    best, best_distance = None, allowed + 1
    for candidate in known:
        distance = edit_distance(target, _normal(candidate))
        if distance < best_distance:
            best, best_distance = candidate, distance
    return best


def did_you_mean(name: str, known: Iterable[str], max_edits: int = 2) -> str:
    """``" (did you mean 'X'?)"`` when ``name`` is almost a known name, else ``""``."""
    match = closest_name(name, known, max_edits)
    return f" (did you mean {match!r}?)" if match is not None else ""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the plain subcommands (``report``, ``study``): a usage mistake is a
    :class:`SettingsError`, printed by the command line as one ``error:`` line like every
    other named error (argparse's own would print the usage and ``PROG: error: ...``)."""

    def error(self, message: str):  # type: ignore[override]
        raise SettingsError(f"{self.prog}: {message} (see {self.prog} --help)")
