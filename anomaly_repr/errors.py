"""Errors that reach the user as one line and a non-zero exit (see `cli.main`)."""

from __future__ import annotations

from collections.abc import Iterable


class AnomalyReprError(Exception):
    """Base of every error caused by the user's input; the CLI prints its message alone."""


class ConfigError(AnomalyReprError):
    """A configuration value is out of range or names nothing known."""


def unknown(what: str, value: object, choices: Iterable[object]) -> ConfigError:
    """The one-line error of a value that is not one of the choices, the same for every field."""
    return ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}")


class DataError(AnomalyReprError):
    """A data source is missing, empty or holds unreadable files."""


class DivergedError(AnomalyReprError):
    """Training produced a non-finite loss (a learning rate or loss weight too large)."""


class SealedError(AnomalyReprError):
    """Images of a part that this view of the data does not hold (the test split, during tuning)."""


class BudgetError(AnomalyReprError):
    """A run that cannot finish within the time it was given (`max_hours`)."""
