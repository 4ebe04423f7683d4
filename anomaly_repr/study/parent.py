"""A finished study's parent run: its cells read back from their child runs, summarised and logged.

Every cell is read from MLflow (metrics, `outputs/test_scores.npz`, known classes, per-epoch history),
whichever worker ran it, so a parent assembled on the driver is the same as one assembled after a resume.
"""

from __future__ import annotations

import logging
import tempfile
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from anomaly_repr.engine.evaluation import SELECT
from anomaly_repr.engine.figures import DPI
from anomaly_repr.scoring.intervals import Cell, Results
from anomaly_repr.study.figures import near_far_panels
from anomaly_repr.study.ranks import critical_difference, rank_scorers, rank_table
from anomaly_repr.study.report import (
    auroc_chart,
    auroc_table,
    by_split_table,
    gap_table,
    markdown_report,
    near_far_points,
    runs,
    to_markdown,
)
from anomaly_repr.study.summary import choices, summarise
from anomaly_repr.tracking.store import CORRECT, FAR_PREFIX, git_commit, log_figures

if TYPE_CHECKING:
    from anomaly_repr.study.cells import Study

log = logging.getLogger(__name__)

ACCURACY, AUROC = "val/acc", "val/max_logit/auroc"  # the per-epoch pair of the accuracy-vs-AUROC figure
FINAL_ACCURACY, FINAL_AUROC = "test/acc", "test/max_logit/auroc"  # the final models' pair of its correlations


def load_cell(run_id: str, split: int, seed: int) -> Cell:
    """A child run's evaluation: its test metrics and test scores."""
    run = mlflow.MlflowClient().get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="outputs/test_scores.npz", dst_path=tmp)
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    is_anomaly, correct = arrays.pop("is_anomaly"), arrays.pop(CORRECT, None)
    far: dict[str, dict[str, np.ndarray]] = {}
    for key in [k for k in arrays if k.startswith(FAR_PREFIX)]:
        name, scorer = key.removeprefix(FAR_PREFIX).split(":", 1)
        far.setdefault(name, {})[scorer] = arrays.pop(key)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    select = {k.split("/")[1]: v for k, v in run.data.metrics.items()
              if k.startswith(f"{SELECT}/") and k.endswith("/auroc")}
    known = tuple(run.data.tags.get("known_classes", "").split(","))
    return Cell(split, seed, metrics, arrays, is_anomaly, known, run_id, far, correct, select)


def class_sets(results: Results) -> dict[tuple[str, ...], list[int]]:
    """Distinct known-class sets of the study's splits -> the splits that hold each."""
    sets: dict[tuple[str, ...], list[int]] = {}
    for cells in results.values():
        for cell in cells:
            splits = sets.setdefault(tuple(sorted(cell.known_classes)), [])
            if cell.split not in splits:
                splits.append(cell.split)
    return sets


def accuracy_vs_auroc(results: Results) -> tuple[Figure, dict[str, float]]:
    """Validation accuracy against validation max-logit AUROC for every epoch of every child, one colour per
    method; the correlations over the final models (test accuracy against test max-logit AUROC)."""
    client = mlflow.MlflowClient()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=DPI)
    final_acc, final_auroc = [], []
    for i, (method, cells) in enumerate(results.items()):
        for j, cell in enumerate(cells):
            if FINAL_AUROC not in cell.metrics or FINAL_ACCURACY not in cell.metrics:
                continue  # a method whose logits mean nothing for detection (the oracle representation)
            acc = {m.step: m.value for m in client.get_metric_history(cell.run_id, ACCURACY)}
            auroc = {m.step: m.value for m in client.get_metric_history(cell.run_id, AUROC)}
            epochs = sorted(set(acc) & set(auroc))
            ax.plot([acc[e] for e in epochs], [auroc[e] for e in epochs], marker=".", linewidth=0.6, alpha=0.7,
                    color=f"C{i}", label=method if j == 0 else None)
            final_acc.append(cell.metrics[FINAL_ACCURACY])
            final_auroc.append(cell.metrics[FINAL_AUROC])
    metrics = {"accuracy_vs_auroc/n_models": float(len(final_acc))}
    caption = f"{len(final_acc)} final model(s)"
    if len(final_acc) >= 3 and np.ptp(final_acc) > 0 and np.ptp(final_auroc) > 0:
        pearson = float(scipy_stats.pearsonr(final_acc, final_auroc)[0])
        spearman = float(scipy_stats.spearmanr(final_acc, final_auroc)[0])
        metrics |= {"accuracy_vs_auroc/pearson": pearson, "accuracy_vs_auroc/spearman": spearman}
        caption += f": Pearson {pearson:+.2f}, Spearman {spearman:+.2f} (test accuracy vs test max-logit AUROC)"
    else:
        caption += ": too few, or too alike, for a correlation"
    ax.set(xlabel="validation accuracy (known classes)", ylabel="validation max-logit AUROC",
           title="Does a better classifier make a better detector?")
    ax.text(0.5, -0.2, caption, transform=ax.transAxes, ha="center", fontsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, metrics


def log_parent(study: Study, results: Results) -> dict[str, float]:
    """Summary metrics, tags, the tables (AUROC with intervals, gaps, per split) and the figures."""
    base = study.base
    summary = summarise(results, base.bootstrap)
    sets = class_sets(results)
    shared = [splits for splits in sets.values() if len(splits) > 1]
    about = {"dataset": base.dataset, "splits": ",".join(map(str, study.splits)),
             "seeds": ",".join(map(str, study.seeds)), "methods": ",".join(study.methods), "arch": base.arch,
             "epochs": str(base.epochs), "bootstrap resamples": str(base.bootstrap), "commit": git_commit()}
    if base.ood_sets:
        about["far sets (ood_sets)"] = base.ood_sets
    if shared:
        about["caveat"] = "; ".join(f"splits {','.join(map(str, s))} hold the same known classes" for s in shared)
    picked = choices(results)
    if picked:
        about["chosen on validation data"] = ", ".join(f"{key} = {name}" for key, name in picked.items())
    figure, correlation = accuracy_vs_auroc(results)
    ranks = rank_scorers(results)
    about["ranks"] = (f"mean rank over {len(ranks.aurocs)} runs (1 = best test AUROC): "
                      + ", ".join(f"{name} {rank:.2f}" for name, rank in ranks.mean_rank.items())
                      + (f"; Friedman chi2 {ranks.statistic:.1f}, p {ranks.p:.2g}" if ranks.p is not None else
                         "; no Friedman test (it needs 2 runs and 3 scorers)"))
    mlflow.log_metrics(summary | correlation | ranks.metrics() | {"known_class_sets": float(len(sets))})
    mlflow.set_tag("known_class_sets", " | ".join(f"split {','.join(map(str, s))}: {','.join(c)}"
                                                  for c, s in sets.items()))
    mlflow.set_tags(picked)
    table = auroc_table(results, summary)
    mlflow.log_text(table.to_csv(index_label="model"), "results/auroc_table.csv")  # named: MLflow's preview
    mlflow.log_text(markdown_report(about, results, summary), "results/auroc_table.md")
    gaps = gap_table(summary, runs(results))
    mlflow.log_text(gaps.to_csv(index_label="gap"), "results/gaps.csv")  # named: the preview shows a blank otherwise
    mlflow.log_text(by_split_table(results).to_csv(), "results/auroc_by_split.csv")
    figures = {"figures/auroc_by_method.png": auroc_chart(results, summary, title=base.dataset),
               "figures/accuracy_vs_auroc.png": figure}
    if points := near_far_points(results, summary):
        figures["figures/near_vs_far.png"] = near_far_panels(points, base.dataset)
    mlflow.log_text(rank_table(ranks), "results/ranks.csv")
    if ranks.posthoc is not None:
        figures["figures/critical_difference.png"] = critical_difference(ranks, base.dataset)
    log_figures(figures)
    log.info("gaps:\n%s\n%s", to_markdown(gaps, first="gap"), to_markdown(table))
    return summary
