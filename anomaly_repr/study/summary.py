"""A study's parent metrics: every cell (method x scorer x metric) and every gap, with its uncertainty.

Each child run (one method on one split and seed) is a `Cell`: its test metrics and its test scores. The
children of one (split, seed) share their test images, so one stratified bootstrap of those images (the
same draw its own evaluation made: `scoring.intervals`) serves all their scorers: every difference below
is *paired*.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from anomaly_repr.methods import METHODS, ORACLE_REPRESENTATION, REFERENCE, VARIANT
from anomaly_repr.scoring.intervals import (
    BASELINE,
    INTERVAL_SUFFIXES,
    Bootstrap,
    Results,
    far_metrics,
    paired_gap,
    spread_metrics,
)
from anomaly_repr.scoring.scorers import is_oracle, scorers_of
from anomaly_repr.scoring.stats import interval_metrics


def row_method(row: str) -> str:
    """The method a table row trained: `classifier` for `classifier` and `classifier.trivialaugment`."""
    return row.split(".", 1)[0]


def reference_method(results: Results) -> str | None:
    """The study's method in the reference role (the classifier, under the reference policy), if it has one."""
    return next((m for m in results if m == row_method(m) and METHODS[m].role == REFERENCE), None)


def best_deployable(summary: dict[str, float], method: str) -> str | None:
    """The name of `method`'s non-oracle scorer with the highest mean test AUROC in `summary`."""
    aurocs = {k.split("/")[2]: v for k, v in summary.items()
              if k.startswith(f"test/{method}/") and k.endswith("/auroc") and k.count("/") == 3}
    deployable = {name: v for name, v in aurocs.items() if not is_oracle(name)}
    return max(deployable, key=lambda name: deployable[name]) if deployable else None


def parent_key(model: str, key: str) -> str:
    """A child's metric on the parent: `test/<model>/...`, and a far set's `test/ood/<set>/<model>/...`."""
    if key.startswith("test/ood/"):
        _, _, name, rest = key.split("/", 3)
        return f"test/ood/{name}/{model}/{rest}"
    return f"test/{model}/{key.removeprefix('test/')}"


def summarise(results: Results, n_resamples: int) -> dict[str, float]:
    """Parent-run metrics: `test/<method>/<name>` (the mean over repeats; `_std`, `_mean`, `_ci95` with
    several), bootstrap intervals `_ci_low`/`_ci_high` of every resampled metric, and the gaps and gains,
    each with its paired interval and p-value (`_p`).

    Gaps are defined by the methods' roles, measured against the reference method (the classifier):
    q1_gap: its oracle_rf AUROC minus its best classic-score AUROC (what z holds that the scores miss);
    q1_best_deployable: its best non-oracle AUROC, and q1_closed: the fraction of the q1 gap that it closes,
    (best deployable - best classic) / (oracle_rf - best classic). Like the best classic score, the best
    deployable one is picked on the test AUROCs: a reading of the table, not a model selection;
    q2_gap: the oracle representation's oracle_rf AUROC minus the reference's (what a network of this
    architecture could hold). For every other method, `test/gain/<method>/oracle_rf` (its oracle minus the
    reference's: does it put more anomaly information into z?) and `test/gain/<method>/best_score` (its
    best deployable score minus the reference's best deployable score: does a user gain anything over the
    classifier with today's detectors?); a method may name an older alias of its oracle gain (the hybrid's
    `test/q3_gap`). Every model's scorers are also compared with its own max logit:
    `test/<method>/<scorer>/vs_max_logit`.

    A row `<method>.<policy>` (the method under another augmentation policy) is measured against its method's
    row, on the same repeats: `test/gain/<method>.<policy>/oracle_rf`, `.../max_logit`, `.../best_score` (best
    deployable against best deployable) and `.../acc` (test accuracy; its spread over repeats only).
    """
    boot = Bootstrap(results, n_resamples)
    summary: dict[str, float] = {}
    for method, cells in results.items():
        for key in cells[0].metrics if cells else []:
            if not key.endswith(INTERVAL_SUFFIXES) and "/vs_" not in key and "/near_harder" not in key \
                    and all(key in c.metrics for c in cells):
                values = np.array([c.metrics[key] for c in cells])
                summary |= spread_metrics(parent_key(method, key), values)
        summary |= far_metrics(results, boot, method, f"test/ood/{{set}}/{method}/{{scorer}}")
        for scorer in cells[0].scores if cells else []:
            for metric, values in (boot(method, scorer) or {}).items():
                summary |= interval_metrics(f"test/{method}/{scorer}/{metric}", values)
            if (oscr := boot.oscr(method, scorer)) is not None:
                summary |= interval_metrics(f"test/{method}/{scorer}/oscr", oscr)
            if scorer != BASELINE and BASELINE in cells[0].scores and not is_oracle(scorer):
                summary |= paired_gap(results, boot, f"test/{method}/{scorer}/vs_{BASELINE}", (method, scorer),
                                (method, BASELINE))
    summary |= _policy_gains(results, boot, summary)  # each policy row against its own method's row
    reference = reference_method(results)
    if reference is None:
        return summary
    rf = (reference, "oracle_rf")
    classic = (reference, max(scorers_of("classic"), key=lambda s: summary[f"test/{reference}/{s}/auroc"]))
    summary |= paired_gap(results, boot, "test/q1_gap", rf, classic)
    best = best_deployable(summary, reference)
    if best is not None:
        summary["test/q1_best_deployable"] = summary[f"test/{reference}/{best}/auroc"]
        if summary["test/q1_gap"] > 0:
            best_classic = summary[f"test/{reference}/{classic[1]}/auroc"]
            summary["test/q1_closed"] = (summary["test/q1_best_deployable"] - best_classic) / summary["test/q1_gap"]
    for method in (row for row in results if row == row_method(row)):
        cls = METHODS[method]
        if f"test/{method}/oracle_rf/auroc" in summary and cls.role in (ORACLE_REPRESENTATION, VARIANT):
            names = ["test/q2_gap"] if cls.role == ORACLE_REPRESENTATION else [
                f"test/gain/{method}/oracle_rf", *([cls.oracle_gain_alias] if cls.oracle_gain_alias else [])]
            for name in names:
                summary |= paired_gap(results, boot, name, (method, "oracle_rf"), rf)
        theirs = best_deployable(summary, method)
        if cls.role == VARIANT and theirs is not None and best is not None:
            summary |= paired_gap(results, boot, f"test/gain/{method}/best_score", (method, theirs), (reference, best))
    return summary


def _policy_gains(results: Results, boot: Bootstrap, summary: dict[str, float]) -> dict[str, float]:
    """Each `<method>.<policy>` row against its method's row: AUROC gains with paired intervals, accuracy."""
    out: dict[str, float] = {}
    for row, cells in results.items():
        base = row_method(row)
        if row == base or base not in results:
            continue
        for scorer in ("oracle_rf", BASELINE):
            if scorer in cells[0].scores and scorer in results[base][0].scores:
                out |= paired_gap(results, boot, f"test/gain/{row}/{scorer}", (row, scorer), (base, scorer))
        theirs, ours = best_deployable(summary, row), best_deployable(summary, base)
        if theirs is not None and ours is not None:
            out |= paired_gap(results, boot, f"test/gain/{row}/best_score", (row, theirs), (base, ours))
        if all("test/acc" in c.metrics for c in [*cells, *results[base]]):
            out |= spread_metrics(f"test/gain/{row}/acc",
                           np.array([a.metrics["test/acc"] - b.metrics["test/acc"]
                                     for a, b in zip(cells, results[base], strict=True)]))
    return out


def significant(summary: dict[str, float], name: str) -> bool:
    """Whether the paired bootstrap interval of a gap excludes zero."""
    low, high = summary.get(f"{name}_ci_low"), summary.get(f"{name}_ci_high")
    return low is not None and high is not None and (low > 0 or high < 0)


def gap_names(summary: dict[str, float]) -> Iterable[str]:
    """The study-level gaps and gains in `summary`, in the order they were computed."""
    return [k for k in summary if (k.endswith("_gap") or k.startswith("test/gain/"))
            and not k.endswith((*INTERVAL_SUFFIXES, "_std", "_mean", "_ci95"))]


