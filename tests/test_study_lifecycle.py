"""A study's life: every invocation a new study unless its name is given, the store it logs to, the run
`mlflow run` made as its parent, workers joining by settings, an exact trial count, and SIGTERM."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import ConfigError
from anomaly_repr.study import lifecycle
from anomaly_repr.study.pool import PoolConfig, open_storage
from tuning.config import TuneConfig
from tuning.objective import is_surplus
from tuning.study import run_tune

BASE = ExperimentConfig(epochs=1, batch_size=64, oracle_trees=20, device="cpu", bootstrap=0)


def tune_cfg(**kw) -> TuneConfig:
    return TuneConfig(**({"n_trials": 1, "startup_trials": 1, "pruner": "none"} | kw))


def test_the_same_tune_twice_is_two_studies_and_a_name_resumes_one(tracking):
    first, second = run_tune(BASE, tune_cfg()), run_tune(BASE, tune_cfg())
    names = [mlflow.get_run(p).data.tags["optuna_study"] for p in (first, second)]
    assert first != second and names[0] != names[1]
    assert all(n.startswith("recon_weight-digits-val-anomalies-") for n in names)
    assert run_tune(BASE, tune_cfg(n_trials=2, study_name=names[0])) == first  # named: resumed
    study = optuna.load_study(study_name=names[0], storage=mlflow.get_run(first).data.tags["optuna_storage"])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.user_attrs["mlflow_tracking_uri"] == tracking  # an absolute SQLite path already
    trial = study.trials[0].user_attrs  # a link that `mlflow ui --backend-store-uri <store>` serves
    experiment = mlflow.get_run(first).info.experiment_id
    assert trial["mlflow_run_url"] == (f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/"
                                       f"{trial['mlflow_run_id']}?workflowType=machine_learning")
    assert study.user_attrs["mlflow_experiment"] == "anomaly-repr"


def test_resuming_a_study_against_another_store_is_one_line_naming_both(tracking, tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path}/shared-optuna.db"
    run_tune(BASE, tune_cfg(study_name="moved", storage=storage))
    other = f"sqlite:///{tmp_path}/other/mlflow.db"
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)  # a new process would start here; this one forgets the old
    mlflow.set_tracking_uri(other)  # store's active experiment as the `tracking` fixture does
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")  # which mlflow.set_experiment sets
    with pytest.raises(ConfigError) as refused:
        run_tune(BASE, tune_cfg(n_trials=2, study_name="moved", storage=storage))
    message = str(refused.value)
    assert "\n" not in message and tracking in message and other in message and "study 'moved'" in message
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []  # nothing started there


def test_store_names_hold_no_credentials_and_resolve_sqlite_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lifecycle.store_name("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert lifecycle.store_name("https://ann:secret@mlflow.example:5000/base") == "https://mlflow.example:5000/base"
    assert lifecycle.store_name("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_the_run_mlflow_run_made_is_the_parent_unless_it_is_in_the_default_experiment(tracking, monkeypatch):
    client = mlflow.MlflowClient()
    chosen = client.create_experiment("chosen")
    named = client.create_run(chosen).info.run_id  # `mlflow run --experiment-name chosen`: its run and experiment
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", chosen)
    assert run_tune(BASE, tune_cfg(), launcher=named) == named
    assert client.get_run(named).data.tags["stage"] == "tune"
    others = [r for r in client.search_runs([chosen]) if r.info.run_id != named]
    assert len(others) == 2 and all(r.data.tags["mlflow.parentRunId"] == named for r in others)  # trial, test

    in_default = client.create_run("0").info.run_id  # `mlflow run .` without --experiment-name
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    parent = run_tune(BASE, tune_cfg(), launcher=in_default)
    assert parent != in_default
    assert client.get_experiment(client.get_run(parent).info.experiment_id).name == "anomaly-repr"
    pointer = client.get_run(in_default).data.tags
    assert pointer["study_parent_run_id"] == parent and parent in pointer["mlflow.note.content"]


def test_a_worker_without_a_name_joins_the_newest_running_study_of_its_settings(tracking, tmp_path):
    storage, _ = open_storage(f"journal:{tmp_path}/j.log", PoolConfig())
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("join")
    ended, running, other = (client.create_run(experiment).info.run_id for _ in range(3))
    client.set_terminated(ended, "FINISHED")
    for name, parent in (("s-20261206-100000-aaaaaa", running), ("s-20261207-100000-bbbbbb", ended),
                         ("t-20261208-100000-cccccc", other)):
        optuna.create_study(study_name=name, storage=storage).set_user_attr(lifecycle.PARENT, parent)
    assert lifecycle.running_study("s", storage) == "s-20261206-100000-aaaaaa"
    assert lifecycle.running_study("u", storage) is None
    launcher = client.create_run(experiment).info.run_id  # `mlflow run -P role=worker`
    study, parent = lifecycle.join_study(PoolConfig(role="worker"), "s", storage, {}, "tune", launcher)
    assert study.study_name == "s-20261206-100000-aaaaaa" and parent.info.run_id == running
    assert client.get_run(launcher).data.tags["study_parent_run_id"] == running


def test_a_trial_asked_for_beside_the_last_one_is_surplus():
    study = optuna.create_study()
    asked = [study.ask() for _ in range(3)]  # three workers counted 1 of 2 trials and asked together
    study.tell(asked[0], 1.0)
    assert [is_surplus(study, t.number, 2) for t in asked] == [False, False, True]
    study.tell(asked[1], state=TrialState.FAIL)  # a failed trial does not count: its place is free again
    assert not is_surplus(study, asked[2].number, 2)


def test_resuming_a_journal_tune_fails_its_orphaned_trials_and_runs(tracking, tmp_path):
    journal = f"journal:{tmp_path}/tune.journal"
    parent = run_tune(BASE, tune_cfg(study_name="orphans", storage=journal))
    storage, _ = open_storage(journal, PoolConfig())
    study = optuna.load_study(study_name="orphans", storage=storage)
    orphan = study.ask()  # a worker that died mid-trial, its run still RUNNING
    run = mlflow.MlflowClient().create_run(mlflow.get_run(parent).info.experiment_id).info.run_id
    orphan.set_user_attr("mlflow_run_id", run)
    assert run_tune(BASE, tune_cfg(n_trials=2, study_name="orphans", storage=journal)) == parent
    study = optuna.load_study(study_name="orphans", storage=storage)
    assert study.trials[orphan.number].state == TrialState.FAIL
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 2  # the study reached n_trials
    assert mlflow.get_run(run).info.status == "FAILED"


def test_an_unreachable_postgresql_storage_is_one_line_within_30_s():
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{silent.getsockname()[1]}/optuna"
        start = time.monotonic()
        with pytest.raises(ConfigError, match="cannot open the Optuna storage") as refused:
            open_storage(url, PoolConfig())
    assert time.monotonic() - start < 30 and "\n" not in str(refused.value)


def cli(args: list[str], tmp_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anomaly_repr", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr.log", "w"))


def wait_until(condition, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sigterm_ends_a_train_run_killed_with_its_checkpoint_resumable(tracking, tmp_path):
    proc = cli(["train", "--epochs", "8", "--patience", "0", "--batch_size", "16", "--device", "cpu"], tmp_path)
    wait_until(lambda: list((tmp_path / "checkpoints").glob("*.pt")) or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "anomaly-repr: stopped by SIGTERM" in (tmp_path / "stderr.log").read_text()
    [checkpoint] = (tmp_path / "checkpoints").glob("*.pt")
    assert mlflow.get_run(checkpoint.stem).info.status == "KILLED"
    resumed = cli(["train", "--resume", checkpoint.stem], tmp_path)
    assert resumed.wait(timeout=300) == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    run = mlflow.get_run(checkpoint.stem)
    assert run.info.status == "FINISHED" and run.data.metrics["train/epochs_run"] == 8


def test_sigterm_to_a_tune_driver_ends_every_trial_and_run_of_it_and_its_local_worker(tracking, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = cli(["tune", "--n_trials", "4", "--workers", "2", "--epochs", "40", "--patience", "0", "--pruner", "none",
                "--study_name", "stopped", "--storage", storage, "--device", "cpu"], tmp_path)

    def both_running() -> bool:
        assert proc.poll() is None, (tmp_path / "stderr.log").read_text()[-3000:]
        try:
            trials = optuna.load_study(study_name="stopped", storage=storage).trials
        except KeyError:
            return False
        return sum(t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials) == 2

    wait_until(both_running)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    study = optuna.load_study(study_name="stopped", storage=storage)
    started = [t for t in study.trials if "mlflow_run_id" in t.user_attrs]
    runs = [mlflow.get_run(t.user_attrs["mlflow_run_id"]) for t in started]
    seen = [(t.number, t.state.name, r.data.tags.get("failure")) for t, r in zip(started, runs, strict=True)]
    assert len(started) == 2 and all(t.state == TrialState.FAIL for t in started), seen  # seen: why any ended
    assert all(r.info.status == "KILLED" for r in runs)
    assert mlflow.get_run(study.user_attrs[lifecycle.PARENT]).info.status == "KILLED"
    assert not study_processes("stopped")  # its local worker ended too


def study_processes(study_name: str) -> list[int]:
    """Live processes of `anomaly_repr` working on the study (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"anomaly_repr" in command and study_name.encode() in command and state != "Z":
            found.append(int(entry.name))
    return found


def test_a_storage_whose_tables_another_worker_is_creating_opens_on_a_retry(monkeypatch, tmp_path):
    """A driver and a worker that open a new PostgreSQL database together race to create Optuna's tables;
    the loser sees "relation ... already exists" (seen in the distributed tests) and must retry."""
    import sqlalchemy

    from anomaly_repr.study import pool

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {},
                                                  Exception('relation "studies" already exists'))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(pool.time, "sleep", lambda seconds: None)
    storage, heartbeats = open_storage(f"sqlite:///{tmp_path}/optuna.db", PoolConfig())
    assert heartbeats and len(calls) == 2
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda *a, **k: (_ for _ in ()).throw(
        sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("permission denied for table studies"))))
    with pytest.raises(ConfigError, match="cannot open the Optuna storage .*permission denied"):
        open_storage(f"sqlite:///{tmp_path}/optuna.db", PoolConfig())
