"""Methods as plug-ins: one module per method, registered by name (see `base.Method` for what a method says).

Adding a method: write `anomaly_repr/methods/<name>.py` with a `Method` subclass decorated by
`@register_method("<name>")` and the scorers it brings, import it at the bottom of this file, and copy
tests/test_methods.py's toy method for its tests. Nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from anomaly_repr.errors import ConfigError
from anomaly_repr.methods.base import ORACLE_REPRESENTATION, REFERENCE, VARIANT, Calibration, Method
from anomaly_repr.registry import Registry

if TYPE_CHECKING:
    from anomaly_repr.config import ExperimentConfig

METHODS: Registry[type[Method]] = Registry()
DEFAULT_METHOD = "classifier"


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return add


def method_for(cfg: ExperimentConfig) -> Method:
    """The method `cfg` names (settled by the config's own checks)."""
    return METHODS[cfg.method](cfg)


def resolve(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """(method name, implied field values) for a config: `method` if given, else the one its fields select
    (`recon_weight > 0`: hybrid, `head=godin`: godin), else the classifier. Contradictions are errors."""
    claimed = [name for name, cls in METHODS.items() if cls.claims(cfg)]
    if not cfg.method:
        if len(claimed) > 1:
            raise ConfigError(f"these settings select several methods ({', '.join(claimed)}); choose one with method")
        name = claimed[0] if claimed else DEFAULT_METHOD
    elif cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    else:
        name = cfg.method
        others = [c for c in claimed if c != name]
        if others:
            fields_ = ", ".join(f"{f}={getattr(cfg, f)}" for c in others for f in METHODS[c].selectors)
            raise ConfigError(f"method={name} contradicts {fields_} (which selects {', '.join(others)})")
    return name, METHODS[name].settle(cfg)


def child_config(base: ExperimentConfig, name: str) -> ExperimentConfig:
    """`base` as a config of method `name`: the fields that select other methods go back to their defaults."""
    defaults = {f.name: f.default for f in fields(base) if f.default is not MISSING}
    resets = {f: defaults[f] for other, cls in METHODS.items() if other != name for f in cls.selectors}
    return base.replace(**resets, method=name)


def searchable() -> list[str]:
    """Methods with settings that `tune` can search."""
    return [name for name, cls in METHODS.items() if cls.tune_scorer is not None]


__all__ = ["METHODS", "ORACLE_REPRESENTATION", "REFERENCE", "VARIANT", "Calibration", "Method", "child_config",
           "method_for", "register_method", "resolve", "searchable"]

# Each module registers its method (and its scorers) on import; order = the default order of a study.
from anomaly_repr.methods import classifier, hybrid, godin, oracle_rep  # noqa: E402, F401, I001
from anomaly_repr.methods import rotation, geom, recolor, sobel, ensemble, svgd, jem, csi  # noqa: E402, F401, I001
