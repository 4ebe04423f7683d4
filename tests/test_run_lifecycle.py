"""A run that fails between its start and the block that ends it ends FAILED, not FINISHED by MLflow's exit
hook nor RUNNING: member runs, reproduce's cells and parent, tune's trials and parent."""

import mlflow
import optuna
import pytest

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import AnomalyReprError
from anomaly_repr.study.cells import Study
from anomaly_repr.study.reproduce import run_reproduce
from anomaly_repr.tracking import runs
from tuning.config import TuneConfig
from tuning.study import run_tune

BASE = ExperimentConfig(epochs=1, batch_size=64, oracle_trees=20, device="cpu", bootstrap=0)


def store_down(*args, **kwargs):
    raise RuntimeError("store down")


def statuses() -> dict[str, str]:
    """Run name -> status of every run in the store."""
    return {r.info.run_name: r.info.status for r in mlflow.search_runs(search_all_experiments=True,
                                                                       output_format="list")}


def test_a_member_run_that_fails_before_its_block_ends_failed(tracking, monkeypatch):
    monkeypatch.setattr(runs, "log_new_params", store_down)
    with mlflow.start_run(run_name="ensemble") as parent:
        with pytest.raises(RuntimeError, match="store down"), \
                runs.MemberRuns(parent.info.run_id, lambda *a: None).member(0, BASE):
            pass
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the member's run is no longer active
    assert statuses() == {"ensemble": "FINISHED", "member 0": "FAILED"}


@pytest.mark.parametrize("driver", ["reproduce", "tune"])
def test_a_parent_that_fails_before_its_block_ends_failed(tracking, monkeypatch, driver):
    monkeypatch.setattr(optuna.Study, "set_metric_names", store_down)
    with pytest.raises(RuntimeError, match="store down"):
        if driver == "reproduce":
            run_reproduce(Study(BASE, methods=("classifier",)))
        else:
            run_tune(BASE, TuneConfig(n_trials=1, pruner="none"))
    assert mlflow.active_run() is None
    assert list(statuses().values()) == ["FAILED"]


@pytest.mark.parametrize("driver", ["reproduce", "tune"])
def test_a_cell_or_trial_that_fails_before_its_block_ends_failed(tracking, monkeypatch, driver):
    real = optuna.Trial.set_user_attr

    def refuse_the_run_id(trial, key, value):
        if key == "mlflow_run_id":
            store_down()
        real(trial, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", refuse_the_run_id)
    # reproduce goes on to the next cell and then has no result; tune stops at an unexpected error
    with pytest.raises(AnomalyReprError if driver == "reproduce" else RuntimeError):
        if driver == "reproduce":
            run_reproduce(Study(BASE, methods=("classifier",)))
        else:
            run_tune(BASE, TuneConfig(n_trials=1, pruner="none"))
    found = statuses()
    assert any(name.startswith(("classifier", "trial")) for name in found), found  # the cell's or trial's run
    assert set(found.values()) == {"FAILED"}, found  # it, and the parent, which would otherwise stay RUNNING
    assert mlflow.active_run() is None
