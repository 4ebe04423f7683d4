"""The tracking layer under the faults a shared server shows: workers tagging one experiment at once, and a
server whose answer breaks off while an epoch's metrics are logged."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from anomaly_repr import tracking as track

RACE = MlflowException("(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint")


def test_an_experiment_tagged_by_another_worker_in_the_same_instant(tracking, monkeypatch):
    real = mlflow.MlflowClient.set_experiment_tag

    def tagged_by_another_first(self, experiment_id, key, value):
        real(self, experiment_id, key, value)  # the other worker's insert wins ...
        raise RACE  # ... and this one's is refused

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", tagged_by_another_first)
    track.setup_tracking()
    experiment = mlflow.get_experiment_by_name(track.DEFAULT_EXPERIMENT)
    assert experiment.tags[track.EXPERIMENT_KIND_TAG] == track.EXPERIMENT_KIND


def test_a_refused_tag_that_nobody_wrote_is_an_error(tracking, monkeypatch):
    def refused(self, experiment_id, key, value):
        raise RACE

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", refused)
    with pytest.raises(MlflowException, match="duplicate key"):
        track.setup_tracking()


def test_an_epoch_is_logged_again_when_the_answer_breaks_off(tracking, monkeypatch):
    real, calls = mlflow.log_metrics, []

    def broken_once(metrics, step=None, timestamp=None, **kwargs):
        calls.append(timestamp)
        real(metrics, step=step, timestamp=timestamp, **kwargs)  # the server stored them, then died replying
        if len(calls) == 1:
            raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with "
                                  "exception ('Connection broken: IncompleteRead(0 bytes read, 2 more expected)')")

    monkeypatch.setattr(track.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(mlflow, "log_metrics", broken_once)
    with mlflow.start_run() as run:
        track.log_epoch({"epoch": 3, "val/acc": 0.5, "train/loss": 1.25})
    assert len(calls) == 2 and calls[0] == calls[1]  # sent again with the same timestamp
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/acc")
    assert [(m.step, m.value) for m in history] == [(3, 0.5)]  # stored once


def test_other_logging_errors_are_not_retried(tracking, monkeypatch):
    calls = []

    def refused(metrics, step=None, timestamp=None, **kwargs):
        calls.append(step)
        raise MlflowException("INVALID_PARAMETER_VALUE: metric value out of range")

    monkeypatch.setattr(mlflow, "log_metrics", refused)
    with mlflow.start_run(), pytest.raises(MlflowException, match="out of range"):
        track.log_epoch({"epoch": 1, "val/acc": 0.5})
    assert calls == [1]
