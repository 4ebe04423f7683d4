"""A study's life, shared by `tune` and `reproduce`: its name, the tracking store it logs to, its parent run,
and how a driver starts or resumes it and a worker joins it.

Optuna's convention made explicit: every invocation is a new study under a fresh name (its settings' name
and the time it started), unless `study_name` names one, which is resumed when the storage holds it and
created otherwise. A study records the MLflow store and experiment of its parent run, so that resuming it
against another store is refused in one line. The run that `mlflow run` made for the command (the
launcher) is a new study's parent; a resuming or joining command's launcher is tagged with the study it
worked on, so that no launcher run is left empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
import optuna
from optuna.trial import TrialState

from anomaly_repr.errors import AnomalyReprError, ConfigError
from anomaly_repr.study.pool import JOIN_SECONDS, POLL_SECONDS, PoolConfig
from anomaly_repr.tracking.setup import MLFLOW_DEFAULT_EXPERIMENT_ID, run_url
from anomaly_repr.tracking.store import end_run

log = logging.getLogger(__name__)
STOP_SECONDS = 60  # how long a driver waits for its local workers to end their runs after it stops them
IDENTITY = "identity"  # the system attribute that holds what a study's trials depend on
PARENT = "mlflow_parent_run_id"  # the study attribute workers wait for: set last


def fresh_name(settings_name: str) -> str:
    """A new study's name: its settings' name, the start time (names sort by it) and a random suffix."""
    return f"{settings_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def store_name(uri: str) -> str:
    """The tracking store as a study records it: no credentials, and a SQLite file by its absolute path."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    parts = urlsplit(uri)
    if parts.password or parts.username:
        parts = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


def identity_hash(identity: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def describe(study: optuna.Study, storage: optuna.storages.BaseStorage, identity: dict[str, str], kind: str,
             settings: str) -> None:
    """What optuna-dashboard shows on the study's card: what kind of study it is, its settings in words and
    its identity's short hash. The identity itself (a long JSON) goes into the study's system attributes,
    which the dashboard does not show, and `check_identity` reads it there."""
    storage.set_study_system_attr(storage.get_study_id_from_name(study.study_name), IDENTITY, identity)
    for key, value in {"kind": kind, "settings": settings, "identity_hash": identity_hash(identity)}.items():
        study.set_user_attr(key, value)


def check_identity(study: optuna.Study, storage: optuna.storages.BaseStorage, identity: dict[str, str]) -> None:
    """Refuse to resume or join a study created with other settings (fields newer than it are not stored)."""
    stored = storage.get_study_system_attrs(storage.get_study_id_from_name(study.study_name)).get(IDENTITY, {})
    for key, value in identity.items():
        if key in stored and stored[key] != value:
            raise ConfigError(f"study {study.study_name!r} was created with {key}={stored.get(key)!r}, this run has "
                              f"{key}={value!r}; keep the study's settings or choose another study_name")


def open_or_create(pool: PoolConfig, settings_name: str, storage: optuna.storages.BaseStorage,
                   **study_kwargs: Any) -> tuple[optuna.Study, bool]:
    """Driver: (study, whether it is new). A named study is resumed when the storage holds it."""
    name = pool.study_name or fresh_name(settings_name)
    try:
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", **study_kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        if not pool.study_name:
            raise AnomalyReprError(f"a study named {name!r} appeared while this one was created; run again") from None
        return optuna.load_study(study_name=name, storage=storage, **study_kwargs), False


def start_parent(launcher: str, run_name: str) -> mlflow.ActiveRun:
    """A new study's parent run: the launcher run `mlflow run` made, unless MLflow put that in its Default
    experiment (no --experiment-name given), where the study logs to its own experiment instead."""
    if launcher and mlflow.get_run(launcher).info.experiment_id != MLFLOW_DEFAULT_EXPERIMENT_ID:
        return mlflow.start_run(run_id=launcher, run_name=run_name)  # not the random name `mlflow run` gave
    parent = mlflow.start_run(run_name=run_name)
    if launcher:
        point(launcher, "parent of the study", parent.info)
    return parent


def record(study: optuna.Study, parent: mlflow.entities.RunInfo) -> None:
    """Store where the study logs; the parent's id last, since workers join once it is set."""
    study.set_user_attr("mlflow_tracking_uri", store_name(mlflow.get_tracking_uri()))
    study.set_user_attr("mlflow_experiment_id", parent.experiment_id)
    study.set_user_attr("mlflow_experiment", mlflow.get_experiment(parent.experiment_id).name)
    study.set_user_attr(PARENT, parent.run_id)


def parent_of(study: optuna.Study) -> mlflow.entities.Run:
    """The study's parent run in this tracking store; a one-line error naming both stores when it is not."""
    run_id = study.user_attrs[PARENT]
    try:
        return mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        recorded = study.user_attrs.get("mlflow_tracking_uri", "another MLflow store")
        experiment = study.user_attrs.get("mlflow_experiment", study.user_attrs.get("mlflow_experiment_id", "?"))
        raise ConfigError(f"study {study.study_name!r} logs to {recorded} (experiment {experiment!r}, parent run "
                          f"{run_id}), which this command's MLflow store {store_name(mlflow.get_tracking_uri())} "
                          "does not hold: point MLFLOW_TRACKING_URI at that store, or leave out study_name to "
                          "start a new study") from None


def resume_parent(study: optuna.Study, launcher: str) -> mlflow.ActiveRun:
    """Driver resuming a study: its parent run, active again; the launcher run points to it."""
    parent = parent_of(study)
    if launcher:
        point(launcher, "resumed the study", parent.info)
    return mlflow.start_run(run_id=parent.info.run_id)


def point(launcher: str, what: str, parent: mlflow.entities.RunInfo) -> None:
    """Tag the run `mlflow run` made, when it is not the study's parent, with the study's parent."""
    link = run_url(parent.experiment_id, parent.run_id)
    client = mlflow.MlflowClient()
    client.set_tag(launcher, "study_parent_run_id", parent.run_id)
    client.set_tag(launcher, "mlflow.note.content", f"This command {what}; its runs: {link}")


def join_study(pool: PoolConfig, settings_name: str, storage: optuna.storages.BaseStorage,
               identity: dict[str, str], command: str, launcher: str,
               **study_kwargs: Any) -> tuple[optuna.Study, mlflow.entities.Run]:
    """Worker: wait for the study named `study_name`, or without a name for the newest study of these
    settings whose parent run is running, then check that it is this experiment's."""
    deadline = time.monotonic() + JOIN_SECONDS
    while (name := pool.study_name or running_study(settings_name, storage)) is None or \
            PARENT not in study_attrs(name, storage):
        if time.monotonic() > deadline:
            what = f"study {pool.study_name!r} has no parent run" if pool.study_name else \
                f"no study of these settings ({settings_name}-...) is running"
            raise AnomalyReprError(f"{what} after {JOIN_SECONDS} s; start its driver ({command} without "
                                   "role=worker) first, or give its study_name")
        time.sleep(POLL_SECONDS)
    study = optuna.load_study(study_name=name, storage=storage, **study_kwargs)
    check_identity(study, storage, identity)
    parent = parent_of(study)
    if launcher:
        point(launcher, "worked on the study", parent.info)
    log.info("joined study %s (parent run %s)", name, parent.info.run_id)
    return study, parent


def study_attrs(name: str, storage: optuna.storages.BaseStorage) -> dict[str, Any]:
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:  # Optuna: the study does not exist yet
        return {}


def running_study(settings_name: str, storage: optuna.storages.BaseStorage) -> str | None:
    """The newest study of these settings (fresh names sort by their start) whose parent run is RUNNING."""
    names = sorted((s.study_name for s in storage.get_all_studies()
                    if s.study_name.startswith(f"{settings_name}-") and PARENT in s.user_attrs), reverse=True)
    for name in names:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            if mlflow.get_run(study_attrs(name, storage)[PARENT]).info.status == "RUNNING":
                return name
    return None


def abandon_running(study: optuna.Study, heartbeats: bool, what: str = "trial") -> None:
    """On resume: the trials of workers that died with the last driver are failed (their MLflow runs too),
    so that their work is done again. With heartbeats, those gone silent (Optuna's stale trials); without
    them (a journal file on one machine), every RUNNING trial: resume a journal study only when none of its
    workers runs."""
    if heartbeats:
        optuna.storages.fail_stale_trials(study)
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        if run_id := trial.user_attrs.get("mlflow_run_id"):
            client = mlflow.MlflowClient()
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "failure", "its worker stopped before the study was resumed")
                client.set_terminated(run_id, "FAILED")
        log.warning("%s %d was RUNNING when this driver started; failed, so that it runs again", what,
                    trial.number)


@contextlib.contextmanager
def parent_run(helpers: list[subprocess.Popen]) -> Iterator[None]:
    """Around a driver's work: the active (parent) run ends FINISHED when the block completes, KILLED on
    Ctrl-C or SIGTERM, FAILED on any error. Local workers (`helpers`, filled inside the block) still
    running are stopped the same way (SIGTERM: each ends its trial and run) and waited for."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        stop(helpers)
        end_run(status)


def stop(helpers: list[subprocess.Popen]) -> None:
    running = [proc for proc in helpers if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("local worker %d did not stop within %d s; killed", proc.pid, STOP_SECONDS)
            proc.kill()


@contextlib.contextmanager
def failing_run() -> Iterator[None]:
    """Around what follows a run's start before the block that ends it: an error there ends the active run
    FAILED (KILLED on Ctrl-C) instead of leaving it to MLflow's exit hook, which would mark it FINISHED; on
    success the run stays active."""
    try:
        yield
    except BaseException as exc:
        end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
