"""A study's figures, drawn at the width of MLflow's artifact preview (see `engine.figures`): the AUROC
chart (one panel per model, its scorers as horizontal bars grouped by tier, each with its interval) and
the near/far chart (the held-out classes' AUROC against each far set's, per scorer)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from anomaly_repr.engine.figures import DPI, PREVIEW_WIDTH, grid
from anomaly_repr.scoring.scorers import TIERS, tier

PALETTE = {"classic": "tab:blue", "feature": "tab:green", "method": "tab:purple", "oracle": "tab:orange"}
BAR = 0.19  # inches per scorer bar: 7-point labels, one to a row
LABEL_ROOM = 0.12  # AUROC units a value's label takes at the bar's foot, in a panel half the preview wide


def interval(summary: dict[str, float], key: str) -> tuple[float, float]:
    """Distances from the point estimate down and up to the bootstrap interval's ends (or +- std over repeats
    where no interval was computed). A point may sit just outside its percentile interval: no negative arm."""
    low, high = summary.get(key + "_ci_low"), summary.get(key + "_ci_high")
    if low is None or high is None:
        std = summary.get(key + "_std", 0.0)
        return std, std
    return max(0.0, summary[key] - low), max(0.0, high - summary[key])


def auroc_panels(models: dict[str, list[str]], summary: dict[str, float], title: str) -> Figure:
    """`models`: model -> its scorers in tier order. Each panel reads top to bottom; the value is written at
    the bar's foot, inside it, where no interval is drawn; the dotted line is chance."""
    names = list(models)
    columns = 1 if len(names) == 1 else 2
    rows = [names[i:i + columns] for i in range(0, len(names), columns)]
    heights = [max(len(models[m]) for m in row) * BAR + 0.25 * len({tier(s) for m in row for s in models[m]})
               for row in rows]
    fig = plt.figure(figsize=(PREVIEW_WIDTH, sum(heights) + 0.75 * len(rows) + 0.9), dpi=DPI)
    spec = fig.add_gridspec(len(rows), columns, height_ratios=heights)
    for r, row in enumerate(rows):
        for c, model in enumerate(row):
            ax = fig.add_subplot(spec[r, c])
            scorers = models[model]
            # a gap of half a bar between tiers, so the groups read apart
            y: list[float] = []
            last = None
            for s in scorers:
                y.append((y[-1] + 1 + (0.5 if tier(s) != last else 0)) if y else 0.0)
                last = tier(s)
            keys = [f"test/{model}/{s}/auroc" for s in scorers]
            values = [summary[k] for k in keys]
            arms = np.array([interval(summary, k) for k in keys]).T.reshape(2, -1)
            ax.barh(y, values, xerr=arms, color=[PALETTE[tier(s)] for s in scorers], alpha=0.55, height=0.8,
                    error_kw={"elinewidth": 1, "capsize": 2})
            for yi, v, low in zip(y, values, arms[0], strict=True):
                if v - low > LABEL_ROOM:  # else the interval's left arm would run through the text
                    ax.text(0.01, yi, f"{v:.3f}", va="center", ha="left", fontsize=7)
            ax.axvline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
            ax.set_yticks(y, scorers, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(model, fontsize=9)
    handles = [Patch(color=PALETTE[t], alpha=0.55, label=t) for t in TIERS
               if any(tier(s) == t for scorers in models.values() for s in scorers)]
    fig.legend(handles=handles, loc="upper right", ncols=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"{title} (test AUROC, 95 % interval; dotted: chance)", fontsize=9, x=0.02, ha="left")
    fig.supxlabel("test AUROC", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_size_inches()[1]))
    return fig


MARKERS = "osD^vP*X"
NearFar = dict[str, dict[str, dict[str, tuple[float, float]]]]  # model -> far set -> scorer -> (near, far) AUROC


def near_far_panels(points: NearFar, title: str) -> Figure:
    """`points`: model -> far set -> scorer -> (near AUROC, far AUROC). One panel per model; a marker per
    set, a colour per scorer tier. Above the diagonal the far set is the easier one: the open-category
    problem (near) is the harder."""
    fig, axes = grid(len(points), 2, 3.9)
    sets = sorted({name for by_set in points.values() for name in by_set})
    for ax, (model, by_set) in zip(axes, points.items(), strict=True):
        for name, by_scorer in by_set.items():
            for scorer, (near, far) in by_scorer.items():
                ax.scatter(near, far, marker=MARKERS[sets.index(name) % len(MARKERS)], s=22, alpha=0.8,
                           color=PALETTE[tier(scorer)])
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="near: held-out classes' AUROC", ylabel="far set's AUROC")
        ax.set_title(model, fontsize=9)
        ax.tick_params(labelsize=7)
    handles: list[Artist] = [Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)], color="grey",
                                    label=name) for i, name in enumerate(sets)]
    handles += [Patch(color=PALETTE[t], label=t) for t in TIERS
                if any(tier(s) == t for by_set in points.values() for b in by_set.values() for s in b)]
    height = fig.get_size_inches()[1]
    fig.legend(handles=handles, loc="lower center", ncols=min(8, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"{title}: near against far anomalies (above the diagonal: near is harder)", fontsize=9, x=0.02,
                 ha="left")
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1 - 0.1 / height))
    return fig
