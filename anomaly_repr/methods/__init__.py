"""Methods as plug-ins: one module per method, registered by name (see `base.Method` for what a method says).

Adding a method: write `anomaly_repr/methods/<name>.py` with a `Method` subclass decorated by
`@register_method("<name>")` and the scorers it brings, import it at the bottom of this file, and copy
tests/test_methods.py's toy method for its tests. Nothing else changes.
"""

from __future__ import annotations

from anomaly_repr.methods.base import (
    METHODS,
    ORACLE_REPRESENTATION,
    REFERENCE,
    VARIANT,
    Calibration,
    Method,
    child_config,
    method_for,
    register_method,
    searchable,
)

__all__ = ["METHODS", "ORACLE_REPRESENTATION", "REFERENCE", "VARIANT", "Calibration", "Method", "child_config",
           "method_for", "register_method", "searchable"]

# Each module registers its method (and its scorers) on import; order = the default order of a study.
from anomaly_repr.methods import classifier, hybrid, godin, oracle_rep  # noqa: E402, F401, I001
from anomaly_repr.methods import rotation, geom, recolor, sobel, ensemble, svgd, jem, csi  # noqa: E402, F401, I001
