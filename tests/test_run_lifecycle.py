"""A run that fails between its start and the block that ends it ends FAILED, not FINISHED by MLflow's exit
hook nor RUNNING: member runs, reproduce's cells and parent, tune's trials and parent. Errors that used to
escape as tracebacks are one line with exit 2, and leave no run RUNNING."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from PIL import Image

from anomaly_repr.cli import main
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
    assert statuses() == {"ensemble": "FINISHED", f"{BASE.method} member 0": "FAILED"}


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
    assert any(name.startswith(("classifier 0/0", "hybrid trial 0")) for name in found), found  # cell, trial
    assert set(found.values()) == {"FAILED"}, found  # it, and the parent, which would otherwise stay RUNNING
    assert mlflow.active_run() is None


# --- errors that must be one line, with the runs ended ---------------------------------------------------------

def last_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def test_evaluating_a_train_run_that_crashed_is_one_line(tracking, monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise RuntimeError("power cut (simulated)")

    monkeypatch.setattr(runs, "train_logged", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        runs.run_train(BASE)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"  # its config and split manifest are logged, its weights never were
    assert main(["evaluate", "--train_run_id", run.info.run_id]) == 2
    assert last_line(capsys.readouterr().err) == (
        f"anomaly-repr: error: train run {run.info.run_id} has no model weights (status FAILED): it crashed or is "
        f"still running; `train --resume {run.info.run_id}` finishes it")


def test_evaluating_with_a_class_more_in_the_data_names_the_class_counts(tracking, tmp_path, capsys):
    root = tmp_path / "photos"

    def add_class(c: int) -> None:
        for i in range(5):
            path = root / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (50 * c, 10 * i, 0)).save(path)

    for c in range(3):
        add_class(c)
    assert main(["train", "--dataset", "imagefolder", "--data_root", str(root), "--image_size", "8",
                 "--epochs", "1", "--device", "cpu"]) == 0  # 60 % of the classes known: 2 of 3
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    add_class(3)  # two classes more: 3 of 5 known, where the model has 2 outputs
    add_class(4)
    assert main(["evaluate", "--train_run_id", run_id]) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith(f"anomaly-repr: error: the data no longer match train run {run_id}: split hash ")
    assert line.endswith("(2 known classes; the data give 3)")


def test_an_ensemble_member_process_killed_is_one_line_and_ends_the_runs_failed(tracking, tmp_path):
    args = ["--method", "ensemble", "--ensemble_size", "2", "--ensemble_workers", "2", "--epochs", "500",
            "--patience", "0", "--batch_size", "32", "--val_auroc_every", "0", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "anomaly_repr", "train", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "train.log", "w"))
    client = mlflow.MlflowClient(tracking)
    deadline = time.monotonic() + 240
    while True:  # kill -9 a member's process once it has logged an epoch
        assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        members = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                     filter_string="tags.stage = 'member' and attributes.status = 'RUNNING'")
        started = [m for m in members if client.get_metric_history(m.info.run_id, "val/acc")]
        if started:
            break
        time.sleep(0.2)
    os.kill(int(started[0].data.tags["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    try:
        assert proc.wait(timeout=300) == 2
    finally:
        proc.kill()  # no process left behind if it hangs
    log = (tmp_path / "train.log").read_text()
    assert "Traceback" not in log and "anomaly-repr: error: an ensemble member's process died" in log
    found = {r.info.run_id: r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert {r.data.tags["stage"] for r in found.values()} == {"train", "member"}
    statuses = [(r.info.run_name, r.info.status) for r in found.values()]
    assert found[started[0].info.run_id].info.status == "FAILED", statuses  # the killed member's run
    assert all(r.info.status == "FAILED" for r in found.values() if r.data.tags["stage"] == "train"), statuses
    # no run is left RUNNING; a member that finished before the kill (digits epochs are short) is kept
    assert all(r.info.status in ("FAILED", "FINISHED") for r in found.values()), statuses


def test_a_final_status_is_written_again_while_a_sqlite_store_is_locked(tracking, monkeypatch):
    """A stopped driver and its local workers end their runs together on one SQLite file; a write that waits
    past SQLite's timeout ("database is locked", seen in the SIGTERM test) must not leave its run RUNNING."""
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from anomaly_repr.tracking import store

    real, calls = mlflow.MlflowClient.set_terminated, []

    def locked(self, run_id, status=None, end_time=None):
        calls.append(status)
        if len(calls) <= 2:
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked",
                                                    error_code=TEMPORARILY_UNAVAILABLE)
        return real(self, run_id, status, end_time)

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", locked)
    monkeypatch.setattr(store.time, "sleep", lambda seconds: None)
    run = mlflow.start_run()
    store.end_run("KILLED")
    assert calls == ["KILLED"] * 3 and mlflow.active_run() is None
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"
