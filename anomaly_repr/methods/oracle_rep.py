"""`oracle_rep`: the same architecture trained on every class of the split, anomaly classes included (Q2).

Its z is the oracle representation: how much anomaly information a network of this architecture could
hold. Its logits cover the anomaly classes too, so logit scores mean nothing for it: only the oracles
(fitted on its validation z with anomaly labels) score it.
"""

from __future__ import annotations

from anomaly_repr.methods.base import ORACLE_REPRESENTATION, Method, register_method


@register_method("oracle_rep")
class OracleRepresentation(Method):
    role = ORACLE_REPRESENTATION
    all_classes = True
    scores_logits = False
