"""A study's honest statistics: "best" scorers chosen on validation data, Holm-adjusted p-values, intervals
between runs, and scorers ranked across runs (Friedman, Conover-Holm, the critical-difference figure)."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats as scipy_stats
from test_report import CLASSIFIER, IS_ANOMALY, ORACLE_REP, cell

from anomaly_repr.scoring.intervals import Cell, evaluation_intervals
from anomaly_repr.study.ranks import critical_difference, rank_scorers, rank_table
from anomaly_repr.study.report import gap_table, markdown_report
from anomaly_repr.study.summary import choices, holm_adjusted, summarise

CLASSIC = ("msp", "entropy", "max_logit", "energy")


def test_the_best_scores_are_chosen_on_validation_where_the_test_argmax_differs():
    # on test images energy and msp beat max logit and knn; on validation images max logit and fdbd lead
    test = CLASSIFIER | {"energy": 1.0, "msp": 0.9, "fdbd": 0.6, "knn": 1.1}
    val = CLASSIFIER | {"max_logit": 1.2, "energy": 0.5, "fdbd": 1.6, "knn": 0.7}
    results = {"classifier": [cell(test, val=val)], "oracle_rep": [cell(ORACLE_REP)]}
    s = summarise(results, 300)
    c = results["classifier"][0]
    aurocs = {n: c.metrics[f"test/{n}/auroc"] for n in test}
    assert max(CLASSIC, key=aurocs.get) == "energy" and max(aurocs, key=aurocs.get) == "oracle_rf"
    picked = choices(results)
    assert picked == {"best_deployable/classifier": "fdbd", "q1_best_classic": "max_logit",
                      "q1_best_deployable": "fdbd"}
    assert s["test/q1_gap"] == pytest.approx(aurocs["oracle_rf"] - aurocs["max_logit"])
    assert s["test/q1_gap_max_logit"] == pytest.approx(aurocs["oracle_rf"] - aurocs["max_logit"])
    assert s["test/q1_gap_test_argmax"] == pytest.approx(aurocs["oracle_rf"] - aurocs["energy"])
    assert s["test/q1_best_deployable"] == aurocs["fdbd"]
    assert s["test/q1_best_deployable_test_argmax"] == aurocs["knn"]
    assert s["test/q1_closed"] == pytest.approx((aurocs["fdbd"] - aurocs["max_logit"]) / s["test/q1_gap"])
    # the validation choices carry a paired interval; the test-argmax readings carry none
    assert "test/q1_gap_ci_low" in s and "test/q1_gap_max_logit_p" in s
    assert not any(k.startswith(("test/q1_gap_test_argmax_", "test/q1_best_deployable_test_argmax_")) for k in s)
    assert "test/q1_gap_test_argmax" not in gap_table(s, 1).index


def test_cells_without_validation_aurocs_choose_nothing():
    bare = Cell(**{**cell(CLASSIFIER).__dict__, "select": {}})
    s = summarise({"classifier": [bare], "oracle_rep": [cell(ORACLE_REP)]}, 100)
    assert choices({"classifier": [bare]}) == {}
    assert "test/q1_gap" not in s and "test/q1_gap_max_logit" in s and "test/q1_gap_test_argmax" in s


def test_holm_against_a_hand_computed_family():
    raw = {"test/q1_gap": 0.01, "test/q2_gap": 0.04, "test/gain/hybrid/oracle_rf": 0.03,
           "test/gain/hybrid/best_score": 0.20}
    summary = {name: 0.1 for name in raw} | {f"{name}_p": p for name, p in raw.items()}
    # a family per model: its scorers against its own max logit, adjusted on their own
    summary |= {"test/classifier/knn/vs_max_logit": 0.0, "test/classifier/knn/vs_max_logit_p": 0.02,
                "test/classifier/msp/vs_max_logit": 0.0, "test/classifier/msp/vs_max_logit_p": 0.5,
                "test/hybrid/knn/vs_max_logit": 0.0, "test/hybrid/knn/vs_max_logit_p": 0.02}
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1: 0.04, 0.09, 0.08, 0.20, then kept non-decreasing
    assert holm_adjusted(summary) == pytest.approx({
        "test/q1_gap_p_holm": 0.04, "test/gain/hybrid/oracle_rf_p_holm": 0.09, "test/q2_gap_p_holm": 0.09,
        "test/gain/hybrid/best_score_p_holm": 0.20,
        "test/classifier/knn/vs_max_logit_p_holm": 0.04, "test/classifier/msp/vs_max_logit_p_holm": 0.5,
        "test/hybrid/knn/vs_max_logit_p_holm": 0.02})
    # the hybrid's alias of its oracle gain is the same hypothesis: not a fifth member, and the same adjusted p
    with_alias = summary | {"test/q3_gap": 0.1, "test/q3_gap_p": 0.03}
    assert holm_adjusted(with_alias) == pytest.approx(holm_adjusted(summary) | {"test/q3_gap_p_holm": 0.09})


def test_the_gap_table_shows_the_hybrids_oracle_gain_once_under_both_names():
    summary = {"test/gain/hybrid/oracle_rf": 0.02, "test/gain/hybrid/oracle_rf_p": 0.03, "test/q3_gap": 0.02,
               "test/q3_gap_p": 0.03, "test/q1_gap": 0.1, "test/q1_gap_p": 0.01}
    summary |= holm_adjusted(summary)
    table = gap_table(summary, 1)
    assert list(table.index) == ["test/q3_gap (= test/gain/hybrid/oracle_rf)", "test/q1_gap"]
    assert table.loc["test/q3_gap (= test/gain/hybrid/oracle_rf)", "p (Holm)"] == "0.030"
    # a study without the alias keeps the gain under its own name
    assert "test/gain/hybrid/oracle_rf" in gap_table({"test/gain/hybrid/oracle_rf": 0.02}, 1).index


def hand_made(gaps: list[float]) -> dict[str, list[Cell]]:
    """Runs whose q1 gap (oracle_rf - max_logit, the validation choice) is each of `gaps`."""
    def run(i: int, gap: float) -> Cell:
        metrics = {"test/max_logit/auroc": 0.8, "test/msp/auroc": 0.7, "test/oracle_rf/auroc": 0.8 + gap}
        scores = {name.split("/")[1]: np.zeros(len(IS_ANOMALY)) for name in metrics}  # unread: no resamples
        return Cell(i, 0, metrics, scores, IS_ANOMALY, select={"max_logit": 0.9, "msp": 0.8})
    rep = [Cell(i, 0, {"test/oracle_rf/auroc": 0.99}, {"oracle_rf": np.zeros(len(IS_ANOMALY))}, IS_ANOMALY)
           for i in range(len(gaps))]
    return {"classifier": [run(i, g) for i, g in enumerate(gaps)], "oracle_rep": rep}


def test_the_gap_table_shows_the_t_interval_between_runs_and_says_when_it_is_unknown():
    s = summarise(hand_made([0.10, 0.14, 0.12]), 0)
    half = scipy_stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)  # mean 0.12, sd 0.02 over 3 runs
    assert s["test/q1_gap"] == pytest.approx(0.12) and s["test/q1_gap_ci95"] == pytest.approx(half)
    table = gap_table(s, 3)
    assert table.loc["test/q1_gap", "95 % t-interval over runs"] == f"[{0.12 - half:+.3f}, {0.12 + half:+.3f}]"
    assert table.loc["test/q1_gap", "95 % bootstrap interval (test images)"] == ""  # no resamples asked for
    one = gap_table(summarise(hand_made([0.10]), 0), 1)
    assert one.loc["test/q1_gap", "95 % t-interval over runs"] == "unknown (one run)"


def test_the_report_shows_both_intervals_and_the_holm_p():
    results = {"classifier": [cell(CLASSIFIER, seed=k) for k in range(2)],
               "oracle_rep": [cell(ORACLE_REP, seed=k) for k in range(2)]}
    s = summarise(results, 200)
    report = markdown_report({"dataset": "x"}, results, s)
    header = next(line for line in report.splitlines() if line.startswith("| gap |"))
    assert {"p", "p (Holm)", "95 % bootstrap interval (test images)", "95 % t-interval over runs"} <= {
        h.strip() for h in header.split("|")}
    row = next(line for line in report.splitlines() if line.startswith("| test/q1_gap |"))
    assert f"{s['test/q1_gap_p_holm']:.3f}" in row and f"{s['test/q1_gap'] + s['test/q1_gap_ci95']:+.3f}" in row


def ranked_study() -> dict[str, list[Cell]]:
    """Six runs of two models in which the scorers keep their order, but for noise."""
    return {model: [cell(CLASSIFIER, split, seed) for split in range(3)] for model, seed in (("classifier", 0),
                                                                                             ("hybrid", 1))}


def test_ranks_and_friedman_match_scipy_and_scikit_posthocs():
    results = ranked_study()
    ranks = rank_scorers(results)
    blocks = [[c.metrics[f"test/{n}/auroc"] for n in CLASSIFIER] for cells in results.values() for c in cells]
    matrix = np.array(blocks)
    assert list(ranks.aurocs.columns) == list(CLASSIFIER) and ranks.aurocs.to_numpy() == pytest.approx(matrix)
    by_hand = np.mean([scipy_stats.rankdata(-row) for row in matrix], axis=0)
    assert ranks.mean_rank.to_dict() == pytest.approx(dict(zip(CLASSIFIER, by_hand, strict=True)))
    assert ranks.mean_rank.index[0] == "oracle_rf" and ranks.mean_rank["oracle_rf"] == 1.0
    statistic, p = scipy_stats.friedmanchisquare(*matrix.T)
    assert (ranks.statistic, ranks.p) == pytest.approx((statistic, p)) and ranks.p < 0.01
    expected = sp.posthoc_conover_friedman(matrix, p_adjust="holm").to_numpy()
    assert ranks.posthoc is not None and ranks.posthoc.to_numpy() == pytest.approx(expected)
    metrics = ranks.metrics()
    assert metrics["ranks/blocks"] == 6 and metrics["ranks/friedman_p"] == pytest.approx(p)
    table = pd.read_csv(__import__("io").StringIO(rank_table(ranks)), index_col="scorer")
    assert table.loc["oracle_rf", "mean_rank"] == 1.0 and table.loc["msp", "p_holm vs oracle_rf"] < 0.05


def test_one_run_has_ranks_but_no_friedman_test():
    ranks = rank_scorers({"classifier": [cell(CLASSIFIER)], "oracle_rep": [cell(ORACLE_REP)]})
    assert len(ranks.aurocs) == 1  # the oracle representation, without a max logit, is no block
    assert ranks.statistic is None and ranks.posthoc is None and "ranks/friedman_p" not in ranks.metrics()


def test_the_critical_difference_figure_joins_the_scorers_it_cannot_separate():
    ranks = rank_scorers(ranked_study())
    before = plt.get_fignums()
    fig = critical_difference(ranks, "digits")
    assert plt.get_fignums() == before  # drawn on its own Figure: nothing left open in pyplot
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert any(label.startswith("oracle_rf") for label in labels) and len(labels) >= len(CLASSIFIER)
    assert fig.get_size_inches()[0] == pytest.approx(8.3)


def test_one_evaluation_adjusts_its_scorers_against_max_logit_as_one_family():
    c = cell(CLASSIFIER)
    out = evaluation_intervals(c.scores, c.is_anomaly, c.metrics, 200, c.seed)
    family = [s for s in CLASSIFIER if s not in ("max_logit", "oracle_rf")]
    raw = [out[f"test/{s}/vs_max_logit_p"] for s in family]
    adjusted = [out[f"test/{s}/vs_max_logit_p_holm"] for s in family]
    order = np.argsort(raw)
    by_hand = np.maximum.accumulate([min(1.0, (len(raw) - i) * raw[j]) for i, j in enumerate(order)])
    assert [adjusted[j] for j in order] == pytest.approx(list(by_hand))
