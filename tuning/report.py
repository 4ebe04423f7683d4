"""What a finished search shows: trial counts, and Optuna's figures (history, importances, objective vs params)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import optuna
from matplotlib.figure import Figure
from optuna.trial import TrialState

from anomaly_repr.engine.figures import fit_preview
from tuning.config import TuneConfig
from tuning.objective import SURPLUS


def study_figures(study: optuna.Study, tcfg: TuneConfig) -> dict[str, Figure]:
    """Artifact path -> figure: optimisation history, parameter importances and the objective against each
    parameter (λ). The caller logs and closes them."""
    from optuna.visualization import matplotlib as vis

    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # ε and decay are numeric categories

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": vis.plot_optimization_history, "objective_vs_params": vis.plot_slice}
    # Importances need at least two complete trials that differ in some parameter.
    if any(len({repr(t.params.get(k)) for t in complete}) > 1 for k in study.best_trial.params):
        plots["param_importances"] = vis.plot_param_importances
    objective = f"validation AUROC ({', '.join(tcfg.scorers)})"
    figures = {}
    for name, plot in plots.items():
        axes = plot(study)
        every = list(axes.flat) if hasattr(axes, "flat") else [axes]
        if name != "param_importances":
            every[0].set_ylabel(objective)
        figures[f"figures/{name}.png"] = fit_preview(every[0].figure)
    return figures


def summarise_trials(study: optuna.Study) -> dict[str, float]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state for t in trials)
    surplus = sum(1 for t in trials if t.user_attrs.get(SURPLUS))  # pruned before training: not counted
    return {"tune/trials_complete": counts[TrialState.COMPLETE],
            "tune/trials_pruned": counts[TrialState.PRUNED] - surplus, "tune/trials_surplus": surplus,
            "tune/trials_failed": counts[TrialState.FAIL],
            # one intermediate value per trained epoch: the compute the study spent, pruned trials included
            "tune/epochs_trained": sum(len(t.intermediate_values) for t in trials)}
