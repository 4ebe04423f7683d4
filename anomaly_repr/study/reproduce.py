"""The `reproduce` study (also `main`): one parent run, a nested child run per cell (method, augmentation
policy, split, seed).

Methods are trained in the order given (rows of the AUROC table); the default is the talk's four:
- `classifier`: trained on the known classes, the detector under study (Q1) and the reference;
- `hybrid`: the same with a reconstruction decoder, loss CE + λ MSE (Q3);
- `godin`: the same with a Generalized-ODIN head;
- `oracle_rep`: trained on every class of the split, the oracle representation (Q2).
Each child's config is the study's base config as a config of its method (`methods.child_config`), with
its augmentation policy. Several policies (`augment=crop_flip,trivialaugment`) train every method under
each; the rows of the reference policy (crop_flip when listed, else the first) keep the method's name,
the others are `<method>.<policy>` and are measured against their method's reference row (`summary.py`).

The cells are the grid split x seed x policy x method (`cells.py`), each a trial of an Optuna study on the
worker pool's storage (`pool.py`, shared with `tune`): the driver enqueues every cell as a trial with fixed
parameters, and each worker (the driver, `workers - 1` local processes, and `reproduce --role worker` on other
machines) pops the next queued cell (an atomic step of every Optuna storage, so no cell runs twice), trains
and evaluates it in a child run of the parent. Optuna's `GridSampler` is not used: it picks among unvisited
grid points at random once trials outnumber the grid, and counts a failed point as visited, so a failed cell
could never run again. On an RDB storage a killed worker's cell goes stale by heartbeats and is queued again;
a cell that fails leaves the parent FAILED with its error, and running the command again with the study's name
(`--study_name`, printed when it starts) reruns only the cells without a result. When every cell has one, the
driver assembles the parent (`parent.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from anomaly_repr.engine.workflow import DEFAULT_CHECKPOINTS, Prepared, checkpoint_path, prepare
from anomaly_repr.errors import AnomalyReprError
from anomaly_repr.methods import method_for
from anomaly_repr.scoring.intervals import Results
from anomaly_repr.study import lifecycle, pool
from anomaly_repr.study.cells import CellKey, Study
from anomaly_repr.study.lifecycle import check_identity, failing_run
from anomaly_repr.study.parent import load_cell, log_parent
from anomaly_repr.study.pool import POLL_SECONDS, open_storage
from anomaly_repr.tracking.runs import evaluate_logged, train_logged
from anomaly_repr.tracking.setup import run_url, setup_tracking
from anomaly_repr.tracking.store import end_run, git_commit, log_new_params, log_provenance, run_name

log = logging.getLogger(__name__)
# What optuna-dashboard shows on the cell queue's card: its trials are a grid, not a search.
QUEUE = "cell queue: each trial trains and evaluates one (method, split, seed) cell of a grid; nothing is optimised"


def cell_of(trial: FrozenTrial) -> CellKey | None:
    """A trial's cell, from its parameters (or, while it is queued, the parameters it was queued with)."""
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return (params["split"], params["seed"], params["method"], params["augment"]) if "method" in params else None


class CellObjective:
    """One cell per trial: train and evaluate its method in a child run of the parent; the trial's value
    is the child's best validation accuracy (what its training selected on; nothing is searched)."""

    def __init__(self, study: Study, parent: mlflow.entities.Run, study_name: str, checkpoints: Path):
        self.study, self.parent, self.study_name, self.checkpoints = study, parent, study_name, checkpoints
        self._prepared: tuple[tuple[int, int], Prepared] | None = None  # the last (split, seed)'s data

    def prepared(self, split: int, seed: int) -> Prepared:
        if self._prepared is None or self._prepared[0] != (split, seed):
            self._prepared = None  # release the previous images first
            self._prepared = ((split, seed), prepare(self.study.base.replace(split=split, seed=seed)))
        return self._prepared[1]

    def __call__(self, trial: optuna.Trial) -> float:
        queued = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        if "fixed_params" not in queued.system_attrs:
            # Another worker popped the last queued cell between this worker's look and its ask: Optuna made
            # a new trial instead, which is no cell. Stop it before it trains anything.
            raise optuna.TrialPruned("no queued cell was left")
        split = trial.suggest_categorical("split", list(self.study.splits))
        seed = trial.suggest_categorical("seed", list(self.study.seeds))
        method = trial.suggest_categorical("method", list(self.study.methods))
        policy = trial.suggest_categorical("augment", list(self.study.policies))
        assert isinstance(split, int) and isinstance(seed, int) and isinstance(method, str) and isinstance(policy, str)
        prep = self.prepared(split, seed)
        child = dataclasses.replace(prep, cfg=self.study.config(method, policy).replace(split=split, seed=seed))
        name = self.study.row(method, policy)
        run = mlflow.start_run(run_name=run_name(child.cfg, name), parent_run_id=self.parent.info.run_id,
                               experiment_id=self.parent.info.experiment_id, nested=mlflow.active_run() is not None)
        status = "FAILED"
        try:  # from the start: a failure in between would leave the run to MLflow's exit hook, which says FINISHED
            retry_of = trial.user_attrs.get("mlflow_run_id", "")  # a retried cell inherits its stale trial's
            trial.set_user_attr("mlflow_run_id", run.info.run_id)  # attributes
            trial.set_user_attr("mlflow_run_url", run_url(run.info.experiment_id, run.info.run_id))
            log_provenance(child, stage=method)
            mlflow.set_tags({"optuna_study": self.study_name, "trial_number": str(trial.number),
                             "worker": f"{socket.gethostname()}:{os.getpid()}", "retried_run_id": retry_of})
            fitted = train_logged(child, run.info.run_id, self.checkpoints)
            evaluate_logged(child, fitted.model, fitted.normalizer)
            status = "FINISHED"
            return fitted.result.best_val_acc
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Optuna fails the trial
            status = "KILLED"
            raise
        finally:
            checkpoint_path(self.checkpoints, run.info.run_id).unlink(missing_ok=True)
            end_run(status)


def work(optuna_study: optuna.Study, objective: CellObjective, heartbeats: bool,
         wait_for: list | None = None) -> None:
    """Run queued cells until none is left; the driver (`wait_for`: its local workers) then waits for the
    cells other workers run: on a heartbeat storage until each ends or goes stale, else while a local
    worker lives. A failing cell fails its trial and child run; the worker goes on to the next."""
    while True:
        optuna.storages.fail_stale_trials(optuna_study)
        counts = Counter(t.state for t in optuna_study.get_trials(deepcopy=False))
        if counts[TrialState.WAITING]:
            optuna_study.optimize(objective, n_trials=1, catch=(Exception,))
        elif wait_for is not None and counts[TrialState.RUNNING] and (
                heartbeats or any(p.poll() is None for p in wait_for)):
            time.sleep(POLL_SECONDS)
        else:
            return


def enqueue_missing(optuna_study: optuna.Study, study: Study) -> int:
    """Queue every cell that has no finished, running or queued trial (all of them in a new study)."""
    taken = {cell_of(t) for t in optuna_study.get_trials(deepcopy=False)
             if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)}
    missing = [cell for cell in study.cells() if cell not in taken]
    for split, seed, method, policy in missing:
        optuna_study.enqueue_trial({"split": split, "seed": seed, "method": method, "augment": policy})
    return len(missing)


def open_study(study: Study, storage: optuna.storages.BaseStorage, heartbeats: bool,
               launcher: str) -> tuple[optuna.Study, mlflow.ActiveRun]:
    """Driver: create the study and its parent run, or resume the named study and its parent; queue the
    cells without a result."""
    optuna_study, new = lifecycle.open_or_create(study.pool, study.settings_name(), storage)
    name = optuna_study.study_name
    if not new:
        check_identity(optuna_study, storage, study.identity())
        active = lifecycle.resume_parent(optuna_study, launcher)
        with failing_run():
            lifecycle.abandon_running(optuna_study, heartbeats, "cell trial")
            log.info("resuming study %s (parent run %s): %d cell(s) queued again", name, active.info.run_id,
                     enqueue_missing(optuna_study, study))
        return optuna_study, active
    active = lifecycle.start_parent(launcher, run_name=f"reproduce {study.base.dataset}")
    with failing_run():
        log.info("new study %s; resume it with --study_name %s", name, name)
        lifecycle.describe(optuna_study, storage, study.identity(), QUEUE, study.settings())
        optuna_study.set_metric_names(["cell's val accuracy (not optimised)"])
        enqueue_missing(optuna_study, study)
        lifecycle.record(optuna_study, active.info)
    return optuna_study, active


def collect_cells(study: Study, optuna_study: optuna.Study) -> Results:
    """Every cell's first finished child run, read back; a cell without one stops the study with its error."""
    trials = optuna_study.get_trials(deepcopy=False)
    done: dict[CellKey | None, FrozenTrial] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            done.setdefault(cell_of(trial), trial)
    missing = [cell for cell in study.cells() if cell not in done]
    if missing:
        errors = {cell_of(t): t.user_attrs.get("error", "") for t in trials if t.state == TrialState.FAIL}
        split, seed, method, policy = missing[0]
        why = f" ({errors[missing[0]]})" if errors.get(missing[0]) else ""
        raise AnomalyReprError(f"{len(missing)} of {len(study.cells())} cells have no result, first "
                               f"{study.row(method, policy)} split {split} seed {seed}{why}; run the command again "
                               f"with --study_name {optuna_study.study_name} to retry only those")
    results: Results = {study.row(method, policy): [] for policy in study.policies for method in study.methods}
    for cell in study.cells():
        split, seed, method, policy = cell
        results[study.row(method, policy)].append(load_cell(done[cell].user_attrs["mlflow_run_id"], split, seed))
    return results


def run_reproduce(study: Study, checkpoints: Path = DEFAULT_CHECKPOINTS, launcher: str = "") -> str:
    """`reproduce`: the driver runs cells, waits for all, and assembles the parent; a worker runs cells.
    Training checkpoints go to `checkpoints`; `launcher` is the run `mlflow run` made for this command.
    Returns the parent run id."""
    tracking_uri = setup_tracking(own_experiment=True)
    spec = study.pool.storage_spec(tracking_uri)
    storage, heartbeats = open_storage(spec, study.pool)
    if study.pool.role == "worker":
        optuna_study, parent = lifecycle.join_study(study.pool, study.settings_name(), storage, study.identity(),
                                                    "reproduce", launcher)
        work(optuna_study, CellObjective(study, parent, optuna_study.study_name, checkpoints), heartbeats)
        return parent.info.run_id

    optuna_study, active = open_study(study, storage, heartbeats, launcher)
    name = optuna_study.study_name
    helpers: list[subprocess.Popen] = []
    with lifecycle.parent_run(helpers):
        seeds, splits = ",".join(map(str, study.seeds)), ",".join(map(str, study.splits))
        policies = ",".join(study.policies)
        log_new_params({k: v for k, v in study.base.to_params().items() if k != "method"}
                       | {"seed": seeds, "split": splits, "methods": ",".join(study.methods), "augment": policies}
                       | {k: v for k, v in study.pool.to_params().items() if k != "role"})
        mlflow.set_tags({"stage": "reproduce", "dataset": study.base.dataset, "arch": study.base.arch,
                         "git_commit": git_commit(), "seeds": seeds, "splits": splits,
                         "methods": ",".join(study.methods), "augment": policies, "optuna_study": name,
                         "optuna_storage": spec})
        for group in study.shared_class_sets():
            log.warning("splits %s of %s hold the same known classes (only their order differs); a mean over "
                        "them counts that class set %d times", ",".join(map(str, group)), study.base.dataset,
                        len(group))
        parent = mlflow.get_run(active.info.run_id)
        objective = CellObjective(study, parent, name, checkpoints)
        prep = objective.prepared(study.splits[0], study.seeds[0])  # bad data or classes stop the study here, once
        for method in study.methods:
            method_for(study.config(method, study.reference_policy)).check_data(prep.data.shape)
        argv = ["reproduce", *pool.as_options(worker_params(study, name))]
        helpers += pool.spawn_workers(study.pool.workers - 1, argv, tracking_uri, checkpoints)
        work(optuna_study, objective, heartbeats, wait_for=helpers)
        pool.reap(helpers, "cells")
        log_parent(study, collect_cells(study, optuna_study))
    return active.info.run_id


def worker_params(study: Study, name: str) -> dict[str, str]:
    """The command-line options of a local worker of this study."""
    base = {k: v for k, v in study.base.to_params().items() if k != "method"}
    if study.base.recon_weight == 0:
        base["recon_weight"] = "auto"  # the CLI's spelling of "the talk's λ for the hybrid child"
    return base | {"seed": ",".join(map(str, study.seeds)), "split": ",".join(map(str, study.splits)),
                   "methods": ",".join(study.methods), "augment": ",".join(study.policies)} \
        | study.pool.replace(role="worker", workers=1, study_name=name).to_params()
