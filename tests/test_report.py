"""Study summaries: the gaps equal the differences of their cells; mean +- std over repeats."""

import pytest

from anomaly_repr.report import auroc_bar_chart, auroc_table, summarise, to_markdown


def repeat(max_logit: float, rf: float, rep_rf: float) -> dict[str, dict[str, float]]:
    classifier = {"test/acc": 0.9, "test/msp/auroc": max_logit - 0.02, "test/entropy/auroc": max_logit - 0.01,
                  "test/max_logit/auroc": max_logit, "test/energy/auroc": max_logit - 0.03,
                  "test/oracle_rf/auroc": rf, "test/oracle_rf/fpr95": 0.4}
    return {"classifier": classifier, "oracle_rep": {"test/oracle_rf/auroc": rep_rf}}


def study(*repeats):
    return {kind: [r[kind] for r in repeats] for kind in ("classifier", "oracle_rep")}


def test_gaps_are_differences_of_cells():
    s = summarise(study(repeat(0.776, 0.905, 0.987)))
    assert s["test/classifier/max_logit/auroc"] == pytest.approx(0.776)
    rf = s["test/classifier/oracle_rf/auroc"]
    assert s["test/q1_gap"] == pytest.approx(rf - s["test/classifier/max_logit/auroc"])
    assert s["test/q2_gap"] == pytest.approx(s["test/oracle_rep/oracle_rf/auroc"] - rf)
    assert s["test/q1_gap"] == pytest.approx(0.129) and s["test/q2_gap"] == pytest.approx(0.082)
    assert "test/classifier/max_logit/auroc_std" not in s


def test_repeats_give_mean_and_std():
    s = summarise(study(repeat(0.70, 0.80, 0.90), repeat(0.80, 0.90, 0.96)))
    assert s["test/classifier/max_logit/auroc"] == pytest.approx(0.75)
    assert s["test/classifier/max_logit/auroc_std"] == pytest.approx(0.0707107, rel=1e-4)
    table = auroc_table(study(repeat(0.70, 0.80, 0.90), repeat(0.80, 0.90, 0.96)))
    assert list(table.index) == ["classifier", "oracle_rep"]
    assert table.loc["classifier", "max_logit"] == "0.750 +- 0.071"
    assert table.loc["oracle_rep", "max_logit"] == "" and table.loc["oracle_rep", "oracle_rf"] == "0.930 +- 0.042"
    md = to_markdown(table)
    assert md.splitlines()[0].startswith("| model | msp |") and "| oracle_rep |" in md
    fig = auroc_bar_chart(study(repeat(0.70, 0.80, 0.90), repeat(0.80, 0.90, 0.96)), "t")
    assert len(fig.axes[0].patches) == 6  # five classifier cells and one oracle_rep cell
    assert fig.axes[0].get_ylim()[0] == 0  # AUROCs below chance are drawn, beside the chance line
    assert [line.get_ydata()[0] for line in fig.axes[0].get_lines() if line.get_label() == "chance"] == [0.5]
