"""Figures and tables: ROC curves and score histograms per evaluation; AUROC table, bar chart and gaps per study."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
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


# --- study summaries: one row per model, one column per scorer ---

def _per_repeat(results: dict[str, list[dict[str, float]]], kind: str, key: str) -> np.ndarray:
    return np.array([r[key] for r in results[kind] if key in r])


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Parent-run metrics: `test/<model>/<name>` means (`_std` too over several repeats) and the gaps.

    q1_gap: the classifier's oracle_rf AUROC minus its best classic-score AUROC (what z holds that
    the scores miss); q2_gap: the oracle representation's oracle_rf AUROC minus the classifier's (what
    a network of this architecture could hold); q3_gap, with a hybrid: its oracle_rf AUROC minus the
    classifier's (does reconstruction put more anomaly information into z?).
    """
    summary = {}
    for kind, repeats in results.items():
        for key in repeats[0] if repeats else []:
            values = _per_repeat(results, kind, key)
            name = f"test/{kind}/{key.removeprefix('test/')}"
            summary[name] = float(values.mean())
            if len(values) > 1:
                summary[name + "_std"] = float(values.std(ddof=1))
    rf = summary["test/classifier/oracle_rf/auroc"]
    classic = max(summary[f"test/classifier/{s}/auroc"] for s in ("msp", "entropy", "max_logit", "energy"))
    summary["test/q1_gap"] = rf - classic
    summary["test/q2_gap"] = summary["test/oracle_rep/oracle_rf/auroc"] - rf
    if "test/hybrid/oracle_rf/auroc" in summary:
        summary["test/q3_gap"] = summary["test/hybrid/oracle_rf/auroc"] - rf
    return summary


def _scorer_names(results: dict[str, list[dict[str, float]]]) -> list[str]:
    names: list[str] = []
    for repeats in results.values():
        for key in repeats[0] if repeats else []:
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "auroc" and parts[1] not in names:
                names.append(parts[1])
    return names


def auroc_table(results: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    """Test AUROC, rows = models, columns = scorers; 'mean +- std' over repeats when there are several."""
    rows = {}
    for kind in results:
        row = {}
        for scorer in _scorer_names(results):
            values = _per_repeat(results, kind, f"test/{scorer}/auroc")
            if len(values) == 1:
                row[scorer] = f"{values[0]:.3f}"
            elif len(values) > 1:
                row[scorer] = f"{values.mean():.3f} +- {values.std(ddof=1):.3f}"
            else:
                row[scorer] = ""
        rows[kind] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def to_markdown(table: pd.DataFrame) -> str:
    header = "| model | " + " | ".join(table.columns) + " |"
    rule = "|---" * (len(table.columns) + 1) + "|"
    body = ["| " + " | ".join([str(i), *map(str, row)]) + " |"
            for i, row in zip(table.index, table.values, strict=True)]
    return "\n".join([header, rule, *body]) + "\n"


def auroc_bar_chart(results: dict[str, list[dict[str, float]]], title: str) -> Figure:
    """AUROC by method, one bar per (model, scorer) with a cell; error bars are std over repeats."""
    labels, means, stds = [], [], []
    for kind in results:
        for scorer in _scorer_names(results):
            values = _per_repeat(results, kind, f"test/{scorer}/auroc")
            if len(values):
                labels.append(f"{kind}\n{scorer}")
                means.append(values.mean())
                stds.append(values.std(ddof=1) if len(values) > 1 else 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    colors = ["tab:orange" if "oracle" in label else "tab:blue" for label in labels]
    ax.bar(range(len(labels)), means, yerr=stds, color=colors, capsize=3)
    for i, m in enumerate(means):
        ax.text(i, m + 0.01, f"{m:.3f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(ylim=(0.5, 1.05), ylabel="test AUROC", title=title)
    fig.tight_layout()
    return fig
