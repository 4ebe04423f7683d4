"""Bootstrap intervals of one evaluation and of a study's cells: one stratified bootstrap of a (split,
seed)'s test images (`stats.Resamples`, seeded by the seed) serves every scorer of every model evaluated on
them, so every difference is *paired*. Over several repeats (seeds, splits), a resample's value is the mean
of the repeats' values on their own resamples: the interval of the mean over test-image noise; the spread
between runs (`_mean`, `_std`, `_ci95`: a Student-t interval) adds the seed and split noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomaly_repr.scoring.scorers import is_oracle
from anomaly_repr.scoring.stats import (
    METRICS,
    Resamples,
    Spread,
    difference_metrics,
    interval_metrics,
    resampled_metrics,
)

BASELINE = "max_logit"  # every scorer is also compared with this one on the same model
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high", "_p")


@dataclass(frozen=True)
class Cell:
    """One child run's evaluation: what the parent summarises."""

    split: int
    seed: int
    metrics: dict[str, float]  # test/acc, test/<scorer>/<metric>, ...
    scores: dict[str, np.ndarray]  # scorer -> test scores (higher = more anomalous)
    is_anomaly: np.ndarray  # the test images' labels, in the scores' order
    known_classes: tuple[str, ...] = ()  # the split's known classes
    run_id: str = ""  # the child run it was read from

    @property
    def repeat(self) -> tuple[int, int]:
        return self.split, self.seed


# Row -> its cells, one per repeat, in the same repeat order for every row. A row is a method (under the
# study's reference augmentation policy), or `<method>.<policy>`: that method under another policy.
Results = dict[str, list[Cell]]


class Bootstrap:
    """The resampled metrics of every (method, scorer), averaged over repeats, computed on demand."""

    def __init__(self, results: Results, n_resamples: int):
        self.results, self.n = results, n_resamples
        self._draws: dict[tuple[int, int], Resamples] = {}
        self._values: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def __call__(self, method: str, scorer: str) -> dict[str, np.ndarray] | None:
        cells = self.results[method]
        if not self.n or not cells or any(scorer not in c.scores for c in cells):
            return None
        if (method, scorer) not in self._values:
            per_repeat = [resampled_metrics(c.scores[scorer], self._draw(c)) for c in cells]
            self._values[method, scorer] = {m: np.mean([r[m] for r in per_repeat], axis=0) for m in METRICS}
        return self._values[method, scorer]

    def _draw(self, cell: Cell) -> Resamples:
        if cell.repeat not in self._draws:
            self._draws[cell.repeat] = Resamples.draw(cell.is_anomaly, self.n, cell.seed)
        draw = self._draws[cell.repeat]
        if not np.array_equal(draw.is_anomaly, cell.is_anomaly):
            raise ValueError(f"the cells of split {cell.split} seed {cell.seed} hold different test images; "
                             "their differences cannot be paired")
        return draw


def spread_metrics(name: str, values: np.ndarray) -> dict[str, float]:
    out = {name: float(values.mean())}
    if len(values) > 1:
        spread = Spread.of(values)
        out |= {f"{name}_std": spread.std} | spread.metrics(name)
    return out


def paired_gap(results: Results, boot: Bootstrap, name: str, lhs: tuple[str, str],
         rhs: tuple[str, str]) -> dict[str, float]:
    """lhs AUROC minus rhs AUROC: per repeat (mean, and spread over repeats) and paired over resamples."""
    pairs = list(zip(results[lhs[0]], results[rhs[0]], strict=True))
    if any(a.repeat != b.repeat for a, b in pairs):
        raise ValueError(f"{lhs[0]} and {rhs[0]} hold different repeats; a paired gap needs the same test images")
    values = np.array([a.metrics[f"test/{lhs[1]}/auroc"] - b.metrics[f"test/{rhs[1]}/auroc"] for a, b in pairs])
    out = spread_metrics(name, values)
    left, right = boot(*lhs), boot(*rhs)
    if left is not None and right is not None:
        out |= difference_metrics(name, left["auroc"] - right["auroc"])
    return out


def evaluation_intervals(scores: dict[str, np.ndarray], is_anomaly: np.ndarray, metrics: dict[str, float],
                         n_resamples: int, seed: int) -> dict[str, float]:
    """One evaluation's intervals: `test/<scorer>/<metric>_ci_low/_ci_high` for every scorer and metric, and
    `test/<scorer>/vs_max_logit` (AUROC difference) with its paired interval and p-value for every
    deployable scorer; the same draw that a study's parent makes for this seed's test images."""
    cell = Cell(0, seed, metrics, scores, is_anomaly)
    boot = Bootstrap({"model": [cell]}, n_resamples)
    out: dict[str, float] = {}
    for scorer in scores:
        for metric, values in (boot("model", scorer) or {}).items():
            out |= interval_metrics(f"test/{scorer}/{metric}", values)
    for scorer in scores:
        if scorer != BASELINE and BASELINE in scores and not is_oracle(scorer):
            out |= paired_gap({"model": [cell]}, boot, f"test/{scorer}/vs_{BASELINE}", ("model", scorer),
                              ("model", BASELINE))
    return out
