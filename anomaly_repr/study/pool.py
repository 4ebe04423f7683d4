"""The worker pool that `tune` and `reproduce` share: an Optuna study on a storage that every worker
opens, each trial one nested MLflow run under the study's parent run.

Storages: a SQLite file (the default, beside a SQLite MLflow store) for one machine, `journal:<file>` for
several processes on one machine (no heartbeats), a PostgreSQL URL for many machines. On RDB storages a
trial whose worker died goes stale through heartbeats: its MLflow run is ended FAILED and the trial is
queued again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import mlflow
import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from anomaly_repr.errors import ConfigError, check_finite, unknown

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, metric names

CONNECT_SECONDS = 10  # how long to wait for a PostgreSQL storage server to answer
STORAGE_ATTEMPTS = 5  # tries to open an RDB storage whose tables another process is creating
Role = Literal["driver", "worker"]
ROLES = get_args(Role)
# Read by the CLI (the edge) and passed down; written for the local workers a driver starts.
STORAGE_ENV, CHECKPOINTS_ENV = "ANOMALY_REPR_STORAGE", "ANOMALY_REPR_CHECKPOINTS"


@dataclass(frozen=True)
class PoolConfig:
    """Where a study's trials live and who runs them (the CLI options of `tune` and `reproduce`)."""

    study_name: str = ""  # '' = a new study, named after its settings and start; a name resumes that study
    # '' = optuna.db beside a SQLite MLflow store (the CLI reads $ANOMALY_REPR_STORAGE first); journal:<file>;
    # or an RDB URL (postgresql+psycopg2://...)
    storage: str = ""
    workers: int = 1  # processes on this machine that run trials of the study (this one included)
    role: Role = "driver"  # driver: runs trials, waits for all, reports | worker: runs trials only
    heartbeat_interval: int = 60  # seconds between trial heartbeats (RDB storages); a trial is stale after 2x
    max_retry: int = 2  # times a stale trial (its worker died) is queued again

    def __post_init__(self) -> None:
        check_finite(self)
        if self.role not in ROLES:
            raise unknown("role", self.role, ROLES)
        for name in ("workers", "heartbeat_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.role == "worker" and self.workers > 1:
            raise ConfigError(f"workers={self.workers} is the driver's: it starts workers-1 local workers; start "
                              "each other worker with role=worker alone")
        if self.max_retry < 0:
            raise ConfigError(f"max_retry must not be negative, got {self.max_retry}")

    def to_params(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)

    def storage_spec(self, tracking_uri: str) -> str:
        return self.storage or default_storage(tracking_uri)


POOL_FIELDS = {f.name: f for f in fields(PoolConfig)}


def default_storage(tracking_uri: str) -> str:
    """optuna.db beside a SQLite MLflow store, else in the working directory."""
    folder = Path(tracking_uri.removeprefix("sqlite:///")).parent if tracking_uri.startswith("sqlite:///") else Path()
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


class FailStaleTrial:
    """Heartbeat-stale trial: end its MLflow run FAILED (its worker cannot), then queue it again."""

    def __init__(self, max_retry: int):
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            client = mlflow.MlflowClient()
            client.set_tag(run_id, "trial_state", "FAIL")
            client.set_tag(run_id, "failure", "heartbeat stale: its worker stopped")
            client.set_terminated(run_id, "FAILED")
        log.warning("trial %d went stale (its worker stopped); queued again", trial.number)
        self.retry(study, trial)


def open_storage(spec: str, pool: PoolConfig) -> tuple[optuna.storages.BaseStorage, bool]:
    """(storage, whether it sends heartbeats) for `journal:<file>` or an RDB URL."""
    if spec.startswith("journal:"):
        path = spec.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path)), False
    if "://" not in spec:
        raise ConfigError(f"storage must be journal:<file> or a database URL (sqlite:///..., postgresql://...), "
                          f"got {spec!r}")
    # SQLite: wait for other processes' writes instead of failing; servers: drop dead pooled connections.
    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {"pool_pre_ping": True}
    if spec.startswith("postgresql"):  # libpq waits for an unreachable host for minutes by default
        engine["connect_args"] = {"connect_timeout": CONNECT_SECONDS}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            storage = optuna.storages.RDBStorage(
                spec, engine_kwargs=engine, heartbeat_interval=pool.heartbeat_interval,
                grace_period=2 * pool.heartbeat_interval,
                heartbeat_stale_trial_callback=FailStaleTrial(pool.max_retry))
            return storage, True
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Workers that open a new database together race to create Optuna's tables; the loser (a unique
            # key, or on PostgreSQL "relation ... already exists") retries and finds them made.
            if isinstance(exc, sqlalchemy.exc.ProgrammingError) and "already exists" not in str(exc):
                raise ConfigError(f"cannot open the Optuna storage {spec}: {str(exc).splitlines()[0]}") from None
            time.sleep(1 + attempt)
        except Exception as exc:  # SQLAlchemy: bad URL, missing driver, server down
            raise ConfigError(f"cannot open the Optuna storage {spec}: {str(exc).splitlines()[0]}") from None
    raise ConfigError(f"cannot open the Optuna storage {spec}: its tables could not be created")


# --- what drivers and workers share --------------------------------------------------------------------

POLL_SECONDS = 2.0  # how often a driver looks at other workers' running trials
JOIN_SECONDS = 300  # how long a worker waits for the driver to create the study and its parent run
# Experiment fields a worker may set for its own machine without changing the study.
MACHINE_FIELDS = ("data_root", "download", "device", "amp")


def spawn_workers(n: int, argv: list[str], tracking_uri: str, checkpoints: Path) -> list[subprocess.Popen]:
    """`n` local worker processes running `python -m anomaly_repr ARGV` (the driver itself is one more), with
    the driver's tracking store and checkpoint folder (through the environment their CLI reads)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, CHECKPOINTS_ENV: str(checkpoints.resolve())}
    env.pop("MLFLOW_RUN_ID", None)  # the driver's run; a worker opens trial runs under the parent only
    return [subprocess.Popen([sys.executable, "-m", "anomaly_repr", *argv], env=env) for _ in range(n)]


def reap(helpers: list[subprocess.Popen], what: str) -> None:
    """Wait for the local workers; one that failed leaves its trials in the study, which says what happened."""
    for proc in helpers:
        if proc.wait() != 0:
            log.warning("a local worker exited with code %d; its %s are in the study", proc.returncode, what)


def as_options(params: dict[str, str]) -> list[str]:
    return [item for key, value in params.items() for item in (f"--{key}", value)]
