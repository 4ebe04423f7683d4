"""Scorers ranked across a study's runs: mean ranks, a Friedman test, Conover's post-hoc comparisons with
Holm's adjustment, and a critical-difference figure (Demšar 2006; the design of the systematic OOD
comparisons: scorers as treatments, runs as blocks).

A block is one run of one model (a row's cell: split x seed), holding the test AUROC of every scorer that
all the blocks share; within a block the scorers are ranked, 1 = the highest AUROC (ties share the mean
rank). The tests are scipy's `friedmanchisquare` and scikit-posthocs' `posthoc_conover_friedman`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import scikit_posthocs as sp
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from anomaly_repr.engine.figures import DPI, PREVIEW_WIDTH
from anomaly_repr.scoring.intervals import BASELINE, Results
from anomaly_repr.scoring.scorers import TIERS, tier

ALPHA = 0.05  # family-wise level of the post-hoc comparisons the figure joins


@dataclass(frozen=True)
class Ranks:
    """The blocks (rows: '<model> <split>/<seed>', columns: scorers) and what the tests found."""

    aurocs: pd.DataFrame
    mean_rank: pd.Series  # scorer -> mean rank over blocks, 1 = best
    statistic: float | None  # Friedman's chi-square; None with fewer than 2 blocks or 3 scorers
    p: float | None
    posthoc: pd.DataFrame | None  # scorer x scorer: Conover's p-values, Holm-adjusted

    def metrics(self) -> dict[str, float]:
        out = {f"ranks/{scorer}/mean_rank": float(rank) for scorer, rank in self.mean_rank.items()}
        out["ranks/blocks"] = float(len(self.aurocs))
        if self.statistic is not None and self.p is not None:
            out |= {"ranks/friedman_statistic": self.statistic, "ranks/friedman_p": self.p}
        return out


def blocks(results: Results) -> pd.DataFrame:
    """Test AUROC per block (rows) and scorer (columns): the scorers that every block has, in tier order. A
    model whose logits mean nothing for detection (the oracle representation: it has no max logit) is no block."""
    rows = {f"{model} {c.split}/{c.seed}": {key.split("/")[1]: value for key, value in c.metrics.items()
                                            if key.count("/") == 2 and key.endswith("/auroc")}
            for model, cells in results.items() for c in cells if f"test/{BASELINE}/auroc" in c.metrics}
    table = pd.DataFrame.from_dict(rows, orient="index").dropna(axis=1)
    return table[sorted(table.columns, key=lambda name: TIERS.index(tier(name)))]


def rank_scorers(results: Results) -> Ranks:
    aurocs = blocks(results)
    ranks = aurocs.rank(axis=1, ascending=False)  # 1 = the block's highest AUROC
    mean_rank = ranks.mean().sort_values()
    if len(aurocs) < 2 or aurocs.shape[1] < 3:
        return Ranks(aurocs, mean_rank, None, None, None)
    statistic, p = scipy_stats.friedmanchisquare(*(aurocs[c].to_numpy() for c in aurocs.columns))
    posthoc = sp.posthoc_conover_friedman(aurocs.to_numpy(), p_adjust="holm")
    posthoc.index = posthoc.columns = aurocs.columns
    return Ranks(aurocs, mean_rank, float(statistic), float(p), posthoc)


def critical_difference(ranks: Ranks, title: str) -> Figure:
    """The scorers on their mean-rank axis; a bar joins scorers whose Holm-adjusted Conover test does not
    separate them at `ALPHA`."""
    assert ranks.posthoc is not None, "a critical-difference figure needs the post-hoc tests"
    height = 1.2 + 0.22 * len(ranks.mean_rank)
    fig = Figure(figsize=(PREVIEW_WIDTH, height), dpi=DPI)
    ax = fig.subplots()
    sp.critical_difference_diagram(ranks.mean_rank, ranks.posthoc, alpha=ALPHA, ax=ax,
                                   label_props={"fontsize": 7})
    ax.set_title(f"{title}: mean rank over {len(ranks.aurocs)} runs (1 = best test AUROC); Friedman "
                 f"p = {ranks.p:.2g}; bars: not separated (Conover, Holm, {ALPHA:g})", fontsize=8)
    fig.tight_layout()
    return fig


def rank_table(ranks: Ranks) -> str:
    """results/ranks.csv: each scorer's mean rank and its Holm-adjusted p-value against every other."""
    table = ranks.mean_rank.rename("mean_rank").to_frame()
    if ranks.posthoc is not None:
        table = table.join(ranks.posthoc.add_prefix("p_holm vs "))
    return table.to_csv(index_label="scorer")
