"""Uncertainty of the test metrics: a stratified percentile bootstrap over test images, vectorised.

A resample draws, with replacement, as many nominal images from the nominal test images and as many
anomalies from the anomalies as the test split holds (stratified: every resample keeps the split's
anomaly ratio, so AUPR stays comparable). A resample is stored as counts, how often each test image was
drawn; one (resamples x images) count matrix serves every scorer of a model and, as the resamples follow
the seed and the test images alone, every model evaluated on the same test images: differences of two
scorers, or of two models, are *paired* (both sides read the same resampled images).

Metrics on a resample are those of `metrics.anomaly_metrics` with each image weighted by its count,
computed from ranks: the scores are sorted once, tied scores grouped, and per resample the counts of
nominal and anomaly images per group give AUROC (Mann-Whitney, ties counted half), average precision
with anomalies or nominals positive (scikit-learn's step sum over distinct thresholds) and the
false-positive rate at 95 % true-positive rate. With every count 1 they equal scikit-learn's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95  # coverage of every interval: the 2.5 and 97.5 percentiles
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


@dataclass(frozen=True)
class Resamples:
    """A stratified bootstrap of one test set: how often each nominal image (rows of `nominal`) and each
    anomaly (rows of `anomaly`) is drawn in each resample (columns), in the test set's order within each."""

    is_anomaly: np.ndarray  # the test set's labels, which the counts' rows follow
    nominal: np.ndarray  # (n_nominal, n_resamples) int32; every column sums to n_nominal
    anomaly: np.ndarray  # (n_anomaly, n_resamples) int32; every column sums to n_anomaly

    @classmethod
    def draw(cls, is_anomaly: np.ndarray, n_resamples: int, seed: int) -> Resamples:
        rng = np.random.default_rng(seed)
        nominal = _counts(rng, int((~is_anomaly).sum()), n_resamples)
        return cls(is_anomaly, nominal, _counts(rng, int(is_anomaly.sum()), n_resamples))

    def sharing_nominal(self, n_anomaly: int, seed: int) -> Resamples:
        """The resamples of another test set: these nominal images, then `n_anomaly` other anomalies. The
        nominal counts are these (a joint bootstrap: metrics of both sets move with the shared nominal images,
        so their difference is paired); the anomalies are drawn with `seed`."""
        is_anomaly = np.r_[np.zeros(len(self.nominal), bool), np.ones(n_anomaly, bool)]
        return Resamples(is_anomaly, self.nominal, _counts(np.random.default_rng(seed), n_anomaly, self.size))

    @property
    def size(self) -> int:
        return self.nominal.shape[1]


def _counts(rng: np.random.Generator, size: int, n_resamples: int) -> np.ndarray:
    """(size, n_resamples) int32: how often each of `size` images is drawn in each resample of `size` draws."""
    drawn = rng.integers(0, size, size=(n_resamples, size)) * n_resamples + np.arange(n_resamples)[:, None]
    return np.bincount(drawn.ravel(), minlength=size * n_resamples).reshape(size, n_resamples).astype(np.int32)


def _cumulative(counts: np.ndarray) -> np.ndarray:
    """Cumulative counts with a leading zero row: row k = how many of the first k images were drawn."""
    out = np.zeros((len(counts) + 1, counts.shape[1]), dtype=np.int32)
    np.cumsum(counts, axis=0, out=out[1:])
    return out


def resampled_metrics(scores: np.ndarray, resamples: Resamples) -> dict[str, np.ndarray]:
    """Each metric of `METRICS` on every resample: name -> (n_resamples,) values."""
    is_anomaly = resamples.is_anomaly
    nominal_order, anomaly_order = np.argsort(scores[~is_anomaly]), np.argsort(scores[is_anomaly])
    nominal_scores, anomaly_scores = scores[~is_anomaly][nominal_order], scores[is_anomaly][anomaly_order]
    nominal_w, anomaly_w = resamples.nominal[nominal_order], resamples.anomaly[anomaly_order]
    nominal_upto, anomaly_upto = _cumulative(nominal_w), _cumulative(anomaly_w)
    n_nominal, n_anomaly = float(len(nominal_scores)), float(len(anomaly_scores))
    # Images not drawn in a resample have weight 0; the maxima below only keep their 0/0 ratios finite.
    # per anomaly: drawn nominals below its score, and below or tied with it
    below = nominal_upto[np.searchsorted(nominal_scores, anomaly_scores, side="left")]
    tied_or_below = (nominal_upto[np.searchsorted(nominal_scores, anomaly_scores, side="right")]
                     if len(np.unique(scores)) < len(scores) else below)
    # Mann-Whitney: each anomaly beats the nominals below it and half of those it ties with
    auroc = np.einsum("ib,ib->b", anomaly_w, below + tied_or_below, dtype=np.float64) / (2 * n_anomaly * n_nominal)
    # a threshold at an anomaly's score flags the images scored at least as high
    flagged_anomaly = n_anomaly - anomaly_upto[np.searchsorted(anomaly_scores, anomaly_scores, side="left")]
    flagged_nominal = n_nominal - below
    precision_out = flagged_anomaly / np.maximum(flagged_anomaly + flagged_nominal, 1)
    aupr_out = np.einsum("ib,ib->b", anomaly_w, precision_out) / n_anomaly
    # nominals positive with the scores negated: a threshold at a nominal's score keeps those at most as high
    kept_nominal = nominal_upto[np.searchsorted(nominal_scores, nominal_scores, side="right")]
    kept_anomaly = anomaly_upto[np.searchsorted(anomaly_scores, nominal_scores, side="right")]
    precision_in = kept_nominal / np.maximum(kept_nominal + kept_anomaly, 1)
    aupr_in = np.einsum("jb,jb->b", nominal_w, precision_in) / n_nominal
    # the highest threshold that flags 95 % of the anomalies (flagged counts fall as the score rises), and
    # the nominals it flags too
    highest = (flagged_anomaly >= 0.95 * n_anomaly).sum(axis=0) - 1
    fpr95 = flagged_nominal[highest, np.arange(resamples.size)] / n_nominal
    return {"auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out, "fpr95": fpr95}


def resampled_oscr(scores: np.ndarray, resamples: Resamples, correct: np.ndarray) -> np.ndarray:
    """`metrics.oscr` on every resample: the AUROC of the correctly classified known images against the
    anomalies, weighted by their counts, times the share of correct known images (with the fixed
    denominators of `resampled_metrics`, that is the count-weighted OSCR). `correct`: per test image."""
    right = correct[~resamples.is_anomaly]
    if not right.any():
        return np.zeros(resamples.size)
    n_right, n_anomaly = int(right.sum()), len(resamples.anomaly)
    subset = Resamples(np.r_[np.zeros(n_right, bool), np.ones(n_anomaly, bool)], resamples.nominal[right],
                       resamples.anomaly)
    kept = np.r_[scores[~resamples.is_anomaly][right], scores[resamples.is_anomaly]]
    return resampled_metrics(kept, subset)["auroc"] * n_right / len(right)


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The central `LEVEL` percentile interval of bootstrap values."""
    low, high = np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def two_sided_p(differences: np.ndarray) -> float:
    """Bootstrap p-value of a difference: twice the fraction of resamples on the far side of zero from the
    bulk (at most 1). A difference that is 0 on every resample has p = 1."""
    below, above = float((differences <= 0).mean()), float((differences >= 0).mean())
    return min(1.0, 2 * min(below, above))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (family-wise error control), in their order."""
    return [float(p) for p in multipletests(p_values, method="holm")[1]] if p_values else []


def interval_metrics(name: str, values: np.ndarray) -> dict[str, float]:
    """`<name>_ci_low`, `<name>_ci_high` of a metric's bootstrap values."""
    low, high = percentile_interval(values)
    return {f"{name}_ci_low": low, f"{name}_ci_high": high}


def difference_metrics(name: str, differences: np.ndarray) -> dict[str, float]:
    """The interval and two-sided p-value of a paired bootstrap difference."""
    return interval_metrics(name, differences) | {f"{name}_p": two_sided_p(differences)}


@dataclass(frozen=True)
class Spread:
    """Between-run spread of one quantity over independent runs (seeds, splits)."""

    mean: float
    std: float  # sample standard deviation (ddof 1)
    ci95: float  # half-width of the Student-t 95 % interval of the mean

    @classmethod
    def of(cls, values: np.ndarray) -> Spread:
        n = len(values)
        std = float(values.std(ddof=1))
        return cls(float(values.mean()), std, float(scipy_stats.t.ppf((1 + LEVEL) / 2, n - 1) * std / np.sqrt(n)))

    def metrics(self, name: str) -> dict[str, float]:
        return {f"{name}_mean": self.mean, f"{name}_std": self.std, f"{name}_ci95": self.ci95}
