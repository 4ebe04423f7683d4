"""The tracking layer under the faults a shared server shows (workers tagging one experiment at once, a
server whose answer breaks off while an epoch's metrics are logged) and a process killed between an epoch's
metrics and its checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.tracking import setup
from anomaly_repr.tracking import store as track
from anomaly_repr.tracking.runs import epoch_logger

RACE = MlflowException("(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint")


def test_an_experiment_tagged_by_another_worker_in_the_same_instant(tracking, monkeypatch):
    real = mlflow.MlflowClient.set_experiment_tag

    def tagged_by_another_first(self, experiment_id, key, value):
        real(self, experiment_id, key, value)  # the other worker's insert wins ...
        raise RACE  # ... and this one's is refused

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", tagged_by_another_first)
    setup.setup_tracking()
    experiment = mlflow.get_experiment_by_name(setup.DEFAULT_EXPERIMENT)
    assert experiment.tags[setup.EXPERIMENT_KIND_TAG] == setup.EXPERIMENT_KIND


def test_a_refused_tag_that_nobody_wrote_is_an_error(tracking, monkeypatch):
    def refused(self, experiment_id, key, value):
        raise RACE

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", refused)
    with pytest.raises(MlflowException, match="duplicate key"):
        setup.setup_tracking()


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


def test_a_resumed_run_does_not_log_the_repeated_epoch_twice(tracking):
    """A process killed after logging an epoch but before writing its checkpoint repeats that epoch when
    resumed: the repeated row is not logged again, the hook after logging still sees it."""
    prep, seen = SimpleNamespace(cfg=ExperimentConfig()), []

    def row(epoch: int) -> dict[str, float]:
        return {"epoch": epoch, "train/loss": 1.0 / epoch, "train/lr": 0.1, "val/acc": 0.5 + epoch / 10}

    with mlflow.start_run() as run:
        killed = epoch_logger(prep, analyse=False, then=lambda model, normalizer, r, logits: seen.append(r["epoch"]))
        killed(None, None, row(1), None)
        killed(None, None, row(2), None)  # logged; the process dies before epoch 2's checkpoint
        resumed = epoch_logger(prep, analyse=False, then=lambda model, normalizer, r, logits: seen.append(r["epoch"]))
        resumed(None, None, row(2), None)  # resumed from epoch 1's checkpoint
        resumed(None, None, row(3), None)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert seen == [1, 2, 2, 3]


def test_one_validation_pass_per_epoch_serves_the_accuracy_and_the_auroc(tracking, monkeypatch):
    """The nominal validation images are read once per epoch (for val/acc, whose logits the AUROC reuses);
    the AUROC adds only the anomaly images."""
    from anomaly_repr.engine.workflow import prepare
    from anomaly_repr.models.backbones import OpenSetNet
    from anomaly_repr.tracking.runs import train_logged

    prep = prepare(ExperimentConfig(epochs=2, batch_size=64, val_auroc_every=1, device="cpu"))
    evaluated, per_epoch, real = [], [], OpenSetNet.forward

    def counting(self, x):
        if not self.training:
            evaluated.append(len(x))
        return real(self, x)

    monkeypatch.setattr(OpenSetNet, "forward", counting)
    setup.setup_tracking()
    with mlflow.start_run() as run:
        train_logged(prep, run.info.run_id, Path("checkpoints"), serve=False,
                     epoch_hook=lambda model, normalizer, row, logits: per_epoch.append(sum(evaluated)))
    assert per_epoch == [len(prep.split.val), 2 * len(prep.split.val)]  # nominal and anomaly images, once each
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/max_logit/auroc")
    assert sorted(m.step for m in history) == [1, 2] and all(0.5 < m.value <= 1 for m in history)
