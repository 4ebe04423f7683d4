"""`tune`: an Optuna study on the sealed view, a parent MLflow run with a child per trial, one final test.

Every `tune` is a new study (named after its settings and start) unless `study_name` names one to resume
(`lifecycle.py`), and any number of processes (`workers=N` here, or `role=worker` elsewhere) can share it
through its storage:
- a SQLite file (the default, beside a SQLite MLflow store; the CLI reads ANOMALY_REPR_STORAGE first) for
  one machine;
- `journal:<file>` for several processes on one machine (no heartbeats);
- a PostgreSQL URL for many machines.
On RDB storages (SQLite, PostgreSQL) trials send heartbeats; a trial whose worker died goes stale, is
failed (its MLflow run ends FAILED) and is queued again. `n_trials` is what the study should hold in
all, so workers stop together and a resumed study runs only the trials it still lacks; a trial asked for
in the same instant as the last one is pruned before it trains and not counted.

The driver (`role=driver`) creates the study and its parent run, runs trials, waits for the other
workers' trials, then reads the test images for the first time: it loads the best trial's weights,
evaluates them on the protocol's test images and logs the validation-to-test gap on the parent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.engine.evaluation import evaluated_parts
from anomaly_repr.engine.workflow import DEFAULT_CHECKPOINTS, Prepared, new_model, prepare, unseal
from anomaly_repr.errors import AnomalyReprError, BudgetError, ConfigError, DivergedError
from anomaly_repr.study import lifecycle, pool
from anomaly_repr.study.lifecycle import check_identity, failing_run
from anomaly_repr.study.pool import MACHINE_FIELDS, POLL_SECONDS, open_storage
from anomaly_repr.tracking.runs import evaluate_logged
from anomaly_repr.tracking.setup import setup_tracking
from anomaly_repr.tracking.store import (
    git_commit,
    load_config,
    load_weights,
    log_figures,
    log_json,
    log_model,
    log_new_params,
    log_provenance,
)
from tuning.config import TuneConfig
from tuning.objective import Objective, ProtocolView, counted
from tuning.report import study_figures, summarise_trials
from tuning.space import method_of

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3  # trials failing one after another in a process stop it: something is broken


# --- study ----------------------------------------------------------------------------------------------

def sampler_seed(cfg: ExperimentConfig, tcfg: TuneConfig) -> int:
    """The driver's sampler follows the experiment seed; each worker needs its own stream, or workers
    that start together would propose the same trials."""
    if tcfg.role == "driver":
        return cfg.seed
    return int(hashlib.sha256(f"{cfg.seed}-{socket.gethostname()}-{os.getpid()}".encode()).hexdigest()[:8], 16)


def make_sampler(cfg: ExperimentConfig, tcfg: TuneConfig) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        seed=sampler_seed(cfg, tcfg),
        n_startup_trials=tcfg.startup_trials,  # random trials before TPE models the results
        n_ei_candidates=24,  # candidates scored by expected improvement per suggestion
        multivariate=True,  # model the parameters jointly (G-ODIN's h, ε and decay interact)
        constant_liar=True,  # running trials count as bad results, so parallel workers spread out
        consider_endpoints=False,
        prior_weight=1.0,
        warn_independent_sampling=False,  # `scorer` is searched only when several are given
    )


def make_pruner(cfg: ExperimentConfig, tcfg: TuneConfig) -> optuna.pruners.BasePruner:
    if tcfg.pruner == "median":  # below the median of earlier trials at the same epoch, from epoch 2 (steps: 1, 2, ...)
        return optuna.pruners.MedianPruner(n_startup_trials=tcfg.startup_trials, n_warmup_steps=2)
    if tcfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def study_identity(cfg: ExperimentConfig, tcfg: TuneConfig, split_hash: str) -> dict[str, str]:
    """What a study's trials depend on; stored with the study and checked on resume and join."""
    experiment = {k: v for k, v in cfg.to_params().items() if k not in MACHINE_FIELDS}
    return {"split_hash": split_hash, **tcfg.objective_fields(), **experiment}


def open_study(settings_name: str, storage: optuna.storages.BaseStorage, heartbeats: bool, cfg: ExperimentConfig,
               tcfg: TuneConfig, identity: dict[str, str], launcher: str) -> tuple[optuna.Study, mlflow.ActiveRun]:
    """Driver: create the study and its parent run (creating a study name is atomic in every storage),
    or resume the named study and its parent. The parent run becomes the active run."""
    study, new = lifecycle.open_or_create(tcfg, settings_name, storage, sampler=make_sampler(cfg, tcfg),
                                          pruner=make_pruner(cfg, tcfg))
    if not new:
        check_identity(study, storage, identity)
        parent = lifecycle.resume_parent(study, launcher)
        with failing_run():
            lifecycle.abandon_running(study, heartbeats)
        log.info("resuming study %s (parent run %s)", study.study_name, parent.info.run_id)
        return study, parent
    parent = lifecycle.start_parent(launcher, run_name=f"tune {tcfg.target}")
    with failing_run():
        log.info("new study %s; resume it with --study_name %s", study.study_name, study.study_name)
        lifecycle.describe(study, storage, identity, "search: Optuna optimises the objective on validation data",
                           f"{tcfg.target} on {cfg.dataset} split {cfg.split} seed {cfg.seed}, protocol "
                           f"{tcfg.protocol}, {tcfg.n_trials} trials, scorer {'|'.join(tcfg.scorers)}")
        # optuna-dashboard labels the objective with this name instead of "Objective 0"
        study.set_metric_names([f"val {'|'.join(tcfg.scorers)} AUROC"])
        for params in method_of(tcfg.target, cfg).talk_values(tcfg)[:tcfg.n_trials]:
            study.enqueue_trial(params, skip_if_exists=True)
        lifecycle.record(study, parent.info)
    return study, parent


# --- running trials --------------------------------------------------------------------------------------

def work(study: optuna.Study, objective: Objective, tcfg: TuneConfig, heartbeats: bool,
         wait_for: list[subprocess.Popen] | None = None) -> None:
    """Run trials until the study holds n_trials (finished, running or queued) or the timeout passes.

    With `wait_for` (the driver), then wait for the trials other workers are running: on a heartbeat
    storage until each ends or goes stale, else as long as the local worker processes live.
    """
    deadline = time.monotonic() + tcfg.timeout if tcfg.timeout else math.inf
    failures: list[bool] = []

    def record(study: optuna.Study, trial: FrozenTrial) -> None:
        failures.append(trial.state == TrialState.FAIL)

    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        counts = Counter(t.state for t in trials)
        queued, running = counts[TrialState.WAITING], counts[TrialState.RUNNING]
        planned = sum(1 for t in trials if counted(t))
        if time.monotonic() < deadline and (queued or planned < tcfg.n_trials):
            study.optimize(objective, n_trials=1, catch=(DivergedError, BudgetError), callbacks=[record])
            if failures[-MAX_FAILURES_IN_A_ROW:] == [True] * MAX_FAILURES_IN_A_ROW:
                raise AnomalyReprError(f"{MAX_FAILURES_IN_A_ROW} trials in a row failed; see their runs' logs")
        elif wait_for is not None and running and (heartbeats or any(p.poll() is None for p in wait_for)):
            time.sleep(POLL_SECONDS)
        else:
            if running:
                log.warning("%d trial(s) still RUNNING with no live local worker and no heartbeats to expire them",
                            running)
            return


def spawn_workers(n: int, cfg: ExperimentConfig, tcfg: TuneConfig, tracking_uri: str,
                  checkpoints: Path) -> list[subprocess.Popen]:
    """`n` local `tune role=worker` processes on the same study (the driver itself is one more)."""
    params = cfg.to_params() | tcfg.replace(role="worker", workers=1).to_params()
    return pool.spawn_workers(n, ["tune", *pool.as_options(params)], tracking_uri, checkpoints)


# --- after the search -------------------------------------------------------------------------------------

def evaluate_best(study: optuna.Study, sealed: Prepared, view: ProtocolView, tcfg: TuneConfig) -> dict[str, float]:
    """Evaluate the best trial's model on the protocol's test images (read now, after the search) in a
    child run; log the best parameters, validation value, test metrics and their gap on the parent."""
    best = study.best_trial
    if best.value is None:  # the best trial is COMPLETE, so it has its value
        raise AnomalyReprError(f"the best trial {best.number} of study {study.study_name!r} has no value")
    value: float = best.value
    scorer = best.params.get("scorer", tcfg.scorers[0])
    log_json({"number": best.number, "value": value, "params": best.params, "scorer": scorer},
             "results/best_trial.json")
    mlflow.set_tags({f"best_params.{k}": str(v) for k, v in best.params.items()} | {"best_trial": str(best.number)})
    mlflow.log_metrics({f"best/{k}": v for k, v in best.params.items() if isinstance(v, int | float)}
                       | {"tune/best_value": value, f"val/{scorer}/auroc": value})
    trial_run = best.user_attrs["mlflow_run_id"]
    full = unseal(sealed)
    # The trial's settings, on this machine's data and device (a worker elsewhere may have had other paths).
    trial_cfg = load_config(trial_run).replace(**{k: getattr(sealed.cfg, k) for k in MACHINE_FIELDS})
    prep = dataclasses.replace(full, cfg=trial_cfg)
    model, normalizer = load_weights(trial_run, new_model(prep), prep.split, who="trial run")
    with mlflow.start_run(run_name=f"{trial_cfg.method} test of trial {best.number}", nested=True):
        log_provenance(prep, stage="test", parts=evaluated_parts(prep))
        mlflow.set_tags({"trial_run_id": trial_run, "trial_number": str(best.number),
                         "optuna_study": study.study_name, **view.tags()})
        metrics = evaluate_logged(prep, model, normalizer, view.val, view.test).metrics
        log_model(model, normalizer, prep.images(prep.split.train[:4]))
    gap = {"tune/val_test_gap": value - metrics[f"test/{scorer}/auroc"]}
    mlflow.log_metrics(metrics | gap)
    log.info("best trial %d %s: validation AUROC %.4f, test AUROC %.4f", best.number, best.params, value,
             metrics[f"test/{scorer}/auroc"])
    return metrics | gap


def run_tune(cfg: ExperimentConfig, tcfg: TuneConfig, checkpoints: Path = DEFAULT_CHECKPOINTS,
             launcher: str = "") -> str:
    """`tune`, its trials checkpointing to `checkpoints`; `launcher` is the run `mlflow run` made for this
    command. Returns the study's parent run id."""
    if cfg.ood_sets:
        raise ConfigError("tune searches on validation data and ood_sets are test sets: leave them out, and "
                          "evaluate the best trial's run with them (`evaluate --ood_sets`)")
    tracking_uri = setup_tracking(own_experiment=True)
    storage_spec = tcfg.storage_spec(tracking_uri)
    storage, heartbeats = open_storage(storage_spec, tcfg)
    sealed = prepare(cfg, parts=("train", "val"))  # the search never holds a test image
    view = ProtocolView.make(sealed.split, sealed.data.labels, tcfg.protocol, tcfg.holdout_fraction, cfg.seed)
    settings_name = f"{tcfg.target}-{cfg.dataset}-{tcfg.protocol}-{sealed.split.hash[:8]}"
    identity = study_identity(cfg, tcfg, sealed.split.hash)
    tcfg = tcfg.replace(storage=storage_spec)
    if tcfg.role == "worker":
        study, parent = lifecycle.join_study(tcfg, settings_name, storage, identity, "tune", launcher,
                                             sampler=make_sampler(cfg, tcfg), pruner=make_pruner(cfg, tcfg))
        work(study, Objective(sealed, tcfg, view, parent, study.study_name, checkpoints), tcfg, heartbeats)
        return parent.info.run_id

    study, active = open_study(settings_name, storage, heartbeats, cfg, tcfg, identity, launcher)
    name = study.study_name
    tcfg = tcfg.replace(study_name=name)  # what its local workers join
    helpers: list[subprocess.Popen] = []
    with lifecycle.parent_run(helpers):
        log_new_params(cfg.to_params() | {k: v for k, v in tcfg.to_params().items() if k != "role"})
        mlflow.set_tags({"stage": "tune", "optuna_study": name, "optuna_storage": storage_spec,
                         "dataset": cfg.dataset, "arch": cfg.arch, "git_commit": git_commit(),
                         "split_hash": sealed.split.hash, **view.tags()})
        parent = mlflow.get_run(active.info.run_id)
        helpers += spawn_workers(tcfg.workers - 1, cfg, tcfg, tracking_uri, checkpoints)
        work(study, Objective(sealed, tcfg, view, parent, name, checkpoints), tcfg, heartbeats, wait_for=helpers)
        pool.reap(helpers, "trials")
        mlflow.log_metrics(summarise_trials(study))
        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            raise AnomalyReprError(f"study {name!r} has no complete trial; nothing to test")
        log_figures(study_figures(study, tcfg))
        evaluate_best(study, sealed, view, tcfg)
    return active.info.run_id
