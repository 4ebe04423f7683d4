"""Errors that reach the user as one line and a non-zero exit (see `cli.main`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any


class AnomalyReprError(Exception):
    """Base of every error caused by the user's input; the CLI prints its message alone."""


class ConfigError(AnomalyReprError):
    """A configuration value is out of range or names nothing known."""


def unknown(what: str, value: object, choices: Iterable[object]) -> ConfigError:
    """The one-line error of a value that is not one of the choices, the same for every field."""
    return ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}")


def check_finite(config: Any) -> None:
    """Refuse NaN and infinity in every float field of a config dataclass: NaN passes every check written
    as `x < 0` (`max_hours nan` would mean no limit, `mixup nan` no mixing)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{field.name} must be a finite number, got {value}")


class DataError(AnomalyReprError):
    """A data source is missing, empty or holds unreadable files."""


class DivergedError(AnomalyReprError):
    """Training produced a non-finite loss (a learning rate or loss weight too large)."""


class SealedError(AnomalyReprError):
    """Images of a part that this view of the data does not hold (the test split, during tuning)."""


class BudgetError(AnomalyReprError):
    """A run that cannot finish within the time it was given (`max_hours`)."""
