"""Deep ensembles and SVGD ensembles: the scorers on hand-made logits, member seeds, the SVGD update (no
repulsion = independent steps; repulsion pushes particles apart), members as nested runs, resume after kill -9
mid-member, bad input, and `mlflow run . -e reproduce` with a served ensemble."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from scipy.special import softmax

from anomaly_repr.cli import main
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.sources import load_source
from anomaly_repr.engine import workflow
from anomaly_repr.engine.workflow import fit, prepare
from anomaly_repr.errors import ConfigError, DivergedError
from anomaly_repr.methods import method_for
from anomaly_repr.methods.ensemble import (
    disagreement,
    ens_energy,
    ens_entropy,
    ens_max_logit,
    ens_msp,
    mutual_info,
)
from anomaly_repr.methods.svgd import svgd_direction
from anomaly_repr.models.backbones import create_model
from anomaly_repr.scoring.outputs import extract

from conftest import free_port, mlflow_run, stop_process, wait_for_http

FAST = ExperimentConfig(epochs=3, oracle_trees=20, device="cpu", ensemble_size=3, bootstrap=50)


# --- scorers ------------------------------------------------------------------------------------------------

def test_identical_members_have_no_epistemic_uncertainty():
    one = np.random.default_rng(0).normal(size=(20, 4))
    same = np.stack([one, one, one], axis=1)
    assert np.allclose(mutual_info(same), 0, atol=1e-9) and np.all(disagreement(same) == 0)
    p = softmax(one, axis=1)
    assert np.allclose(ens_msp(same), 1 - p.max(1)) and np.allclose(ens_entropy(same), -(p * np.log(p)).sum(1))
    assert np.allclose(ens_max_logit(same), -one.max(1))


def test_two_confident_members_that_disagree():
    logits = np.array([[[10.0, 0.0], [0.0, 10.0]]])  # one image, two members, two classes
    assert ens_entropy(logits)[0] == pytest.approx(math.log(2))  # the mean softmax is (1/2, 1/2)
    assert ens_msp(logits)[0] == pytest.approx(0.5)
    member_entropy = -(softmax([10.0, 0.0]) * np.log(softmax([10.0, 0.0]))).sum()
    assert mutual_info(logits)[0] == pytest.approx(math.log(2) - member_entropy)
    assert disagreement(logits)[0] == 0.5  # the ensemble picks class 0 (a tie): one member of two differs
    assert ens_energy(logits)[0] == pytest.approx(-np.log(np.exp(10) + 1))
    assert ens_max_logit(logits)[0] == -5.0


def test_members_have_their_own_seeds_and_initial_weights():
    method = method_for(ExperimentConfig(method="ensemble", seed=2, ensemble_size=3))
    configs = method.member_configs()
    assert [c.seed for c in configs] == [2, 1002, 2002] and {c.method for c in configs} == {"classifier"}
    heads = []
    for cfg in configs:
        torch.manual_seed(cfg.seed)
        heads.append(create_model(cfg.arch, 4, 1).head.weight)
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])


@pytest.mark.parametrize("change, message", [
    ({"method": "ensemble", "ensemble_size": 1}, "ensemble_size must be at least 2"),
    ({"method": "svgd", "ensemble_size": 1}, "ensemble_size must be at least 2"),
    ({"svgd_space": "hilbert"}, "unknown svgd_space 'hilbert'; choose one of function, weights"),
    ({"svgd_repulsion": -1.0}, "svgd_repulsion must not be negative"),
])
def test_bad_ensemble_settings_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**change)


# --- the SVGD update ----------------------------------------------------------------------------------------

def test_the_repulsion_of_two_particles_by_hand():
    x, s = torch.tensor([[0.0], [1.0]]), torch.zeros(2, 1)
    # squared distances 0, 1, 1, 0: median 0.5, h = 0.5 / log 3, k_12 = exp(-1 / h) = 1/9
    h = 0.5 / math.log(3)
    expected = (2 / h) * (0 - 1 / 9) / (1 + 1 / 9)
    phi = svgd_direction(x, s, repulsion=1.0, bandwidth=1.0)
    assert phi[0, 0].item() == pytest.approx(expected, rel=1e-5) and phi[1, 0].item() == pytest.approx(-expected,
                                                                                                       rel=1e-5)
    assert torch.equal(svgd_direction(x, torch.ones(2, 1), repulsion=0.0, bandwidth=1.0), torch.ones(2, 1))


@pytest.mark.parametrize("space", ["function", "weights"])
def test_no_repulsion_is_independent_gradient_steps(space):
    cfg = ExperimentConfig(method="svgd", ensemble_size=3, svgd_space=space, svgd_repulsion=0.0)
    method = method_for(cfg)
    torch.manual_seed(0)
    ensemble = method.build(4, 3, 8).train()
    singles = [type(m)(m.backbone, m.z_dim, m.head) for m in ensemble.members]  # the same modules
    copies = [{k: v.clone() for k, v in m.state_dict().items()} for m in singles]
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    off = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    optimizer = torch.optim.SGD(method.param_groups(ensemble), lr=0.1, momentum=0.9, nesterov=True)
    method.train_step(ensemble, optimizer, x, y, off)
    joint = [{k: v.clone() for k, v in m.state_dict().items()} for m in ensemble.members]
    classifier = method_for(ExperimentConfig())
    for single, start, after in zip(singles, copies, joint, strict=True):
        single.load_state_dict(start)
        own = torch.optim.SGD(classifier.param_groups(single), lr=0.1, momentum=0.9, nesterov=True)
        classifier.train_step(single, own, x, y, off)
        for key, value in single.state_dict().items():
            assert torch.allclose(value, after[key], atol=1e-6), key


def disagreement_on_validation(cfg: ExperimentConfig) -> tuple[float, float]:
    prep = prepare(cfg)
    fitted = fit(prep, workflow.checkpoint_path(Path("checkpoints"), f"{cfg.method}-{cfg.svgd_repulsion}"))
    val = extract(fitted.model, prep.images(prep.split.val), prep.open_labels[prep.split.val], fitted.normalizer,
                  torch.device("cpu"), method_for(cfg).batch_extras)
    return float(disagreement(val.member_logits).mean()), fitted.result.best_val_acc


def test_repulsion_makes_members_disagree_more_than_a_deep_ensemble_of_the_same_seeds(tracking):
    deep, deep_acc = disagreement_on_validation(FAST.replace(method="ensemble"))
    svgd, svgd_acc = disagreement_on_validation(FAST.replace(method="svgd", svgd_repulsion=1.0))
    assert svgd > deep + 0.02, (svgd, deep)
    assert svgd_acc > 0.5 and deep_acc > 0.8  # both still classify (chance is 1/6)


# --- members as nested runs, resume, bad input ----------------------------------------------------------------

def member_runs(client: mlflow.MlflowClient, run_id: str) -> dict[int, mlflow.entities.Run]:
    experiment = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")
    return {int(r.data.tags["member"]): r for r in runs}


def test_a_member_killed_mid_training_resumes_without_retraining_finished_members(tracking, tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking, ANOMALY_REPR_CHECKPOINTS=str(tmp_path / "checkpoints"))
    args = ["--method", "ensemble", "--ensemble_size", "3", "--epochs", "6", "--patience", "0", "--batch_size", "32",
            "--val_auroc_every", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "anomaly_repr", "train", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "train.log", "w"), text=True)
    client = mlflow.MlflowClient(tracking)
    deadline = time.monotonic() + 240
    while True:  # kill -9 once member 1 has logged an epoch of its own
        assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        experiments = [e.experiment_id for e in client.search_experiments()]
        ensembles = client.search_runs(experiments, "tags.stage = 'train'") if experiments else []
        members = member_runs(client, ensembles[0].info.run_id) if ensembles else {}
        if 1 in members and client.get_metric_history(members[1].info.run_id, "val/acc"):
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = ensembles[0].info.run_id
    before = member_runs(client, run_id)
    assert before[0].info.status == "FINISHED" and before[1].info.status == "RUNNING" and 2 not in before
    assert main(["train", "--resume", run_id]) == 0
    after = member_runs(client, run_id)
    assert sorted(after) == [0, 1, 2] and all(r.info.status == "FINISHED" for r in after.values())
    assert after[0].info.end_time == before[0].info.end_time  # member 0 was not trained again
    assert [m.step for m in client.get_metric_history(run_id=after[0].info.run_id, key="val/acc")] == list(range(1, 7))
    steps = sorted({m.step for m in client.get_metric_history(after[1].info.run_id, "val/acc")})
    assert steps == list(range(1, 7)) and after[1].info.run_id == before[1].info.run_id  # reopened, continued
    ensemble = client.get_run(run_id)
    assert ensemble.info.status == "FINISHED" and ensemble.data.metrics["train/epochs_run"] == 18
    weights = torch.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/weights.pt",
                                                             dst_path=str(tmp_path / "e")), weights_only=True)
    member0 = torch.load(mlflow.artifacts.download_artifacts(run_id=after[0].info.run_id,
                                                             artifact_path="model/weights.pt",
                                                             dst_path=str(tmp_path / "m")), weights_only=True)
    assert all(torch.equal(weights[f"members.0.{k}"], v) for k, v in member0.items())


def test_a_diverging_member_fails_the_run_naming_it_and_keeps_the_finished_ones(tracking, monkeypatch, capsys):
    real = workflow.train

    def second_member_diverges(method, *args, **kwargs):
        if method.cfg.seed == 1000:  # member 1
            raise DivergedError("training diverged at epoch 2, step 25 (the loss is not finite); lower lr")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(workflow, "train", second_member_diverges)
    assert main(["train", "--method", "ensemble", "--ensemble_size", "2", "--epochs", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("anomaly-repr: error: member 1 of 2: training diverged at epoch 2, step 25 (the loss is not "
                   "finite); lower lr; the 1 finished member(s) are kept for `train --resume`")
    client = mlflow.MlflowClient(tracking)
    [run] = client.search_runs(["1"], "tags.stage = 'train'")
    members = member_runs(client, run.info.run_id)
    assert run.info.status == "FAILED" and members[0].info.status == "FINISHED" and members[1].info.status == "FAILED"
    monkeypatch.setattr(workflow, "train", real)
    assert main(["train", "--resume", run.info.run_id]) == 0
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert member_runs(client, run.info.run_id)[0].info.end_time == members[0].info.end_time


def test_the_ensemble_run_holds_the_ensembles_metrics_and_each_member_its_own(tracking):
    assert main(["train", "--method", "ensemble", "--ensemble_size", "2", "--epochs", "2", "--device", "cpu"]) == 0
    client = mlflow.MlflowClient(tracking)
    [run] = client.search_runs(["1"], "tags.stage = 'train'")
    members = member_runs(client, run.info.run_id)
    assert [members[i].data.params["seed"] for i in (0, 1)] == ["0", "1000"]
    assert all(len(client.get_metric_history(m.info.run_id, "val/acc")) == 2 for m in members.values())
    assert "model/weights.pt" in {a.path for m in members.values() for a in client.list_artifacts(m.info.run_id,
                                                                                                   "model")}
    assert run.data.metrics["train/epochs_run"] == 4 and "val/best_acc" in run.data.metrics
    assert main(["evaluate", "--train_run_id", run.info.run_id]) == 0
    [evaluation] = client.search_runs(["1"], "tags.stage = 'evaluate'")
    m = evaluation.data.metrics
    for name in ("ens_msp", "ens_entropy", "mutual_info", "ens_max_logit", "ens_energy", "disagreement", "vim"):
        assert 0 <= m[f"test/{name}/auroc"] <= 1, name
    assert m["test/ens_max_logit/auroc"] == pytest.approx(m["test/max_logit/auroc"])  # the mean logits' max
    assert {"test/member_mean/max_logit/auroc", "test/member_mean/oracle_rf/auroc"} <= set(m)
    with np.load(mlflow.artifacts.download_artifacts(run_id=evaluation.info.run_id,
                                                     artifact_path="outputs/test.npz")) as test:
        n = len(test["labels"])
        assert test["member_logits"].shape == (n, 2, 6) and test["member_z"].shape[:2] == (n, 2)
        assert test["z"].shape == (n, 2 * test["member_z"].shape[2])
        assert np.allclose(test["logits"], test["member_logits"].mean(axis=1), atol=1e-5)


# --- reproduce with both ensembles, against a real server, and the served ensemble --------------------------

def test_mlflow_run_reproduce_with_both_ensembles_and_the_served_ensemble(mlflow_server, tmp_path):
    params = {"epochs": 2, "oracle_trees": 20, "bootstrap": 50, "ensemble_size": 2,
              "methods": "classifier,ensemble,svgd", "amp": "false"}  # float32: served and logged logits agree
    pairs = [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    proc = mlflow_run(mlflow_server, tmp_path, "-e", "reproduce", *pairs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("e2e")
    [parent] = client.search_runs([experiment.experiment_id],
                                  "params.methods = 'classifier,ensemble,svgd' and tags.stage = 'reproduce'")
    m = parent.data.metrics
    assert parent.info.status == "FINISHED"
    for method in ("ensemble", "svgd"):
        assert {f"test/gain/{method}/oracle_rf", f"test/gain/{method}/best_score",
                f"test/{method}/member_mean/max_logit/auroc", f"test/{method}/member_mean/oracle_rf/auroc",
                f"test/{method}/mutual_info/auroc"} <= set(m), method
    children = {c.data.params["method"]: c for c in
                client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert sorted(children) == ["classifier", "ensemble", "svgd"]
    assert sorted(member_runs(client, children["ensemble"].info.run_id)) == [0, 1]  # members nest in their child
    run = children["ensemble"]
    [model] = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                          filter_string=f"source_run_id = '{run.info.run_id}'")
    assert mlflow.models.get_model_info(model.model_uri).metadata["outputs"] == {"logits": [0, 6],
                                                                                "member_logits": [6, 18]}
    manifest = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/split/manifest.json")
    images = load_source(ExperimentConfig()).read(np.asarray(manifest["test"][:64])).numpy().astype(np.float32)
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model.model_uri,
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        served = np.asarray(requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": images.tolist()},
                                          timeout=60).json()["predictions"])
    finally:
        stop_process(server)
    with np.load(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="outputs/test.npz")) as t:
        np.testing.assert_allclose(served[:, :6], t["logits"][:64], atol=1e-3)
        np.testing.assert_allclose(served[:, 6:], t["member_logits"][:64].reshape(64, -1), atol=1e-3)


def test_members_train_in_worker_processes(tracking):
    args = ["--method", "ensemble", "--ensemble_size", "3", "--epochs", "2", "--device", "cpu", "--ensemble_workers",
            "2", "--val_auroc_every", "0"]
    assert main(["train", *args]) == 0
    client = mlflow.MlflowClient(tracking)
    [run] = client.search_runs(["1"], "tags.stage = 'train'")
    members = member_runs(client, run.info.run_id)
    assert sorted(members) == [0, 1, 2] and all(m.info.status == "FINISHED" for m in members.values())
    workers = {m.data.tags["worker"] for m in members.values()}
    assert len(workers) == 2 and f"{os.uname().nodename}:{os.getpid()}" not in workers  # two other processes
    assert run.info.status == "FINISHED" and run.data.metrics["train/epochs_run"] == 6
