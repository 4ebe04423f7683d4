"""The figures of one evaluation: ROC curves and score histograms of every scorer on the test split."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def roc_figure(scores: dict[str, np.ndarray], is_anomaly: np.ndarray, aurocs: dict[str, float]) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(is_anomaly, s)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {aurocs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (nominal flagged)", ylabel="true-positive rate (anomalies flagged)",
           title="ROC, test split", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def histogram_figure(scores: dict[str, np.ndarray], is_anomaly: np.ndarray) -> Figure:
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items(), strict=True):
        bins = np.histogram_bin_edges(s, bins=40)
        ax.hist(s[~is_anomaly], bins=bins, alpha=0.6, density=True, label="nominal")
        ax.hist(s[is_anomaly], bins=bins, alpha=0.6, density=True, label="anomaly")
        ax.set(title=name, xlabel="score (higher = more anomalous)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
