"""Study summaries: gaps are differences of their cells, with paired bootstrap intervals; spread over repeats;
the tables and the chart show what the summary holds."""

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from anomaly_repr.scoring.intervals import Cell, evaluation_intervals
from anomaly_repr.scoring.metrics import anomaly_metrics
from anomaly_repr.scoring.stats import Resamples, resampled_metrics
from anomaly_repr.study.report import auroc_chart, auroc_table, by_split_table, gap_table, markdown_report
from anomaly_repr.study.summary import choices, significant, summarise

IS_ANOMALY = np.r_[np.zeros(300, bool), np.ones(200, bool)]


def simulated(separations: dict[str, float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scores that separate the anomalies of IS_ANOMALY by `separations[name]` standard deviations."""
    noise = rng.normal(size=len(IS_ANOMALY))
    return {name: noise + d * IS_ANOMALY + 0.3 * rng.normal(size=len(IS_ANOMALY)) for name, d in separations.items()}


def cell(separations: dict[str, float], split: int = 0, seed: int = 0, acc: float = 0.9,
         val: dict[str, float] | None = None) -> Cell:
    """A child whose scorer `name` separates anomalies by `separations[name]` standard deviations; its metrics
    are computed from its scores, as an evaluation does, and its validation AUROCs from validation images
    separated by `val` (default: as the test images) for every non-oracle scorer."""
    rng = np.random.default_rng(100 * split + seed)
    scores = simulated(separations, rng)
    metrics = {f"test/{name}/{k}": v for name, s in scores.items() for k, v in anomaly_metrics(s, IS_ANOMALY).items()}
    val_scores = simulated({n: d for n, d in (val or separations).items() if not n.startswith("oracle_")}, rng)
    select = {name: anomaly_metrics(s, IS_ANOMALY)["auroc"] for name, s in val_scores.items()}
    return Cell(split, seed, metrics | {"test/acc": acc}, scores, IS_ANOMALY, ("a", "b"), select=select)


CLASSIFIER = {"msp": 0.6, "entropy": 0.65, "max_logit": 0.8, "energy": 0.75, "knn": 1.0, "oracle_rf": 1.3}
ORACLE_REP = {"oracle_rf": 2.0}


def study(repeats=((0, 0),)):
    return {"classifier": [cell(CLASSIFIER, *r) for r in repeats],
            "oracle_rep": [cell(ORACLE_REP, *r) for r in repeats]}


def auroc(c: Cell, name: str) -> float:
    return c.metrics[f"test/{name}/auroc"]


def test_gaps_are_differences_of_cells_with_paired_intervals():
    results = study()
    s = summarise(results, 300)
    classifier, rep = results["classifier"][0], results["oracle_rep"][0]
    picked = choices(results)  # on the validation AUROCs
    assert picked["q1_best_classic"] == max(("msp", "entropy", "max_logit", "energy"), key=classifier.select.get)
    classic = auroc(classifier, picked["q1_best_classic"])
    assert s["test/q1_gap"] == pytest.approx(auroc(classifier, "oracle_rf") - classic)
    assert s["test/q2_gap"] == pytest.approx(auroc(rep, "oracle_rf") - auroc(classifier, "oracle_rf"))
    assert picked["q1_best_deployable"] == "knn" and s["test/q1_best_deployable"] == auroc(classifier, "knn")
    assert 0 < s["test/q1_closed"] < 1
    for gap in ("test/q1_gap", "test/q2_gap", "test/classifier/knn/vs_max_logit"):
        assert s[f"{gap}_ci_low"] < s[gap] < s[f"{gap}_ci_high"]
        assert significant(s, gap) and s[f"{gap}_p"] < 0.05  # separations this far apart are not noise
    assert "test/classifier/max_logit/auroc_std" not in s  # one repeat: no spread


def test_a_single_repeat_has_the_intervals_its_own_evaluation_logged():
    c = study()["classifier"][0]
    s = summarise({"classifier": [c]}, 200)
    own = evaluation_intervals(c.scores, c.is_anomaly, c.metrics, 200, c.seed)
    for key, value in own.items():
        assert s[key.replace("test/", "test/classifier/", 1)] == pytest.approx(value), key


def test_the_paired_interval_is_narrower_than_the_unpaired_one():
    # Two scorers that share most of their noise: pairing cancels it, so the difference's interval is far
    # narrower than the spread of the two intervals that ignore the pairing.
    c = study()["classifier"][0]
    s = summarise({"classifier": [c]}, 300)
    paired = s["test/classifier/energy/vs_max_logit_ci_high"] - s["test/classifier/energy/vs_max_logit_ci_low"]
    energy = s["test/classifier/energy/auroc_ci_high"] - s["test/classifier/energy/auroc_ci_low"]
    assert paired < 0.7 * energy


def test_repeats_give_mean_std_and_a_t_interval_and_pool_the_resamples():
    results = study(((0, 0), (0, 1), (1, 0)))
    s = summarise(results, 200)
    values = np.array([auroc(c, "max_logit") for c in results["classifier"]])
    assert s["test/classifier/max_logit/auroc"] == pytest.approx(values.mean())
    assert s["test/classifier/max_logit/auroc_mean"] == pytest.approx(values.mean())
    assert s["test/classifier/max_logit/auroc_std"] == pytest.approx(values.std(ddof=1))
    assert s["test/classifier/max_logit/auroc_ci95"] == pytest.approx(4.3027 * values.std(ddof=1) / np.sqrt(3),
                                                                      rel=1e-3)
    gaps = [auroc(c, "oracle_rf") - auroc(c, "max_logit") for c in results["classifier"]]
    assert s["test/q1_gap"] == pytest.approx(np.mean(gaps))
    assert s["test/q1_gap_std"] == pytest.approx(np.std(gaps, ddof=1))
    # the bootstrap of the mean: each repeat resampled on its own seed, the resamples averaged
    pooled = np.mean([resampled_metrics(c.scores["max_logit"], Resamples.draw(c.is_anomaly, 200, c.seed))["auroc"]
                      for c in results["classifier"]], axis=0)
    assert s["test/classifier/max_logit/auroc_ci_low"] == pytest.approx(np.quantile(pooled, 0.025))


def test_no_bootstrap_means_no_intervals():
    s = summarise(study(), 0)
    assert "test/q1_gap" in s and not any(k.endswith(("_ci_low", "_p")) for k in s)


def test_tables_show_intervals_and_mark_the_gaps_that_exclude_zero():
    results = study()
    s = summarise(results, 200)
    table = auroc_table(results, s)
    assert list(table.index) == ["classifier", "oracle_rep"]
    assert list(table.columns)[:4] == ["msp", "entropy", "max_logit", "energy"]  # tiers read left to right
    assert list(table.columns)[-1] == "oracle_rf"
    ml = s["test/classifier/max_logit/auroc"]
    assert table.loc["classifier", "max_logit"] == (f"{ml:.3f} [{s['test/classifier/max_logit/auroc_ci_low']:.3f}, "
                                                    f"{s['test/classifier/max_logit/auroc_ci_high']:.3f}]")
    assert table.loc["oracle_rep", "max_logit"] == ""
    gaps = gap_table(s, 1)
    assert gaps.loc["test/q1_gap", "bootstrap interval excludes 0"] == "*"
    assert gaps.loc["test/q1_gap", "95 % t-interval over runs"] == "unknown (one run)"
    report = markdown_report({"dataset": "cifar10", "commit": "abc"}, results, s)
    assert report.startswith("**dataset**: cifar10") and "| gap |" in report and "| model | msp |" in report
    several = study(((0, 0), (0, 1)))
    assert " +- " in auroc_table(several, summarise(several, 50)).loc["classifier", "knn"]


def test_by_split_table_averages_each_split_over_its_seeds():
    results = study(((0, 0), (0, 1), (2, 0)))
    table = by_split_table(results)
    mine = [c for c in results["classifier"] if c.split == 0]
    assert table.loc[("classifier", 0), "knn"] == pytest.approx(np.mean([auroc(c, "knn") for c in mine]))
    assert table.loc[("classifier", 2), "knn"] == pytest.approx(auroc(results["classifier"][2], "knn"))


def test_the_chart_draws_every_cell_with_its_interval_one_panel_per_model():
    results = study()
    summary = summarise(results, 100)
    fig = auroc_chart(results, summary, "t")
    classifier, oracle_rep = fig.axes
    assert classifier.get_title() == "classifier" and oracle_rep.get_title() == "oracle_rep"
    assert len(classifier.patches) == 6 and len(oracle_rep.patches) == 1
    bars = {t.get_text(): p.get_width() for t, p in zip(classifier.get_yticklabels(), classifier.patches, strict=True)}
    assert bars == pytest.approx({s: summary[f"test/classifier/{s}/auroc"] for s in CLASSIFIER})
    [errorbars] = [c for c in classifier.containers if isinstance(c, ErrorbarContainer)]
    arms = errorbars.lines[2][0].get_segments()  # one interval per bar, drawn to its ends
    assert [tuple(seg[:, 0]) for seg in arms][0] == pytest.approx(
        (summary["test/classifier/msp/auroc_ci_low"], summary["test/classifier/msp/auroc_ci_high"]))


def test_a_policy_row_is_measured_against_its_own_method_even_without_a_classifier():
    stronger = {name: d + 0.4 for name, d in CLASSIFIER.items()}
    s = summarise({"hybrid": [cell(CLASSIFIER)], "hybrid.trivialaugment": [cell(stronger, seed=0, acc=0.93)]}, 200)
    gain = s["test/hybrid.trivialaugment/max_logit/auroc"] - s["test/hybrid/max_logit/auroc"]
    assert s["test/gain/hybrid.trivialaugment/max_logit"] == pytest.approx(gain) and gain > 0
    assert s["test/gain/hybrid.trivialaugment/max_logit_ci_low"] > 0  # paired: the same test images
    best = s["test/gain/hybrid.trivialaugment/best_score"]  # best deployable against best deployable: knn both
    assert best == pytest.approx(s["test/hybrid.trivialaugment/knn/auroc"] - s["test/hybrid/knn/auroc"])
    assert s["test/gain/hybrid.trivialaugment/acc"] == pytest.approx(0.03)
    assert "test/q1_gap" not in s  # no reference method in this study
