"""A study's parent metrics: every cell (method x scorer x metric) and every gap, with its uncertainty.

Each child run (one method on one split and seed) is a `Cell`: its test metrics and its test scores. The
children of one (split, seed) share their test images, so one stratified bootstrap of those images (the
same draw its own evaluation made: `scoring.intervals`) serves all their scorers: every difference below
is *paired*.
"""

from __future__ import annotations

import re
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
from anomaly_repr.scoring.stats import holm, interval_metrics

GAP = re.compile(r"test/q\d_gap(_max_logit)?")  # q1_gap, q1_gap_max_logit, q2_gap, a method's alias (q3_gap)


def row_method(row: str) -> str:
    """The method a table row trained: `classifier` for `classifier` and `classifier.trivialaugment`."""
    return row.split(".", 1)[0]


def reference_method(results: Results) -> str | None:
    """The study's method in the reference role (the classifier, under the reference policy), if it has one."""
    return next((m for m in results if m == row_method(m) and METHODS[m].role == REFERENCE), None)


def deployable(results: Results, row: str) -> list[str]:
    """The non-oracle scorers that every cell of `row` has, in the registry's order."""
    cells = results[row]
    return [s for s in cells[0].scores if not is_oracle(s) and all(s in c.scores for c in cells)] if cells else []


def chosen(results: Results, row: str, names: Iterable[str]) -> str | None:
    """Of `names`, the scorer with the highest mean validation AUROC (`Cell.select`) over the row's cells: a
    choice made before any test image is read. None when no name has a validation AUROC in every cell."""
    cells = results[row]
    candidates = [n for n in names if cells and all(n in c.select for c in cells)]
    return max(candidates, key=lambda n: float(np.mean([c.select[n] for c in cells]))) if candidates else None


def best_deployable(results: Results, row: str) -> str | None:
    """The row's best deployable scorer, chosen on validation data."""
    return chosen(results, row, deployable(results, row))


def test_argmax(summary: dict[str, float], row: str, names: Iterable[str]) -> str | None:
    """Of `names`, the one with the highest mean test AUROC: a reading of the table, never a selection."""
    aurocs = {n: summary[f"test/{row}/{n}/auroc"] for n in names if f"test/{row}/{n}/auroc" in summary}
    return max(aurocs, key=lambda n: aurocs[n]) if aurocs else None


def choices(results: Results) -> dict[str, str]:
    """The scorers chosen on validation data, as the parent's tags: `q1_best_classic` and
    `q1_best_deployable` (the reference's) and `best_deployable/<row>` of every row."""
    tags = {f"best_deployable/{row}": best for row in results if (best := best_deployable(results, row))}
    reference = reference_method(results)
    if reference is not None:
        classic = chosen(results, reference, [s for s in scorers_of("classic") if s in deployable(results, reference)])
        tags |= {"q1_best_classic": classic} if classic else {}
        if f"best_deployable/{reference}" in tags:
            tags["q1_best_deployable"] = tags[f"best_deployable/{reference}"]
    return tags


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

    Gaps are defined by the methods' roles, measured against the reference method (the classifier). Every
    "best" scorer is chosen on validation data (`choices`: the highest mean validation AUROC, the protocol
    the oracle fits on), so its gap's interval is that of a scorer fixed in advance:
    q1_gap: its oracle_rf AUROC minus its best classic-score AUROC (what z holds that the scores miss);
    q1_gap_max_logit: the same against max logit, the talk's declared score; q1_gap_test_argmax: against the
    classic score best on test data (descriptive, with no interval: the choice read the test images);
    q1_best_deployable: its best non-oracle AUROC, and q1_closed: the fraction of the q1 gap that it closes,
    (best deployable - best classic) / (oracle_rf - best classic), beside q1_best_deployable_test_argmax;
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
    picked = choices(results)
    summary |= _policy_gains(results, boot, picked)  # each policy row against its own method's row
    reference = reference_method(results)
    if reference is None:
        return summary | holm_adjusted(summary)
    rf = (reference, "oracle_rf")
    summary |= paired_gap(results, boot, "test/q1_gap_max_logit", rf, (reference, BASELINE))
    classics = [s for s in scorers_of("classic") if s in deployable(results, reference)]
    if (argmax := test_argmax(summary, reference, classics)) is not None:
        summary["test/q1_gap_test_argmax"] = (summary[f"test/{reference}/oracle_rf/auroc"]
                                              - summary[f"test/{reference}/{argmax}/auroc"])
    if (argmax := test_argmax(summary, reference, deployable(results, reference))) is not None:
        summary["test/q1_best_deployable_test_argmax"] = summary[f"test/{reference}/{argmax}/auroc"]
    best = picked.get("q1_best_deployable")
    if (classic := picked.get("q1_best_classic")) is not None:
        summary |= paired_gap(results, boot, "test/q1_gap", rf, (reference, classic))
        if best is not None and summary["test/q1_gap"] > 0:
            best_classic = summary[f"test/{reference}/{classic}/auroc"]
            summary["test/q1_closed"] = (summary[f"test/{reference}/{best}/auroc"] - best_classic) / summary[
                "test/q1_gap"]
    if best is not None:
        summary["test/q1_best_deployable"] = summary[f"test/{reference}/{best}/auroc"]
    for method in (row for row in results if row == row_method(row)):
        cls = METHODS[method]
        if f"test/{method}/oracle_rf/auroc" in summary and cls.role in (ORACLE_REPRESENTATION, VARIANT):
            names = ["test/q2_gap"] if cls.role == ORACLE_REPRESENTATION else [
                f"test/gain/{method}/oracle_rf", *([cls.oracle_gain_alias] if cls.oracle_gain_alias else [])]
            for name in names:
                summary |= paired_gap(results, boot, name, (method, "oracle_rf"), rf)
        theirs = picked.get(f"best_deployable/{method}")
        if cls.role == VARIANT and theirs is not None and best is not None:
            summary |= paired_gap(results, boot, f"test/gain/{method}/best_score", (method, theirs), (reference, best))
    return summary | holm_adjusted(summary)


def holm_adjusted(summary: dict[str, float]) -> dict[str, float]:
    """`<name>_p_holm`: Holm's step-down adjustment (family-wise error 5 %) of the paired-bootstrap p-values,
    within each family a study reports: its gaps and gains (`gap_names`), and each model's scorers against
    its own max logit (`test/<model>/<scorer>/vs_max_logit`, the family a run adjusts on its own). A method's
    alias (`test/q3_gap`, the hybrid's oracle gain) is the same hypothesis as what it names: it is not counted
    twice, and takes that one's adjusted p-value."""
    aliases = gain_aliases()
    families: dict[str, list[str]] = {"gaps": [name for name in gap_names(summary)
                                               if f"{name}_p" in summary and name not in aliases]}
    for key in summary:
        if key.endswith(f"/vs_{BASELINE}_p") and key.count("/") == 3:
            families.setdefault(key.split("/")[1], []).append(key.removesuffix("_p"))
    adjusted = {f"{name}_p_holm": p for family in families.values()
                for name, p in zip(family, holm([summary[f"{name}_p"] for name in family]), strict=True)}
    return adjusted | {f"{alias}_p_holm": adjusted[f"{name}_p_holm"] for alias, name in aliases.items()
                       if f"{alias}_p" in summary and f"{name}_p_holm" in adjusted}


def gain_aliases() -> dict[str, str]:
    """Each method's older name for its oracle gain (the hybrid's `test/q3_gap`) -> the gain it names."""
    return {cls.oracle_gain_alias: f"test/gain/{name}/oracle_rf" for name, cls in METHODS.items()
            if cls.oracle_gain_alias}


def _policy_gains(results: Results, boot: Bootstrap, picked: dict[str, str]) -> dict[str, float]:
    """Each `<method>.<policy>` row against its method's row: AUROC gains with paired intervals, accuracy."""
    out: dict[str, float] = {}
    for row, cells in results.items():
        base = row_method(row)
        if row == base or base not in results:
            continue
        for scorer in ("oracle_rf", BASELINE):
            if scorer in cells[0].scores and scorer in results[base][0].scores:
                out |= paired_gap(results, boot, f"test/gain/{row}/{scorer}", (row, scorer), (base, scorer))
        theirs, ours = picked.get(f"best_deployable/{row}"), picked.get(f"best_deployable/{base}")
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


def gap_names(summary: dict[str, float]) -> list[str]:
    """The study-level gaps and gains in `summary` (each with its paired interval where the study resampled),
    in the order they were computed; the descriptive `_test_argmax` readings are not among them."""
    return [k for k in summary if (GAP.fullmatch(k) or k.startswith("test/gain/"))
            and not k.endswith((*INTERVAL_SUFFIXES, "_std", "_mean", "_ci95"))]


