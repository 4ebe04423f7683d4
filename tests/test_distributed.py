"""Shared servers and faults, on real servers on loopback: an MLflow server on the local PostgreSQL,
PostgreSQL-backed Optuna studies with several `tune` processes, kill -9 of a worker in a trial, an
MLflow server that is down at start or restarted in the middle of a run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import requests

from conftest import free_port, needs_postgres, stop_process, wait_for_http

pytestmark = pytest.mark.distributed
psycopg2 = pytest.importorskip("psycopg2")
TrialState = optuna.trial.TrialState




class Databases:
    """Fresh PostgreSQL databases, dropped (with their connections) at the end."""

    def __init__(self):
        self.admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        self.admin.autocommit = True
        self.names: list[str] = []

    def create(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.admin.cursor().execute(f"CREATE DATABASE {name}")
        self.names.append(name)
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        for name in self.names:
            self.admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.admin.close()


class Server:
    """`mlflow server` on 127.0.0.1, restartable on the same port and stores."""

    def __init__(self, backend: str, root: Path):
        self.backend, self.root, self.port = backend, root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend, "--artifacts-destination", str(self.root / "artifacts"),
             "--workers", "2"],
            stdout=open(self.root / "server.log", "a"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_http(self.url + "/health", self.proc, self.root / "server.log")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def databases():
    dbs = Databases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="module")
def pg_server(databases, tmp_path_factory):
    """An MLflow server whose backend store is a fresh PostgreSQL database."""
    server = Server(databases.create("mlflow"), tmp_path_factory.mktemp("pg-mlflow")).start()
    yield server
    server.kill()


def pool_process(command: str, server: str, storage: str, role: str, tmp: Path, *extra: str) -> subprocess.Popen:
    """A `tune` or `reproduce` process (driver or worker) on a shared storage and tracking server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server, MLFLOW_EXPERIMENT_NAME="distributed",
               ANOMALY_REPR_CHECKPOINTS=str(tmp / "checkpoints"))
    args = ["--storage", storage, "--role", role, "--oracle_trees", "20", "--batch_size", "32",
            "--heartbeat_interval", "1", *extra]
    return subprocess.Popen([sys.executable, "-m", "anomaly_repr", command, *args], env=env, cwd=tmp,
                            stdout=open(tmp / f"{role}-{uuid.uuid4().hex[:4]}.log", "w"), stderr=subprocess.STDOUT)


def tune_process(server: str, storage: str, role: str, tmp: Path, *extra: str) -> subprocess.Popen:
    return pool_process("tune", server, storage, role, tmp, "--pruner", "none", *extra)


def wait_for_running_run(worker: subprocess.Popen, metric: str, seconds: float = 180) -> mlflow.entities.Run:
    """The worker's run in progress, once it has logged `metric` (at least one epoch into its trial)."""
    tag = f"{socket.gethostname()}:{worker.pid}"
    deadline = time.monotonic() + seconds
    while True:
        assert time.monotonic() < deadline and worker.poll() is None, "the worker never ran a trial"
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.worker = '{tag}' and attributes.status = 'RUNNING'")
        if runs and metric in runs[0].data.metrics:
            return runs[0]
        time.sleep(0.2)


def wait_all(procs: list[subprocess.Popen], seconds: float) -> list[int]:
    """The exit codes; a process still running after `seconds` is killed (-9), so that the assertion on
    the codes prints the processes' logs instead of a bare TimeoutExpired."""
    deadline = time.monotonic() + seconds
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


def child_runs(parent_id: str) -> list[mlflow.entities.Run]:
    parent = mlflow.get_run(parent_id)
    return mlflow.search_runs([parent.info.experiment_id], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@needs_postgres
def test_three_processes_share_one_postgresql_study(pg_server, databases, tmp_path):
    storage = databases.create("optuna")
    # λ up to 1: larger λ can diverge at lr 0.1 (a FAIL trial, which these tests do not ask about)
    study_args = ("--n_trials", "5", "--epochs", "1", "--study_name", "shared", "--lambda_high", "1")
    procs = [tune_process(pg_server.url, storage, role, tmp_path, *study_args)
             for role in ("driver", "worker", "worker")]
    # About 130 s alone on 2 cores; the limit leaves room for a slower or busier machine.
    assert wait_all(procs, 600) == [0, 0, 0], [p.read_text()[-3000:] for p in tmp_path.glob("*.log")]
    study = optuna.load_study(study_name="shared", storage=storage)
    # Exactly the trials asked for, all COMPLETE, none left RUNNING. A trial asked for in the same instant as
    # the last one (workers count, then ask) is pruned before it trains, marked surplus, and not counted.
    trained = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert [t.state for t in trained] == [TrialState.COMPLETE] * 5
    assert all(t.state == TrialState.PRUNED and "mlflow_run_id" not in t.user_attrs
               for t in study.trials if t not in trained)
    mlflow.set_tracking_uri(pg_server.url)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    trial_runs = [r for r in child_runs(parent_id) if r.data.tags["stage"] == "trial"]
    # Exactly one child run per trained trial, and no other trial run under the parent.
    assert sorted(t.user_attrs["mlflow_run_id"] for t in trained) == sorted(r.info.run_id for r in trial_runs)
    assert sorted(int(r.data.tags["trial_number"]) for r in trial_runs) == [t.number for t in trained]
    assert len({r.data.tags["worker"] for r in trial_runs}) >= 2  # the trials were shared out
    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "test/max_logit/auroc" in parent.data.metrics

    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host",
                                  "127.0.0.1", "--port", str(port)], stdout=open(tmp_path / "dashboard.log", "w"),
                                 stderr=subprocess.STDOUT)
    try:
        summaries = wait_for_http(f"http://127.0.0.1:{port}/api/studies", dashboard, tmp_path / "dashboard.log")
        assert [s["study_name"] for s in summaries.json()["study_summaries"]] == ["shared"]
    finally:
        stop_process(dashboard)


@needs_postgres
def test_a_worker_killed_in_a_trial_is_failed_by_heartbeat_and_retried(pg_server, databases, tmp_path):
    storage = databases.create("optuna")
    study_args = ("--n_trials", "4", "--epochs", "12", "--study_name", "victim", "--lambda_high", "1")
    victim = tune_process(pg_server.url, storage, "worker", tmp_path, *study_args)
    driver = tune_process(pg_server.url, storage, "driver", tmp_path, *study_args)
    mlflow.set_tracking_uri(pg_server.url)
    killed_run = wait_for_running_run(victim, "val/max_logit/auroc")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert wait_all([driver], 300) == [0], [p.read_text()[-3000:] for p in tmp_path.glob("*.log")]

    study = optuna.load_study(study_name="victim", storage=storage)
    [killed] = [t for t in study.trials if t.user_attrs.get("mlflow_run_id") == killed_run.info.run_id]
    assert killed.state == TrialState.FAIL
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 4
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    run = mlflow.get_run(killed_run.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "FAIL"
    assert mlflow.get_run(retry.user_attrs["mlflow_run_id"]).data.tags["retried_trial"] == str(killed.number)


@needs_postgres
def test_reproduce_cells_survive_a_worker_killed_mid_cell(pg_server, databases, tmp_path):
    storage = databases.create("optuna")
    args = ("--seeds", "0,1", "--methods", "classifier,oracle_rep", "--epochs", "5", "--study_name", "cells",
            "--bootstrap", "100")
    driver = pool_process("reproduce", pg_server.url, storage, "driver", tmp_path, *args)
    victim = pool_process("reproduce", pg_server.url, storage, "worker", tmp_path, *args)
    mlflow.set_tracking_uri(pg_server.url)
    killed_run = wait_for_running_run(victim, "val/acc")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert wait_all([driver], 400) == [0], [p.read_text()[-3000:] for p in tmp_path.glob("*.log")]

    study = optuna.load_study(study_name="cells", storage=storage)
    [killed] = [t for t in study.trials if t.user_attrs.get("mlflow_run_id") == killed_run.info.run_id]
    assert killed.state == TrialState.FAIL
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    done = sorted((t.params["method"], t.params["seed"]) for t in study.trials if t.state == TrialState.COMPLETE)
    assert done == [("classifier", 0), ("classifier", 1), ("oracle_rep", 0), ("oracle_rep", 1)]
    assert mlflow.get_run(killed_run.info.run_id).info.status == "FAILED"
    parent = mlflow.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and "test/q2_gap_ci_low" in parent.data.metrics
    kids = child_runs(parent.info.run_id)
    assert sorted(k.info.status for k in kids) == ["FAILED"] + ["FINISHED"] * 4  # the killed cell's run, kept
    assert mlflow.get_run(retry.user_attrs["mlflow_run_id"]).data.tags["retried_run_id"] == killed_run.info.run_id


def test_an_unreachable_tracking_server_is_a_clear_error_within_30_seconds(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    began = time.monotonic()  # a worker process from its start: imports, then the wait for the server
    proc = subprocess.run([sys.executable, "-m", "anomaly_repr", "tune", "--role", "worker"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - began < 30
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("anomaly-repr: error:")]
    assert len(errors) == 1 and "cannot reach the MLflow tracking server" in errors[0], proc.stderr


def test_a_run_survives_a_server_restart_without_losing_a_metric(tmp_path):
    server = Server(f"sqlite:///{tmp_path}/backend.db", tmp_path).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # MLflow's client retries with exponential backoff; factor 1 (default 2) keeps the test short.
    env.update(MLFLOW_TRACKING_URI=server.url, ANOMALY_REPR_CHECKPOINTS=str(tmp_path / "checkpoints"),
               MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    epochs = 25
    train = subprocess.Popen([sys.executable, "-m", "anomaly_repr", "train", "--epochs", str(epochs), "--patience", "0",
                              "--batch_size", "64"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=open(tmp_path / "train.log", "w"), text=True)
    client = mlflow.MlflowClient(server.url)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and train.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if runs and len(client.get_metric_history(runs[0].info.run_id, "val/acc")) >= 3:
                break
            time.sleep(0.2)
        server.kill()
        time.sleep(2)  # the server is down while training goes on; logging retries
        server.start()
        out, _ = train.communicate(timeout=300)
        assert train.returncode == 0, (tmp_path / "train.log").read_text()[-3000:]
        run = client.get_run(out.strip().splitlines()[-1])
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # no epoch's metric lost
    finally:
        if train.poll() is None:
            train.kill()
        server.kill()


@needs_postgres
def test_the_stack_s_mlflow_server_with_basic_auth_and_allowed_hosts(databases, tmp_path):
    """docker/mlflow-entrypoint.sh as the compose stack runs it (PostgreSQL backend and user store, basic
    auth, --allowed-hosts), here on 127.0.0.1 with local artifacts instead of S3."""
    import secrets

    port, password = free_port(), secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HOME=str(tmp_path), MLFLOW_BACKEND_URI=databases.create("mlflow"),
               MLFLOW_AUTH_DB_URI=databases.create("mlflow_auth"), MLFLOW_AUTH_ADMIN_PASSWORD=password,
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(16), MLFLOW_ALLOWED_HOSTS=f"127.0.0.1:{port}",
               MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port), MLFLOW_WORKERS="1",
               MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    server = subprocess.Popen(["sh", str(Path(__file__).parents[1] / "docker" / "mlflow-entrypoint.sh")], env=env,
                              stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", server, tmp_path / "server.log")
        api = url + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(api, timeout=10).status_code == 401  # no credentials, no data
        assert requests.get(api, auth=("admin", password), timeout=10).ok
        assert requests.get(api, auth=("admin", password), headers={"Host": "attacker.example"},
                            timeout=10).status_code in (400, 403)  # DNS rebinding: a Host it does not serve
        client = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        client.update(MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password,
                      ANOMALY_REPR_CHECKPOINTS=str(tmp_path / "checkpoints"))
        train = ["train", "--epochs", "1", "--batch_size", "64"]
        ok = subprocess.run([sys.executable, "-m", "anomaly_repr", *train], env=client, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, ok.stderr[-3000:]
        run = requests.get(f"{url}/api/2.0/mlflow/runs/get?run_id={ok.stdout.strip().splitlines()[-1]}",
                           auth=("admin", password), timeout=10).json()["run"]
        assert run["info"]["status"] == "FINISHED"
        client["MLFLOW_TRACKING_PASSWORD"] = "wrong"
        refused = subprocess.run([sys.executable, "-m", "anomaly_repr", *train], env=client, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines()[-1].startswith("anomaly-repr: error: the tracking server refused")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@needs_postgres
def test_a_server_whose_database_is_down_is_one_line_before_any_run(databases, tmp_path):
    backend = databases.create("down")
    server = Server(backend, tmp_path).start()
    name = backend.rsplit("/", 1)[1]
    try:
        cursor = databases.admin.cursor()
        cursor.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")  # superusers too
        cursor.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        assert requests.get(server.url + "/health", timeout=10).ok  # what a liveness probe sees
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": server.url}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "anomaly_repr", "train", "--epochs", "1"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and time.monotonic() - start < 120, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"anomaly-repr: error: the tracking server at {server.url} answers /health but fails "
                               "requests (its database may be down): ")
    finally:
        server.kill()
