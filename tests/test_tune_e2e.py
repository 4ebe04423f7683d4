"""`mlflow run . -e tune` against a real `mlflow server`, and optuna-dashboard reading the study over HTTP."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from conftest import free_port, mlflow_run, stop_process, wait_for_http, write_image


def study_runs(server: str, study: str):
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("e2e")
    [parent] = client.search_runs([experiment.experiment_id], f"tags.stage = 'tune' and tags.optuna_study = '{study}'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = [c for c in children if c.data.tags["stage"] == "trial"]
    tests = [c for c in children if c.data.tags["stage"] == "test"]
    return client, parent, trials, tests


@pytest.fixture(scope="module")
def lambda_study(mlflow_server, tmp_path_factory):
    """A λ study on digits through `mlflow run`: 3 trials, the first the talk's λ."""
    tmp = tmp_path_factory.mktemp("tune")
    storage = f"sqlite:///{tmp}/optuna.db"
    proc = mlflow_run(mlflow_server, tmp, "-e", "tune", "-P", "target=recon_weight", "-P", "n_trials=3",
                      "-P", "epochs=3", "-P", "oracle_trees=50", "-P", "pruner=none", "-P", f"storage={storage}",
                      "-P", "study_name=e2e-lambda")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return storage, *study_runs(mlflow_server, "e2e-lambda")


def test_lambda_study_has_a_child_per_trial_and_the_test_on_its_parent(lambda_study):
    storage, client, parent, trials, [test_run] = lambda_study
    assert parent.info.status == "FINISHED" and len(trials) == 3
    assert sorted(r.data.tags["trial_number"] for r in trials) == ["0", "1", "2"]
    assert {r.data.tags["trial_state"] for r in trials} == {"COMPLETE"}
    assert all(r.data.tags["protocol"] == "val-anomalies" for r in [parent, test_run, *trials])
    first = next(r for r in trials if r.data.tags["trial_number"] == "0")
    assert float(first.data.params["recon_weight"]) == 0.9  # the talk's λ, enqueued first
    history = client.get_metric_history(first.info.run_id, "val/max_logit/auroc")
    assert [m.step for m in history] == [1, 2, 3]  # per-epoch validation AUROC, what the pruner reads
    m, tags = parent.data.metrics, parent.data.tags
    best = next(r for r in trials if r.data.tags["trial_number"] == tags["best_trial"])
    assert m["val/max_logit/auroc"] == pytest.approx(best.data.metrics["trial/value"])
    values = [r.data.metrics["trial/value"] for r in trials if "trial/value" in r.data.metrics]
    assert m["val/max_logit/auroc"] == max(values)
    assert float(tags["best_params.recon_weight"]) == pytest.approx(float(best.data.params["recon_weight"]))
    assert m["test/max_logit/auroc"] == pytest.approx(test_run.data.metrics["test/max_logit/auroc"])
    assert m["tune/val_test_gap"] == pytest.approx(m["val/max_logit/auroc"] - m["test/max_logit/auroc"])
    assert test_run.data.tags["trial_run_id"] == best.info.run_id
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {"figures/optimization_history.png", "figures/objective_vs_params.png",
                       "figures/param_importances.png"}


def test_godin_study_on_an_image_folder_with_class_holdout(mlflow_server, tmp_path):
    root = tmp_path / "specimens"
    for c, name in enumerate(["ant", "bee", "beetle", "leaf", "moth", "rock"]):
        for i in range(10):
            write_image(root / name / f"{i}.png", (24, 24), value=30 + 35 * c)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = mlflow_run(mlflow_server, tmp_path, "-e", "tune", "-P", "target=godin", "-P", "protocol=class-holdout",
                      "-P", "dataset=imagefolder", "-P", f"data_root={root}", "-P", "image_size=16",
                      "-P", "known_classes=ant,bee,beetle", "-P", "n_trials=2", "-P", "epochs=2",
                      "-P", "oracle_trees=50", "-P", f"storage={storage}", "-P", "study_name=e2e-godin")
    assert proc.returncode == 0, proc.stderr[-4000:]
    client, parent, trials, [test_run] = study_runs(mlflow_server, "e2e-godin")
    assert parent.info.status == "FINISHED" and len(trials) == 2
    tuning = parent.data.tags["tuning_anomaly_classes"].split(",")
    testing = parent.data.tags["test_anomaly_classes"].split(",")
    assert sorted(tuning + testing) == ["leaf", "moth", "rock"] and not set(tuning) & set(testing)
    first = next(r for r in trials if r.data.tags["trial_number"] == "0")
    assert first.data.params["godin_h"] == "cosine" and first.data.params["head"] == "godin"
    assert "test/godin/auroc" in parent.data.metrics and test_run.data.tags["model"] == "godin"
    # The final test's anomalies are the test classes only: the tuning classes were left out.
    with np.load(client.download_artifacts(test_run.info.run_id, "outputs/test.npz", str(tmp_path))) as test:
        n_anomalies = int((test["labels"] == -1).sum())
    assert n_anomalies == 2 * len(testing)  # 20 % of 10 images per test class


@pytest.mark.skipif(shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable)) is None,
                    reason="optuna-dashboard is not installed")
def test_optuna_dashboard_reads_the_study(lambda_study, tmp_path):
    storage = lambda_study[0]
    port = free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "optuna-dashboard"), storage,
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(tmp_path / "dashboard.log", "w"), stderr=subprocess.STDOUT)
    try:
        studies = wait_for_http(f"http://127.0.0.1:{port}/api/studies", proc, tmp_path / "dashboard.log",
                                60).json()["study_summaries"]
        [study] = [s for s in studies if s["study_name"] == "e2e-lambda"]
        detail = requests.get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=10).json()
        assert len(detail["trials"]) == 3 and detail["directions"] == ["maximize"]
        assert detail["objective_names"] == ["val max_logit AUROC"]  # not "Objective 0"
        for trial in detail["trials"]:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            assert attrs["mlflow_run_url"].endswith(f"/runs/{attrs['mlflow_run_id']}?workflowType=machine_learning")
            assert requests.get(attrs["mlflow_run_url"].split("#")[0], timeout=10).ok  # the MLflow UI answers
    finally:
        stop_process(proc)
