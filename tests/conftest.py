"""Shared fixtures: a private MLflow store per test, a real `mlflow server` on loopback, image folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """A private SQLite tracking store; the working directory is the test's own folder."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ANOMALY_REPR_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    # The client keeps a URI set by mlflow.set_tracking_uri (an earlier test's, or a stopped server's) over
    # the environment, and an experiment made active by mlflow.set_experiment in another store: point it at
    # this test's store, with no active experiment.
    mlflow.set_tracking_uri(uri)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    return uri


def postgres_up() -> bool:
    """Whether the PostgreSQL server of the distributed tests answers on 127.0.0.1:5432."""
    try:
        import psycopg2
    except ImportError:
        return False
    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


needs_postgres = pytest.mark.skipif(not postgres_up(), reason="no PostgreSQL server on 127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> requests.Response:
    """Poll `url` until it answers 200 while the server process `proc` lives; its log tells why it did not."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = requests.get(url, timeout=2)
            if response.ok:
                return response
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer:\n" + log.read_text()[-3000:])
        time.sleep(0.5)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 3 s (optuna-dashboard's server ignores SIGTERM)."""
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on 127.0.0.1 (free port, SQLite backend, temporary artifact root)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/backend.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", proc, root / "server.log")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def write_image(path: Path, size: tuple[int, int], value: int, fmt: str | None = None) -> None:
    rng = np.random.default_rng(value)
    pixels = np.clip(rng.normal(value, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def messy_folder(root: Path, bad: int) -> Path:
    """A photo dump as people keep one: mixed-case and spaced class names, upper-case extensions, a hidden
    folder, a notes file, and `bad` truncated or fake JPEGs."""
    for c, name in enumerate(["Beetle", "green leaf", "moth", "Rock"]):
        for i, suffix in enumerate([".jpg", ".JPG", ".jpeg", ".png", ".PNG"]):
            write_image(root / name / f"img{i}{suffix}", (24 + 3 * i, 30), value=40 + 50 * c,
                        fmt="PNG" if suffix.lower() == ".png" else "JPEG")
    write_image(root / ".thumbnails" / "x.jpg", (8, 8), 0)
    (root / "Rock" / "notes.txt").write_text("collected 2019")
    (root / "moth" / ".DS_Store").write_bytes(b"\0\0")
    for i in range(bad):
        full = (root / "Beetle" / "img0.jpg").read_bytes()
        (root / ["moth", "Rock"][i % 2] / f"broken{i}.jpg").write_bytes(full[: len(full) // 3] if i % 2 else b"junk")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Four classes of five images each, mixed formats and sizes, in train/ and test/ parts."""
    root = tmp_path / "photos"
    for c, name in enumerate(["beetle", "leaf", "moth", "rock"]):
        for i in range(5):
            part = "train" if i < 3 else "test"
            suffix = [".png", ".jpg", ".bmp"][i % 3]
            write_image(root / part / name / f"{i}{suffix}", (20 + 7 * i, 30), value=40 + 50 * c)
    return root


def rgb_folder(root: Path, classes: int = 4, per_class: int = 15, size: int = 16) -> Path:
    """A small RGB class-folder tree whose images are all different (each its own seed)."""
    for c in range(classes):
        for i in range(per_class):
            write_image(root / f"class{c}" / f"{i}.png", (size, size), value=30 + 40 * c + i, fmt="PNG")
    return root


def mlflow_run(server: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server, ANOMALY_REPR_CHECKPOINTS=str(tmp_path / "checkpoints"),
               ANOMALY_REPR_STORAGE=env.get("ANOMALY_REPR_STORAGE", f"sqlite:///{tmp_path}/optuna.db"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"])  # MLproject runs `python`
    return subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local",
                           "--experiment-name", "e2e", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def reproduce_parent(server: str, tmp_path, params: dict, where: str):
    """`mlflow run . -e reproduce -P key=value ...` against the server; its parent run (found by the filter
    `where`) and the parent's children."""
    pairs = [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    proc = mlflow_run(server, tmp_path, "-e", "reproduce", *pairs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(server)  # for the `runs:/` URIs
    client = mlflow.MlflowClient(server)
    experiment = client.get_experiment_by_name("e2e")
    [parent] = client.search_runs([experiment.experiment_id], f"{where} and tags.stage = 'reproduce'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """The parent's auroc_table.md as its tables, by the bold heading above each ("classic" for "**classic
    scorers**", "gaps"): rows of cells, the header row first."""
    tables: dict[str, list[list[str]]] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("**") and line.rstrip().endswith("**"):
            name = line.strip("* ").removesuffix(" scorers")
        elif line.startswith("|") and not line.startswith("|---"):
            tables.setdefault(name, []).append([cell.strip() for cell in line.split("|")[1:-1]])
    return tables


def best_deployable_auroc(parent: mlflow.entities.Run, model: str) -> float:
    """The parent's test AUROC of `model`'s best deployable scorer: the one its tag `best_deployable/<model>`
    names, which must be the scorer with the highest mean validation AUROC (`select/<scorer>/auroc`) over the
    model's child runs, never read off the test AUROCs."""
    from anomaly_repr.scoring.scorers import is_oracle

    client = mlflow.MlflowClient()
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    mine = [k.data.metrics for k in kids if k.info.run_name.split(" ")[0] == model]
    names = {key.split("/")[1] for key in mine[0] if key.startswith("select/")} if mine else set()
    validation = {n: np.mean([m[f"select/{n}/auroc"] for m in mine]) for n in names
                  if not is_oracle(n) and all(f"select/{n}/auroc" in m for m in mine)}
    assert validation, f"no validation AUROC in the child runs of {model}"
    chosen = parent.data.tags[f"best_deployable/{model}"]
    assert validation[chosen] == max(validation.values()), (chosen, validation)
    return parent.data.metrics[f"test/{model}/{chosen}/auroc"]


def assert_gains(parent_id: str, method: str, own: str, reference: str = "classifier") -> None:
    """A study's parent: the gains of `method` over `reference` are the differences of their AUROCs (oracle,
    and best deployable against best deployable), and its `own` scorer's AUROC is what its child logged."""
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    m = parent.data.metrics
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    [child] = [c for c in children if c.data.tags.get("method") == method]
    assert m[f"test/{method}/{own}/auroc"] == pytest.approx(child.data.metrics[f"test/{own}/auroc"])
    assert m[f"test/gain/{method}/oracle_rf"] == pytest.approx(
        m[f"test/{method}/oracle_rf/auroc"] - m[f"test/{reference}/oracle_rf/auroc"], abs=1e-9)
    assert m[f"test/gain/{method}/best_score"] == pytest.approx(
        best_deployable_auroc(parent, method) - best_deployable_auroc(parent, reference), abs=1e-9)
