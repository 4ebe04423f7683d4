"""The figures of one evaluation (ROC curves and score histograms of every scorer on the test split), and
the size every figure the project logs is drawn at.

MLflow's artifact preview is about 830 px wide. A figure drawn wider is shrunk until its text cannot be
read, so figures are drawn at that width and grow downwards: small multiples, not one long row.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from anomaly_repr.scoring.scorers import TIERS, tier  # noqa: E402

DPI = 100
PREVIEW_WIDTH = 8.3  # inches at DPI: the 830 px of MLflow's artifact preview


def fit_preview(fig: Figure) -> Figure:
    """Draw `fig` (one made elsewhere, such as Optuna's) at most as wide as the preview, keeping its aspect."""
    width, height = fig.get_size_inches()
    scale = min(1.0, PREVIEW_WIDTH / width)
    fig.set_dpi(DPI)
    fig.set_size_inches(width * scale, height * scale)
    fig.tight_layout()
    return fig


def grid(panels: int, columns: int, row_height: float) -> tuple[Figure, list[plt.Axes]]:
    """`panels` axes at the preview's width, `columns` to a row; unused cells of the last row are hidden."""
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(PREVIEW_WIDTH, row_height * rows), dpi=DPI, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def roc_figure(scores: dict[str, np.ndarray], is_anomaly: np.ndarray, aurocs: dict[str, float]) -> Figure:
    """One panel per scorer tier (classic, feature, method, oracle), each with its scorers' ROC curves."""
    tiers = [t for t in TIERS if any(tier(name) == t for name in scores)]
    fig, axes = grid(len(tiers), 2, 3.9)
    for ax, kind in zip(axes, tiers, strict=True):
        for name, s in scores.items():
            if tier(name) == kind:
                fpr, tpr, _ = roc_curve(is_anomaly, s)
                ax.plot(fpr, tpr, label=f"{name} ({aurocs[name]:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="false-positive rate (nominal flagged)", ylabel="true-positive rate", xlim=(0, 1),
               ylim=(0, 1.01), title=f"{kind} scorers: ROC on the test split (AUROC)")
        ax.title.set_fontsize(9)
        ax.legend(loc="lower right", fontsize=6 if len(ax.lines) > 8 else 7, ncols=1 + len(ax.lines) // 10)
    fig.tight_layout()
    return fig


def histogram_figure(scores: dict[str, np.ndarray], is_anomaly: np.ndarray) -> Figure:
    """One panel per scorer, four to a row: the nominal and anomalous test images' score densities."""
    fig, axes = grid(len(scores), 4, 2.2)
    for ax, (name, s) in zip(axes, scores.items(), strict=True):
        ax.set_title(name, fontsize=9)
        finite = np.isfinite(s)
        if (bins := _bin_edges(s[finite])) is None:  # a diverged model's scores: the cell still logs the rest
            ax.text(0.5, 0.5, "no finite spread\nto draw", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
            continue
        ax.hist(s[finite & ~is_anomaly], bins=bins, alpha=0.6, density=True, label="nominal")
        ax.hist(s[finite & is_anomaly], bins=bins, alpha=0.6, density=True, label="anomaly")
        ax.tick_params(labelsize=7)
        ax.xaxis.get_offset_text().set_fontsize(7)
        ax.set_yticks([])  # densities: their scale says nothing across scorers
    if drawn := [ax for ax in axes if ax.patches]:
        drawn[0].legend(fontsize=7)
    fig.supxlabel("score (higher = more anomalous)", fontsize=8)
    fig.tight_layout()
    return fig


def _bin_edges(finite: np.ndarray) -> list[float] | None:
    """40 equal bins over the scores; None where there are none, or where their spread is too narrow for
    the float type to split into 40 (scores near 1e17 that differ in their last digits)."""
    if not finite.size:
        return None
    try:
        return list(np.histogram_bin_edges(finite, bins=40))
    except ValueError:
        return None
