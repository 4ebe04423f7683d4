"""`classifier`: a ResNet with a linear head trained with cross-entropy on the known classes.

The detector the representation analysis studies (Q1), and the reference that every other method's
gains are measured against. Everything it does is `Method`'s default.
"""

from __future__ import annotations

from anomaly_repr.methods.base import REFERENCE, Method, register_method


@register_method("classifier")
class Classifier(Method):
    role = REFERENCE
