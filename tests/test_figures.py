"""Every figure is drawn at the width of MLflow's artifact preview (830 px) and keeps its text on the canvas;
the AUROC chart's labels do not run into each other."""

import itertools

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from anomaly_repr.engine.figures import fit_preview, histogram_figure, roc_figure
from anomaly_repr.scoring.scorers import SCORERS, tier
from anomaly_repr.study.figures import auroc_panels, near_far_panels

PREVIEW_PX = 830


def scorer_names() -> list[str]:
    """Every registered scorer: the longest layout a study can ask for."""
    return list(SCORERS)


def drawn_texts(fig: Figure) -> list[tuple[Text, tuple[float, float, float, float]]]:
    """Every text the canvas shows, with its box in pixels: titles, labels, the tick labels of ticks inside
    the view (matplotlib keeps the others, undrawn), values written in the panels, legends."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts: list[Text] = [*fig.texts, *(t for legend in fig.legends for t in legend.get_texts())]
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        texts += [t for legend in [ax.get_legend()] if legend for t in legend.get_texts()]
        for axis, view in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = sorted(view)
            texts += [tick.label1 for tick in axis.get_major_ticks() if low <= tick.get_loc() <= high]
    out = []
    for text in texts:
        if text.get_visible() and text.get_text().strip():
            box = text.get_window_extent(renderer)
            out.append((text, (box.x0, box.y0, box.x1, box.y1)))
    return out


def assert_readable(fig: Figure) -> None:
    width, height = fig.canvas.get_width_height()
    assert width <= PREVIEW_PX and height < 4000, (width, height)
    outside = [t.get_text() for t, (x0, y0, x1, y1) in drawn_texts(fig)
               if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1]
    assert not outside, f"text off the {width}x{height} canvas: {outside}"
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches: everything drawn, lines and bars too
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= fig.get_figwidth() + 0.01 \
        and drawn.y1 <= fig.get_figheight() + 0.01, drawn


def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


def study_summary(models: dict[str, list[str]], seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    summary = {}
    for model, scorers in models.items():
        for s in scorers:
            key = f"test/{model}/{s}/auroc"
            value = float(rng.uniform(0.3, 0.99))
            summary |= {key: value, key + "_ci_low": value - 0.02, key + "_ci_high": min(1.0, value + 0.02)}
    return summary


@pytest.mark.parametrize("n_models", [1, 2, 7])
def test_the_auroc_chart_is_preview_wide_with_its_labels_apart(n_models):
    everything = scorer_names()
    models = {f"model{i}" if i else "classifier": everything[: 8 + 2 * i] for i in range(n_models)}
    fig = auroc_panels(models, study_summary(models), "cifar10")
    assert fig.canvas.get_width_height()[0] == PREVIEW_PX
    assert_readable(fig)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(models)
    for ax, scorers in zip(panels, models.values(), strict=True):
        assert [t.get_text() for t in ax.get_yticklabels()] == scorers
        assert len(ax.patches) == len(scorers) and ax.get_xlim() == (0, 1)
        assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_label() == "chance"] == [0.5]
    texts = drawn_texts(fig)
    for (a, box_a), (b, box_b) in itertools.combinations(texts, 2):
        assert not overlaps(box_a, box_b), (a.get_text(), b.get_text())


def test_a_value_label_is_left_out_where_its_interval_would_cross_it():
    models = {"classifier": ["msp", "max_logit"]}
    summary = {"test/classifier/msp/auroc": 0.08, "test/classifier/msp/auroc_ci_low": 0.01,
               "test/classifier/msp/auroc_ci_high": 0.12,
               "test/classifier/max_logit/auroc": 0.8, "test/classifier/max_logit/auroc_ci_low": 0.78,
               "test/classifier/max_logit/auroc_ci_high": 0.82}
    fig = auroc_panels(models, summary, "t")
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.800"]


def test_evaluation_figures_wrap_every_scorer_into_rows_at_the_preview_width():
    rng = np.random.default_rng(0)
    is_anomaly = np.r_[np.zeros(200, bool), np.ones(100, bool)]
    names = scorer_names()
    scores = {name: rng.normal(size=300) + is_anomaly for name in names}
    roc = roc_figure(scores, is_anomaly, {name: 0.75 for name in names})
    assert_readable(roc)
    assert sorted(ax.get_title().split(" ")[0] for ax in roc.axes if ax.get_visible()) == \
        sorted({tier(n) for n in names})
    histograms = histogram_figure(scores, is_anomaly)
    assert_readable(histograms)
    assert len([ax for ax in histograms.axes if ax.get_visible()]) == len(names)


def test_a_wide_figure_from_elsewhere_is_shrunk_to_the_preview_keeping_its_aspect():
    fig = Figure(figsize=(20, 4), dpi=72)
    fig.add_subplot().set_title("wide")
    fit_preview(fig)
    width, height = fig.canvas.get_width_height()
    assert width == PREVIEW_PX and height == pytest.approx(PREVIEW_PX / 5, abs=1)


@pytest.mark.parametrize("n_models", [1, 3])
def test_the_near_far_chart_is_preview_wide_with_its_labels_apart(n_models):
    rng = np.random.default_rng(1)
    scorers = scorer_names()[:12]
    points = {f"model{i}": {name: {s: (float(rng.uniform(0.4, 1)), float(rng.uniform(0.4, 1))) for s in scorers}
                            for name in ("digits", "gaussian", "uniform", "rocks")} for i in range(n_models)}
    fig = near_far_panels(points, "cifar10")
    assert fig.canvas.get_width_height()[0] == PREVIEW_PX
    assert_readable(fig)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(points)
    assert sum(len(c.get_offsets()) for c in panels[0].collections) == 4 * len(scorers)  # every (set, scorer)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:4] == ["digits", "gaussian", "rocks", "uniform"] and "oracle" not in legend  # no oracle scorer
    for (a, box_a), (b, box_b) in itertools.combinations(drawn_texts(fig), 2):
        assert not overlaps(box_a, box_b), (a.get_text(), b.get_text())


def test_score_histograms_of_a_diverged_model_say_so_in_their_panel_and_draw_the_others():
    # a diverged model's scores: near 1e17 with a spread too narrow to split into 40 float bins, or not finite
    rng = np.random.default_rng(0)
    is_anomaly = np.r_[np.zeros(200, bool), np.ones(100, bool)]
    diverged = np.float32(1e17) + rng.integers(0, 2, size=300).astype(np.float32) * 64
    scores = {"max_logit": rng.normal(size=300) + is_anomaly, "energy": diverged,
              "msp": np.where(is_anomaly, np.inf, rng.normal(size=300)), "gen": np.full(300, np.nan)}
    fig = histogram_figure(scores, is_anomaly)
    assert_readable(fig)
    said = {ax.get_title() for ax in fig.axes if any("no finite spread" in t.get_text() for t in ax.texts)}
    assert said == {"energy", "gen"}
    drawn = {ax.get_title(): len(ax.patches) for ax in fig.axes if ax.patches}
    assert drawn == {"max_logit": 80, "msp": 80}  # two histograms of 40 bins each, over the finite scores only
