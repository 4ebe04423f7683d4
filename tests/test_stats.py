import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.special import ndtr

from anomaly_repr.scoring.metrics import anomaly_metrics
from anomaly_repr.scoring.stats import (
    Resamples,
    Spread,
    difference_metrics,
    interval_metrics,
    resampled_metrics,
    two_sided_p,
)


def identity(is_anomaly: np.ndarray) -> Resamples:
    """The one 'resample' that draws every image once: the metrics of the data themselves."""
    ones = np.ones((len(is_anomaly), 1), dtype=np.int32)
    return Resamples(is_anomaly, ones[~is_anomaly], ones[is_anomaly])


@pytest.mark.parametrize("ties", ["none", "rounded", "saturated"])
def test_rank_metrics_equal_scikit_learn(ties):
    rng = np.random.default_rng(3)
    is_anomaly = rng.random(700) < 0.35
    scores = rng.normal(size=700) + is_anomaly
    scores = {"none": scores, "rounded": np.round(scores, 1), "saturated": np.minimum(scores, 0.4)}[ties]
    ours = resampled_metrics(scores, identity(is_anomaly))
    for name, value in anomaly_metrics(scores, is_anomaly).items():
        assert ours[name][0] == pytest.approx(value, abs=1e-12), name


def test_each_resample_equals_the_metrics_of_the_images_it_draws():
    rng = np.random.default_rng(4)
    is_anomaly = rng.random(300) < 0.4
    scores = np.round(rng.normal(size=300) + 0.8 * is_anomaly, 1)
    resamples = Resamples.draw(is_anomaly, 5, seed=0)
    assert (resamples.nominal.sum(axis=0) == (~is_anomaly).sum()).all()  # stratified: sizes kept per class
    assert (resamples.anomaly.sum(axis=0) == is_anomaly.sum()).all()
    ours = resampled_metrics(scores, resamples)
    for b in range(5):
        drawn = np.r_[np.repeat(np.flatnonzero(~is_anomaly), resamples.nominal[:, b]),
                      np.repeat(np.flatnonzero(is_anomaly), resamples.anomaly[:, b])]
        for name, value in anomaly_metrics(scores[drawn], is_anomaly[drawn]).items():
            assert ours[name][b] == pytest.approx(value, abs=1e-12), (name, b)


def test_resamples_follow_the_seed():
    is_anomaly = np.arange(100) % 3 == 0
    assert np.array_equal(Resamples.draw(is_anomaly, 20, 7).nominal, Resamples.draw(is_anomaly, 20, 7).nominal)
    assert not np.array_equal(Resamples.draw(is_anomaly, 20, 7).nominal, Resamples.draw(is_anomaly, 20, 8).nominal)


def test_the_interval_covers_the_true_auroc_at_about_its_nominal_rate():
    # Nominal scores N(0, 1), anomalies N(d, 1): the true AUROC is Phi(d / sqrt 2). 200 seeded test sets of
    # 150 + 100 images, 400 resamples each. The binomial standard error of a 95 % rate over 200 repetitions
    # is 0.015; the percentile bootstrap runs slightly below its nominal rate at these sizes.
    d, covered = 1.0, 0
    truth = float(ndtr(d / np.sqrt(2)))
    rng = np.random.default_rng(0)
    is_anomaly = np.r_[np.zeros(150, bool), np.ones(100, bool)]
    for rep in range(200):
        scores = rng.normal(size=250) + d * is_anomaly
        bounds = interval_metrics("auroc", resampled_metrics(scores, Resamples.draw(is_anomaly, 400, rep))["auroc"])
        covered += bounds["auroc_ci_low"] <= truth <= bounds["auroc_ci_high"]
    assert 0.90 <= covered / 200 <= 0.99


def test_a_scorer_paired_with_itself_differs_by_exactly_zero():
    rng = np.random.default_rng(1)
    is_anomaly = rng.random(400) < 0.5
    aurocs = resampled_metrics(rng.normal(size=400) + is_anomaly, Resamples.draw(is_anomaly, 200, 0))["auroc"]
    assert difference_metrics("gap", aurocs - aurocs) == {"gap_ci_low": 0.0, "gap_ci_high": 0.0, "gap_p": 1.0}


def test_a_real_difference_is_significant_and_a_null_one_is_not():
    rng = np.random.default_rng(2)
    is_anomaly = rng.random(2000) < 0.4
    signal = rng.normal(size=2000) + is_anomaly
    better, worse = signal + 0.3 * rng.normal(size=2000), signal + 1.5 * rng.normal(size=2000)
    resamples = Resamples.draw(is_anomaly, 500, 0)
    b, w = resampled_metrics(better, resamples)["auroc"], resampled_metrics(worse, resamples)["auroc"]
    gap = difference_metrics("gap", b - w)
    assert gap["gap_ci_low"] > 0 and gap["gap_p"] < 0.01
    twin = resampled_metrics(signal + 0.3 * rng.normal(size=2000), resamples)["auroc"]  # same quality as `better`
    assert difference_metrics("gap", b - twin)["gap_p"] > 0.05


def test_two_sided_p_counts_the_far_side_twice():
    assert two_sided_p(np.array([1.0, 2.0, 3.0, -1.0])) == 0.5
    assert two_sided_p(np.array([-1.0, -2.0, 0.5, -3.0])) == 0.5
    assert two_sided_p(np.array([1.0, 2.0])) == 0.0


def test_spread_is_the_student_t_interval_of_the_mean():
    values = np.array([0.86, 0.87, 0.85, 0.88])
    spread = Spread.of(values)
    low, high = scipy_stats.t.interval(0.95, 3, loc=values.mean(), scale=scipy_stats.sem(values))
    assert spread.mean == pytest.approx(values.mean())
    assert spread.std == pytest.approx(values.std(ddof=1))
    assert spread.ci95 == pytest.approx((high - low) / 2)
    assert set(spread.metrics("test/x")) == {"test/x_mean", "test/x_std", "test/x_ci95"}


def test_fpr95_reads_every_threshold_where_nominals_and_anomalies_tie():
    # 20 thresholds, each shared by one nominal and one anomaly: the ROC curve is the diagonal, whose
    # intermediate points scikit-learn drops by default; 95 % of the anomalies are flagged at the 19th
    # threshold from the top, with 19 of the 20 nominals.
    scores = np.repeat(np.arange(20.0), 2)
    is_anomaly = np.tile([False, True], 20)
    assert anomaly_metrics(scores, is_anomaly)["fpr95"] == pytest.approx(0.95)
    assert resampled_metrics(scores, identity(is_anomaly))["fpr95"][0] == pytest.approx(0.95)
