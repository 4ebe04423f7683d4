"""A study's tables and figures: the AUROC table with its intervals, the gap table, the per-split table and
the AUROC chart (the numbers come from `summary`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from anomaly_repr.scoring.intervals import Results
from anomaly_repr.scoring.scorers import TIERS, tier
from anomaly_repr.study.figures import NearFar, auroc_panels
from anomaly_repr.study.summary import gain_aliases, gap_names, significant

# --- study tables and charts: one row per model, one column per scorer ---

def _scorer_names(results: Results) -> list[str]:
    """Every scorer with a test AUROC, grouped by tier (classic, feature, method, oracle)."""
    names: list[str] = []
    for cells in results.values():
        for key in cells[0].metrics if cells else []:
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "auroc" and parts[1] not in names:
                names.append(parts[1])
    return sorted(names, key=lambda name: TIERS.index(tier(name)))  # stable: registry order within a tier


def _cell(summary: dict[str, float], key: str, runs: int) -> str:
    """'0.867 [0.858, 0.876]': the mean, '+- std' over several runs, and the bootstrap interval."""
    if key not in summary:
        return ""
    text = f"{summary[key]:.3f}" + (f" +- {summary[key + '_std']:.3f}" if runs > 1 else "")
    if key + "_ci_low" in summary:
        text += f" [{summary[key + '_ci_low']:.3f}, {summary[key + '_ci_high']:.3f}]"
    return text


def auroc_table(results: Results, summary: dict[str, float]) -> pd.DataFrame:
    """Test AUROC, rows = models, columns = scorers."""
    return pd.DataFrame.from_dict(
        {method: {s: _cell(summary, f"test/{method}/{s}/auroc", len(cells)) for s in _scorer_names(results)}
         for method, cells in results.items()}, orient="index")


def runs(results: Results) -> int:
    """Runs per row: the repeats (split x seed) a between-run spread is taken over."""
    return max((len(cells) for cells in results.values()), default=0)


def gap_table(summary: dict[str, float], runs: int) -> pd.DataFrame:
    """Every gap and gain: its mean over runs; the paired bootstrap interval over test images with its p-value,
    raw and Holm-adjusted within the family, and '*' where that interval excludes 0; and the Student-t
    interval over runs (seeds and splits), which with one run is unknown. A gain with an older name (the
    hybrid's oracle gain, `test/q3_gap`) is one row, labelled with both names."""
    rows = {}
    aliases = {name: alias for alias, name in gain_aliases().items() if alias in summary}
    for name in gap_names(summary):
        if name in aliases.values():
            continue  # its row is that of the gain it names
        interval = (f"[{summary[name + '_ci_low']:+.3f}, {summary[name + '_ci_high']:+.3f}]"
                    if name + "_ci_low" in summary else "")
        between = (f"[{summary[name] - summary[name + '_ci95']:+.3f}, {summary[name] + summary[name + '_ci95']:+.3f}]"
                   if name + "_ci95" in summary else "unknown (one run)" if runs == 1 else "")
        label = f"{aliases[name]} (= {name})" if name in aliases else name
        rows[label] = {"AUROC difference": f"{summary[name]:+.3f}", "95 % bootstrap interval (test images)": interval,
                      "p": _p(summary, name + "_p"), "p (Holm)": _p(summary, name + "_p_holm"),
                      "bootstrap interval excludes 0": "*" if significant(summary, name) else "",
                      "95 % t-interval over runs": between}
    return pd.DataFrame.from_dict(rows, orient="index")


def _p(summary: dict[str, float], key: str) -> str:
    return f"{summary[key]:.3f}" if key in summary else ""


def by_split_table(results: Results) -> pd.DataFrame:
    """Test AUROC per (model, split), averaged over that split's seeds."""
    rows = {}
    for method, cells in results.items():
        for split in sorted({c.split for c in cells}):
            mine = [c for c in cells if c.split == split]
            rows[(method, split)] = {s: np.mean([c.metrics[f"test/{s}/auroc"] for c in mine])
                                     for s in _scorer_names(results) if f"test/{s}/auroc" in mine[0].metrics}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["model", "split"]
    return table


def to_markdown(table: pd.DataFrame, first: str = "model") -> str:
    header = f"| {first} | " + " | ".join(table.columns) + " |"
    rule = "|---" * (len(table.columns) + 1) + "|"
    body = ["| " + " | ".join([str(i), *map(str, row)]) + " |"
            for i, row in zip(table.index, table.values, strict=True)]
    return "\n".join([header, rule, *body]) + "\n"


def markdown_report(about: dict[str, str], results: Results, summary: dict[str, float]) -> str:
    """The parent's results/auroc_table.md: a header that says what was run, the AUROC table, the gaps."""
    repeats = runs(results)
    lines = [f"**{key}**: {value}  " for key, value in about.items()]
    lines.append(f"Cells: test AUROC{' mean +- std over ' + str(repeats) + ' runs' if repeats > 1 else ''}, "
                 "[95 % stratified bootstrap interval over test images"
                 f"{', of the mean over runs' if repeats > 1 else ''}]. Gaps: paired bootstrap (the same resampled "
                 "images on both sides), its p-value raw and Holm-adjusted within the family of gaps; * = the "
                 "bootstrap interval excludes 0; the t-interval over runs adds the seed and split noise"
                 f"{' (one run: unknown)' if repeats == 1 else ''}. Every best scorer is chosen on validation data.")
    parts = ["\n".join(lines) + "\n"]  # blank lines between blocks
    table = auroc_table(results, summary)
    for kind in TIERS:  # one table per tier: all scorers in one would be squeezed until names wrap
        columns = [s for s in table.columns if tier(s) == kind]
        rows = table[columns][(table[columns] != "").any(axis=1)]
        if len(columns) and len(rows):
            parts.append(f"**{kind} scorers**\n\n" + to_markdown(rows))
    for name, table in far_tables(results, summary).items():
        parts.append(f"**far set {name}**\n\nTest AUROC of its images against the nominal test images "
                     "(near_harder: it minus the held-out classes' AUROC; * = its joint bootstrap interval excludes "
                     "0).\n\n" + to_markdown(table, first="scorer"))
    gaps = gap_table(summary, repeats)
    if len(gaps):
        parts.append("**gaps**\n\n" + to_markdown(gaps, first="gap"))
    return "\n".join(parts)


def far_sets(results: Results) -> list[str]:
    return list(dict.fromkeys(name for cells in results.values() for c in cells[:1] for name in c.far_scores))


def far_tables(results: Results, summary: dict[str, float]) -> dict[str, pd.DataFrame]:
    """Per far set: rows = scorers, columns = models (few, so the table stays narrow), cells
    '0.912 (+0.150*)': the set's AUROC and its near_harder gap."""
    tables = {}
    for name in far_sets(results):
        rows: dict[str, dict[str, str]] = {}
        for scorer in _scorer_names(results):
            for model in results:
                key = f"test/ood/{name}/{model}/{scorer}"
                if f"{key}/auroc" in summary:
                    gap = f"{key}/near_harder"
                    star = "*" if significant(summary, gap) else ""
                    rows.setdefault(scorer, {m: "" for m in results})[model] = \
                        f"{summary[key + '/auroc']:.3f} ({summary[gap]:+.3f}{star})"
        tables[name] = pd.DataFrame.from_dict(rows, orient="index")
    return tables


def near_far_points(results: Results, summary: dict[str, float]) -> NearFar:
    """model -> far set -> scorer -> (near AUROC, far AUROC), for the near/far figure."""
    points: NearFar = {}
    for model in results:
        for name in far_sets(results):
            for scorer in _scorer_names(results):
                near, far = f"test/{model}/{scorer}/auroc", f"test/ood/{name}/{model}/{scorer}/auroc"
                if near in summary and far in summary:
                    points.setdefault(model, {}).setdefault(name, {})[scorer] = (summary[near], summary[far])
    return points


def auroc_chart(results: Results, summary: dict[str, float], title: str) -> Figure:
    """The AUROC of every (model, scorer) cell with its interval, one panel per model."""
    models = {m: [s for s in _scorer_names(results) if f"test/{m}/{s}/auroc" in summary] for m in results}
    return auroc_panels({m: names for m, names in models.items() if names}, summary, title)
