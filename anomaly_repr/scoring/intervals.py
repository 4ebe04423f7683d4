"""Bootstrap intervals of one evaluation and of a study's cells: one stratified bootstrap of a (split,
seed)'s test images (`stats.Resamples`, seeded by the seed) serves every scorer of every model evaluated on
them, so every difference is *paired*. Over several repeats (seeds, splits), a resample's value is the mean
of the repeats' values on their own resamples: the interval of the mean over test-image noise; the spread
between runs (`_mean`, `_std`, `_ci95`: a Student-t interval) adds the seed and split noise.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from anomaly_repr.scoring.scorers import is_oracle
from anomaly_repr.scoring.stats import (
    METRICS,
    Resamples,
    Spread,
    difference_metrics,
    holm,
    interval_metrics,
    resampled_metrics,
    resampled_oscr,
)

BASELINE = "max_logit"  # every scorer is also compared with this one on the same model
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high", "_p", "_p_holm")


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
    far_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # ood set -> scorer -> its
    #                                                     images' scores (scored against the nominal test images)
    correct: np.ndarray | None = None  # per test image: classified right (False for anomalies); None: no classes
    select: dict[str, float] = field(default_factory=dict)  # scorer -> validation AUROC (`select/<scorer>/auroc`)

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

    def far(self, method: str, scorer: str, name: str) -> dict[str, np.ndarray] | None:
        """The resampled metrics of a far set's images against the nominal test images, averaged over
        repeats; each repeat resamples the nominal images exactly as `__call__` does (a joint bootstrap)."""
        cells = self.results[method]
        if not self.n or not cells or any(scorer not in c.far_scores.get(name, {}) for c in cells):
            return None
        per_repeat = []
        for c in cells:
            far = c.far_scores[name][scorer]
            draw = self._draw(c).sharing_nominal(len(far), zlib.crc32(f"{c.seed}/{name}".encode()))
            per_repeat.append(resampled_metrics(np.r_[c.scores[scorer][~c.is_anomaly], far], draw))
        return {m: np.mean([r[m] for r in per_repeat], axis=0) for m in METRICS}

    def oscr(self, method: str, scorer: str) -> np.ndarray | None:
        cells = self.results[method]
        if not self.n or not cells or any(scorer not in c.scores or c.correct is None for c in cells):
            return None
        return np.mean([resampled_oscr(c.scores[scorer], self._draw(c), c.correct) for c in cells
                        if c.correct is not None], axis=0)

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


def far_metrics(results: Results, boot: Bootstrap, method: str, path: str) -> dict[str, float]:
    """Every far set's intervals and its `near_harder` gap for one row of `results`: `path` places the set
    and the scorer in the metric name (`test/ood/{set}/{scorer}` for a run, `test/ood/{set}/<model>/{scorer}`
    for a study). near_harder = the set's AUROC minus the held-out classes' AUROC (positive: the open-category
    problem is the harder one), over repeats, with a joint bootstrap interval and p-value."""
    cells, out = results[method], dict[str, float]()
    for name in cells[0].far_scores if cells else []:
        for scorer in cells[0].far_scores[name]:
            key = path.format(set=name, scorer=scorer)
            far, near = boot.far(method, scorer, name), boot(method, scorer)
            for metric, values in (far or {}).items():
                out |= interval_metrics(f"{key}/{metric}", values)
            values = np.array([c.metrics[far_key(name, scorer, "auroc")] - c.metrics[f"test/{scorer}/auroc"]
                               for c in cells])
            out |= spread_metrics(f"{key}/near_harder", values)
            if far is not None and near is not None:
                out |= difference_metrics(f"{key}/near_harder", far["auroc"] - near["auroc"])
    return out


def far_key(name: str, scorer: str, metric: str) -> str:
    """A run's metric of a far set: `test/ood/<set>/<scorer>/<metric>`."""
    return f"test/ood/{name}/{scorer}/{metric}"


def evaluation_intervals(scores: dict[str, np.ndarray], is_anomaly: np.ndarray, metrics: dict[str, float],
                         n_resamples: int, seed: int, far_scores: dict[str, dict[str, np.ndarray]] | None = None,
                         correct: np.ndarray | None = None) -> dict[str, float]:
    """One evaluation's intervals: `test/<scorer>/<metric>_ci_low/_ci_high` for every scorer and metric (OSCR
    too, given `correct`), `test/<scorer>/vs_max_logit` (AUROC difference) with its paired interval and
    p-value, raw and Holm-adjusted over the run's scorers (`_p_holm`), for every deployable scorer, and each
    far set's intervals and near_harder gap (`far_metrics`); the same draws that a study's parent makes for
    this seed's test images."""
    cell = Cell(0, seed, metrics, scores, is_anomaly, far_scores=far_scores or {}, correct=correct)
    boot = Bootstrap({"model": [cell]}, n_resamples)
    out: dict[str, float] = far_metrics({"model": [cell]}, boot, "model", "test/ood/{set}/{scorer}")
    for scorer in scores:
        for metric, values in (boot("model", scorer) or {}).items():
            out |= interval_metrics(f"test/{scorer}/{metric}", values)
        if (oscr := boot.oscr("model", scorer)) is not None:
            out |= interval_metrics(f"test/{scorer}/oscr", oscr)
    for scorer in scores:
        if scorer != BASELINE and BASELINE in scores and not is_oracle(scorer):
            out |= paired_gap({"model": [cell]}, boot, f"test/{scorer}/vs_{BASELINE}", ("model", scorer),
                              ("model", BASELINE))
    versus = [k.removesuffix("_p") for k in out if k.endswith(f"/vs_{BASELINE}_p")]  # one family: Holm
    return out | {f"{name}_p_holm": p for name, p in zip(versus, holm([out[f"{n}_p"] for n in versus]), strict=True)}
