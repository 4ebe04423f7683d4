"""Optuna storages: a SQLite file (the default, beside a SQLite MLflow store) for one machine,
`journal:<file>` for several processes on one machine (no heartbeats), a PostgreSQL URL for many machines.
On RDB storages a trial whose worker died goes stale through heartbeats: its MLflow run is ended FAILED
and the trial is queued again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from anomaly_repr.errors import ConfigError
from tuning.config import TuneConfig

log = logging.getLogger(__name__)

STORAGE_ATTEMPTS = 5  # tries to open an RDB storage whose tables another process is creating


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


def open_storage(spec: str, tcfg: TuneConfig) -> tuple[optuna.storages.BaseStorage, bool]:
    """(storage, whether it sends heartbeats) for `journal:<file>` or an RDB URL."""
    if spec.startswith("journal:"):
        path = spec.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path)), False
    if "://" not in spec:
        raise ConfigError(f"storage must be journal:<file> or a database URL (sqlite:///..., postgresql://...), "
                          f"got {spec!r}")
    # SQLite: wait for other processes' writes instead of failing; servers: drop dead pooled connections.
    engine = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            storage = optuna.storages.RDBStorage(
                spec, engine_kwargs=engine, heartbeat_interval=tcfg.heartbeat_interval,
                grace_period=2 * tcfg.heartbeat_interval,
                heartbeat_stale_trial_callback=FailStaleTrial(tcfg.max_retry))
            return storage, True
        except sqlalchemy.exc.IntegrityError:
            # Workers that open a new database together race to create Optuna's tables; the loser retries
            # and finds them made.
            time.sleep(1 + attempt)
        except Exception as exc:  # SQLAlchemy: bad URL, missing driver, server down
            raise ConfigError(f"cannot open the Optuna storage {spec}: {str(exc).splitlines()[0]}") from None
    raise ConfigError(f"cannot open the Optuna storage {spec}: its tables could not be created")
