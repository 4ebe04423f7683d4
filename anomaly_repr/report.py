"""Figures and tables: ROC curves and score histograms per evaluation; AUROC table, bar chart and gaps per study."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from anomaly_repr.features import FEATURE_SCORERS  # noqa: E402
from anomaly_repr.methods import METHODS, ORACLE_REPRESENTATION, REFERENCE, VARIANT  # noqa: E402
from anomaly_repr.scorers import CLASSIC_SCORERS, is_oracle  # noqa: E402

TIERS = ("classic", "feature", "method", "oracle")  # the table's column groups, left to right


def tier(scorer: str) -> str:
    """classic (functions of the logits), feature (feature-space detectors fitted on nominal data), method
    (a method's own scores) or oracle (fitted with anomaly labels: not deployable)."""
    if is_oracle(scorer):
        return "oracle"
    return "classic" if scorer in CLASSIC_SCORERS else "feature" if scorer in FEATURE_SCORERS else "method"


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

def _per_repeat(results: dict[str, list[dict[str, float]]], method: str, key: str) -> np.ndarray:
    return np.array([r[key] for r in results[method] if key in r])


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Parent-run metrics: `test/<method>/<name>` means (`_std` too over several repeats), the gaps and gains.

    Gaps are defined by the methods' roles, measured against the reference method (the classifier):
    q1_gap: its oracle_rf AUROC minus its best classic-score AUROC (what z holds that the scores miss);
    q1_best_deployable: its best non-oracle AUROC, and q1_closed: the fraction of the q1 gap that it closes,
    (best deployable - best classic) / (oracle_rf - best classic). Like the best classic score, the best
    deployable one is picked on the test AUROCs: a reading of the table, not a model selection;
    q2_gap: the oracle representation's oracle_rf AUROC minus the reference's (what a network of this
    architecture could hold). For every other method, `test/gain/<method>/oracle_rf` (its oracle minus the
    reference's: does it put more anomaly information into z?) and `test/gain/<method>/best_score` (its
    best deployable score minus the reference's best deployable score, classic and feature-space scorers
    alike: does a user gain anything over the classifier with today's detectors?); a method
    may name an older alias of its oracle gain (the hybrid's `test/q3_gap`).
    """
    summary = {}
    for method, repeats in results.items():
        for key in repeats[0] if repeats else []:
            values = _per_repeat(results, method, key)
            name = f"test/{method}/{key.removeprefix('test/')}"
            summary[name] = float(values.mean())
            if len(values) > 1:
                summary[name + "_std"] = float(values.std(ddof=1))
    reference = reference_method(results)
    if reference is None:
        return summary
    rf = summary[f"test/{reference}/oracle_rf/auroc"]
    classic = max(summary[f"test/{reference}/{s}/auroc"] for s in CLASSIC_SCORERS)
    summary["test/q1_gap"] = rf - classic
    best = best_deployable(summary, reference)
    if best is not None:
        summary["test/q1_best_deployable"] = summary[f"test/{reference}/{best}/auroc"]
        if rf > classic:
            summary["test/q1_closed"] = (summary["test/q1_best_deployable"] - classic) / (rf - classic)
    for method in results:
        cls = METHODS[method]
        their_rf = summary.get(f"test/{method}/oracle_rf/auroc")
        if cls.role == ORACLE_REPRESENTATION and their_rf is not None:
            summary["test/q2_gap"] = their_rf - rf
        elif cls.role == VARIANT:
            deployable = [v for k, v in summary.items() if k.startswith(f"test/{method}/") and k.endswith("/auroc")
                          and not is_oracle(k.split("/")[2])]
            if their_rf is not None:
                summary[f"test/gain/{method}/oracle_rf"] = their_rf - rf
                if cls.oracle_gain_alias:
                    summary[cls.oracle_gain_alias] = their_rf - rf
            if deployable and "test/q1_best_deployable" in summary:
                summary[f"test/gain/{method}/best_score"] = max(deployable) - summary["test/q1_best_deployable"]
    return summary


def reference_method(results: dict[str, list[dict[str, float]]]) -> str | None:
    """The study's method in the reference role (the classifier), if it has one."""
    return next((m for m in results if METHODS[m].role == REFERENCE), None)


def best_deployable(summary: dict[str, float], method: str) -> str | None:
    """The name of `method`'s non-oracle scorer with the highest mean test AUROC in `summary`."""
    aurocs = {k.split("/")[2]: v for k, v in summary.items()
              if k.startswith(f"test/{method}/") and k.endswith("/auroc") and k.count("/") == 3}
    deployable = {name: v for name, v in aurocs.items() if not is_oracle(name)}
    return max(deployable, key=lambda name: deployable[name]) if deployable else None


def _scorer_names(results: dict[str, list[dict[str, float]]]) -> list[str]:
    """Every scorer with a test AUROC, grouped by tier (classic, feature, method, oracle)."""
    names: list[str] = []
    for repeats in results.values():
        for key in repeats[0] if repeats else []:
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "auroc" and parts[1] not in names:
                names.append(parts[1])
    return sorted(names, key=lambda name: TIERS.index(tier(name)))  # stable: registry order within a tier


def auroc_table(results: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    """Test AUROC, rows = models, columns = scorers; 'mean +- std' over repeats when there are several."""
    rows = {}
    for method in results:
        row = {}
        for scorer in _scorer_names(results):
            values = _per_repeat(results, method, f"test/{scorer}/auroc")
            if len(values) == 1:
                row[scorer] = f"{values[0]:.3f}"
            elif len(values) > 1:
                row[scorer] = f"{values.mean():.3f} +- {values.std(ddof=1):.3f}"
            else:
                row[scorer] = ""
        rows[method] = row
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
    for method in results:
        for scorer in _scorer_names(results):
            values = _per_repeat(results, method, f"test/{scorer}/auroc")
            if len(values):
                labels.append(f"{method}\n{scorer}")
                means.append(values.mean())
                stds.append(values.std(ddof=1) if len(values) > 1 else 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    palette = {"classic": "tab:blue", "feature": "tab:green", "method": "tab:purple", "oracle": "tab:orange"}
    colors = [palette[tier(label.split("\n")[1])] for label in labels]
    ax.bar(range(len(labels)), means, yerr=stds, color=colors, capsize=3)
    for i, m in enumerate(means):
        ax.text(i, m + 0.01, f"{m:.3f}", ha="center", fontsize=7)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")  # scores below it are drawn too
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="test AUROC", title=title)
    handles = [Patch(color=palette[t], label=t) for t in TIERS if palette[t] in colors]
    ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0]], loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
