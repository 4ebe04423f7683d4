"""The `reproduce` study (also `main`): one parent run, a nested child run per method, seed and split.

Methods are trained in the order given (rows of the AUROC table); the default is the talk's four:
- `classifier`: trained on the known classes, the detector under study (Q1) and the reference;
- `hybrid`: the same with a reconstruction decoder, loss CE + λ MSE (Q3);
- `godin`: the same with a Generalized-ODIN head;
- `oracle_rep`: trained on every class of the split, the oracle representation (Q2).
Each child's config is the study's base config as a config of its method (`methods.child_config`). The
parent gathers `test/<method>/<scorer>/<metric>` (mean, and `_std` over several repeats), the gaps and
gains (`report.summarise`), the AUROC table (CSV, Markdown) and the bar chart.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import mlflow

from anomaly_repr.config import DEFAULT_METHODS, ExperimentConfig
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods import METHODS, child_config
from anomaly_repr.report import (
    auroc_bar_chart,
    auroc_table,
    best_deployable,
    reference_method,
    summarise,
    to_markdown,
)
from anomaly_repr.runs import evaluate_logged, train_logged
from anomaly_repr.tracking import git_commit, log_figures, log_new_params, log_provenance, setup_tracking
from anomaly_repr.workflow import prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    base: ExperimentConfig  # shared settings; each child replaces seed, split and its method's fields
    seeds: tuple[int, ...] = (0,)
    splits: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self) -> None:
        if not self.seeds or not self.splits:
            raise ConfigError("a study needs at least one seed and one split")
        if not self.methods:
            raise ConfigError("a study needs at least one method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods lists a method twice: {','.join(self.methods)}")

    def configs(self) -> dict[str, ExperimentConfig]:
        """Method -> its child's config (seed and split are set per repeat)."""
        return {name: child_config(self.base, name) for name in self.methods}


def run_reproduce(study: Study) -> str:
    setup_tracking()
    configs = study.configs()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    with mlflow.start_run(run_name="reproduce") as parent:
        params = {k: v for k, v in study.base.to_params().items() if k != "method"} | {
            "seed": ",".join(map(str, study.seeds)), "split": ",".join(map(str, study.splits)),
            "methods": ",".join(study.methods)}
        log_new_params(params)
        mlflow.set_tags({"stage": "reproduce", "dataset": study.base.dataset, "arch": study.base.arch,
                         "git_commit": git_commit(), "seeds": params["seed"], "splits": params["split"],
                         "methods": params["methods"]})
        for split_index in study.splits:
            for seed in study.seeds:
                prep = prepare(study.base.replace(split=split_index, seed=seed))
                for name, cfg in configs.items():
                    child = dataclasses.replace(prep, cfg=cfg.replace(split=split_index, seed=seed))
                    with mlflow.start_run(run_name=f"{name} split={split_index} seed={seed}", nested=True) as run:
                        log_provenance(child, stage=name)
                        fitted = train_logged(child, run.info.run_id)
                        results[name].append(evaluate_logged(child, fitted.model, fitted.normalizer))
        summary = summarise(results)
        mlflow.log_metrics(summary)
        reference = reference_method(results)
        best = best_deployable(summary, reference) if reference else None
        if best:
            mlflow.set_tag("q1_best_deployable", best)
        table = auroc_table(results)
        mlflow.log_text(table.to_csv(), "results/auroc_table.csv")
        mlflow.log_text(to_markdown(table), "results/auroc_table.md")
        log_figures({"figures/auroc_by_method.png": auroc_bar_chart(results, title=f"{study.base.dataset} AUROC")})
        gaps = {k: v for k, v in summary.items() if k.endswith("_gap") or k.startswith(("test/gain/", "test/q1_"))}
        log.info("gaps: %s\n%s", "  ".join(f"{k} {v:+.4f}" for k, v in gaps.items()), to_markdown(table))
        return parent.info.run_id
