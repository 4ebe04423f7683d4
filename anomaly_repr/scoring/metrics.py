"""Detection metrics with anomalies as the positive class (scores: higher = more anomalous)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomaly_repr.errors import DataError


def fpr_at_tpr(scores: np.ndarray, is_anomaly: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of nominal images flagged at the lowest threshold that flags `tpr` of the anomalies."""
    # every threshold: with drop_intermediate, collinear points of tied scores vanish and the first point
    # past `tpr` can be a later one
    fpr, tprs, _ = roc_curve(is_anomaly, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def anomaly_metrics(scores: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float]:
    """auroc; aupr_out (anomalies positive); aupr_in (nominals positive, scores negated); fpr95."""
    if is_anomaly.all() or not is_anomaly.any():
        raise DataError("detection metrics need both nominal and anomaly images; the split has "
                        f"{int((~is_anomaly).sum())} nominal and {int(is_anomaly.sum())} anomaly images here")
    return {
        "auroc": float(roc_auc_score(is_anomaly, scores)),
        "aupr_in": float(average_precision_score(~is_anomaly, -scores)),
        "aupr_out": float(average_precision_score(is_anomaly, scores)),
        "fpr95": fpr_at_tpr(scores, is_anomaly),
    }


def oscr(scores: np.ndarray, is_anomaly: np.ndarray, correct: np.ndarray) -> float:
    """Open-set classification rate (Dhamija et al. 2018; Vaze et al. 2022): the area under the curve of the
    correct-classification rate (known test images accepted, score at most the threshold, and classified
    right) against the false-positive rate (anomalies accepted) as the threshold sweeps. It equals the
    probability that a correctly classified known image scores below an anomaly (ties half), times the
    known images' accuracy. `correct`: per test image, whether its class was predicted (False for anomalies)."""
    right = ~is_anomaly & correct
    if not right.any():
        return 0.0
    pairs = np.r_[np.zeros(int(right.sum()), bool), np.ones(int(is_anomaly.sum()), bool)]
    auroc = float(roc_auc_score(pairs, np.r_[scores[right], scores[is_anomaly]]))
    return auroc * float(right.sum()) / float((~is_anomaly).sum())


def closed_set_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy over the known-class images (labels >= 0) only."""
    known = labels >= 0
    return float((logits[known].argmax(axis=1) == labels[known]).mean())
