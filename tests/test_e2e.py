"""End to end: `mlflow run . --env-manager local` against a real `mlflow server` on 127.0.0.1."""

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.sources import load_source

from conftest import best_deployable_auroc, markdown_tables, mlflow_run, reproduce_parent, write_image


@pytest.fixture(scope="module")
def study(mlflow_server, tmp_path_factory):
    """`mlflow run .` (entry point main: reproduce on digits): the parent and its children by model."""
    proc = mlflow_run(mlflow_server, tmp_path_factory.mktemp("e2e"), "-P", "epochs=4", "-P", "oracle_trees=200",
                      "-P", "amp=false",  # float32 extraction: the served model's logits must match to 1e-3
                      "-P", "ood_sets=gaussian,uniform")
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(mlflow_server)  # for the `runs:/` and `models:/` URIs below
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("e2e")
    [parent] = client.search_runs([experiment.experiment_id], "params.epochs = '4' and tags.stage = 'reproduce'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return client, parent, {child.data.tags["model"]: child for child in children}


@pytest.fixture(scope="module")
def main_run(study):
    client, _, children = study
    return client, children["classifier"]


def test_main_is_a_study_with_a_child_per_model(study):
    client, parent, children = study
    assert parent.info.status == "FINISHED" and sorted(children) == ["classifier", "godin", "hybrid", "oracle_rep"]
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"  # the run `mlflow run` made is the parent
    tags = client.get_experiment_by_name("e2e").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.anomaly-repr-results"])  # the runs table's saved view
    assert view["name"] == "anomaly-repr: results" and isinstance(view["createdAt"], int)
    assert {"metrics.`test/max_logit/auroc`", "tags.`method`"} <= set(json.loads(view["state"])["selectedColumns"])
    assert all(child.info.status == "FINISHED" for child in children.values())
    m = parent.data.metrics
    for kind, child in children.items():
        for key, value in child.data.metrics.items():
            if key.startswith("test/") and key.count("/") == 2:
                assert m[f"test/{kind}/{key[5:]}"] == pytest.approx(value), key
    assert "test/oracle_rep/max_logit/auroc" not in m  # logit scores of an all-class model are meaningless
    assert "test/hybrid/recon_error/auroc" in m and "test/classifier/recon_error/auroc" not in m
    for scorer in ("godin", "godin_quotient", "godin_g"):
        assert f"test/godin/{scorer}/auroc" in m and f"test/classifier/{scorer}/auroc" not in m
    assert children["hybrid"].data.params["recon_weight"] == "0.9"  # the talk's λ for CIFAR-10 and others
    godin = children["godin"].data
    grid = [float(e) for e in godin.params["godin_epsilons"].split(",")]
    assert godin.params["head"] == "godin" and len(grid) == 7 and godin.metrics["godin/epsilon"] in grid
    search = mlflow.artifacts.load_dict(f"runs:/{children['godin'].info.run_id}/godin/epsilon_search.json")
    assert godin.metrics["godin/epsilon"] == float(max(search, key=search.get))  # the best of the search
    assert m["test/q3_gap"] == pytest.approx(m["test/hybrid/oracle_rf/auroc"] - m["test/classifier/oracle_rf/auroc"])
    assert m["test/classifier/oracle_rf/auroc"] > 0.6 and m["test/oracle_rep/oracle_rf/auroc"] > 0.6
    best_classic = m[f"test/classifier/{parent.data.tags['q1_best_classic']}/auroc"]  # chosen on validation
    assert m["test/q1_gap"] == pytest.approx(m["test/classifier/oracle_rf/auroc"] - best_classic)
    rf = m["test/classifier/oracle_rf/auroc"]
    assert m["test/q2_gap"] == pytest.approx(m["test/oracle_rep/oracle_rf/auroc"] - rf)
    # Q1 with today's detectors: every feature scorer on the classifier, the best deployable, the gap closed.
    feature = ("knn", "mahalanobis", "rmds", "vim", "fdbd", "react", "gen")
    assert all(f"test/classifier/{s}/auroc" in m and f"test/hybrid/{s}/auroc" in m for s in feature)
    best = parent.data.tags["q1_best_deployable"]
    assert m["test/q1_best_deployable"] == m[f"test/classifier/{best}/auroc"] == best_deployable_auroc(
        parent, "classifier")
    assert m["test/q1_best_deployable_test_argmax"] == max(v for k, v in m.items() if k.startswith("test/classifier/")
                                                           and k.endswith("/auroc") and "oracle" not in k)
    if rf > best_classic:
        assert m["test/q1_closed"] == pytest.approx((m["test/q1_best_deployable"] - best_classic) / (rf - best_classic))
    run_id = parent.info.run_id
    listed = {a.path for folder in ("", "results", "figures") for a in client.list_artifacts(run_id, folder)}
    assert {"results/auroc_table.csv", "results/auroc_table.md", "figures/auroc_by_method.png"} <= listed
    text = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/results/auroc_table.md")
    tables = markdown_tables(text)  # one per tier, each with the models that have a scorer of it
    assert [row[0] for row in tables["oracle"][1:]] == ["classifier", "hybrid", "godin", "oracle_rep"]
    assert [row[0] for row in tables["classic"][1:]] == ["classifier", "hybrid", "godin"]
    assert text.startswith("**dataset**: digits") and tables["gaps"][0][0] == "gap"
    assert tables["classic"][0] == ["model", "msp", "entropy", "max_logit", "energy"]
    assert tables["feature"][0] == ["model", *feature]
    assert tables["oracle"][0] == ["model", "oracle_rf", "oracle_linear", "oracle_knn"]


def test_main_scores_the_far_sets_beside_the_held_out_classes(study):
    client, parent, children = study
    child = children["classifier"]
    c, m = child.data.metrics, parent.data.metrics
    for name in ("gaussian", "uniform"):
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            assert 0 <= c[f"test/ood/{name}/knn/{metric}"] <= 1
            assert c[f"test/ood/{name}/knn/{metric}_ci_low"] <= c[f"test/ood/{name}/knn/{metric}_ci_high"]
        # the oracles fitted on the held-out classes' validation anomalies score every set too
        assert m[f"test/ood/{name}/classifier/oracle_rf/auroc"] == c[f"test/ood/{name}/oracle_rf/auroc"]
        assert f"test/ood/{name}/oracle_rep/oracle_rf/auroc" in m
        gap = m[f"test/ood/{name}/classifier/max_logit/near_harder"]
        assert gap == pytest.approx(c[f"test/ood/{name}/max_logit/auroc"] - c["test/max_logit/auroc"])
        assert m[f"test/ood/{name}/classifier/max_logit/near_harder_ci_low"] <= gap \
            <= m[f"test/ood/{name}/classifier/max_logit/near_harder_ci_high"]
        assert 0 <= m[f"test/ood/{name}/classifier/max_logit/near_harder_p"] <= 1
    inputs = {d.dataset.name: [t.value for t in d.tags] for d in child.inputs.dataset_inputs}
    assert inputs["gaussian"] == ["ood"] and inputs["uniform"] == ["ood"]
    assert child.data.tags["ood/gaussian/images"] == str(len_anomalies(child))  # ood_count 0: as many
    # OSCR for every scorer that ranks images, with intervals, on the child and the parent
    assert 0 <= c["test/max_logit/oscr"] <= c["test/acc"]
    assert c["test/max_logit/oscr_ci_low"] <= c["test/max_logit/oscr_ci_high"]
    assert m["test/classifier/knn/oscr"] == c["test/knn/oscr"] and "test/classifier/knn/oscr_ci_high" in m
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/near_vs_far.png" in listed
    tables = markdown_tables(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/results/auroc_table.md"))
    far = {row[0]: row[1:] for row in tables["far set gaussian"][1:]}
    assert tables["far set gaussian"][0] == ["scorer", "classifier", "hybrid", "godin", "oracle_rep"]
    assert far["max_logit"][0].startswith(f"{m['test/ood/gaussian/classifier/max_logit/auroc']:.3f} (")


def len_anomalies(run) -> int:
    """The test split's anomaly count, from the run's outputs (a built-in set's default size)."""
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="outputs/test_scores.npz")
    with np.load(path) as scores:
        return int(scores["is_anomaly"].sum())


def test_main_logs_metrics_params_and_tags(main_run):
    client, run = main_run
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for scorer in ("msp", "entropy", "max_logit", "energy"):
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            assert 0.0 <= m[f"test/{scorer}/{metric}"] <= 1.0
    assert m["test/max_logit/auroc"] > 0.6  # a trained classifier beats chance on digits
    assert 0.5 < m["test/acc"] <= 1.0
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [h.step for h in history] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    assert run.data.params["dataset"] == "digits" and run.data.params["arch"] == "resnet8"
    tags = run.data.tags
    assert tags["dataset"] == "digits" and tags["arch"] == "resnet8" and tags["seed"] == "0"
    assert tags["split"] == "0" and len(tags["git_commit"]) in (40, len("unknown"))


def test_main_logs_artifacts(main_run, tmp_path):
    client, run = main_run
    run_id = run.info.run_id
    listed = {a.path for folder in ("", "model", "outputs", "figures", "split", "environment")
              for a in client.list_artifacts(run_id, folder)}
    assert {"config.json", "split/manifest.json", "outputs/train.npz", "outputs/val.npz", "outputs/test.npz",
            "figures/roc.png",
            "figures/score_histograms.png", "model/weights.pt", "environment/versions.json"} <= listed
    manifest = mlflow.artifacts.load_dict(f"runs:/{run_id}/split/manifest.json")
    assert manifest["hash"] == run.data.tags["split_hash"]
    local = client.download_artifacts(run_id, "outputs/test.npz", str(tmp_path))
    with np.load(local) as test:
        assert len(test["labels"]) == len(manifest["test"]) and test["z"].shape[0] == len(manifest["test"])
        assert (test["labels"] == -1).any()


def test_logged_model_serves_the_evaluated_logits(main_run, mlflow_server, tmp_path):
    client, run = main_run
    [model] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                          filter_string=f"source_run_id = '{run.info.run_id}'")
    signature = mlflow.models.get_model_info(model.model_uri).signature
    assert signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
    manifest = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/split/manifest.json")
    images = load_source(ExperimentConfig()).read(np.asarray(manifest["test"])).numpy().astype(np.float32)
    served = mlflow.pyfunc.load_model(model.model_uri).predict(images)
    assert run.data.tags["extract_precision"] == "float32"
    with np.load(client.download_artifacts(run.info.run_id, "outputs/test.npz", str(tmp_path))) as test:
        np.testing.assert_allclose(served, test["logits"], atol=1e-3)


def test_evaluate_entry_point_reproduces_the_metrics(main_run, mlflow_server, tmp_path):
    client, run = main_run
    proc = mlflow_run(mlflow_server, tmp_path, "-e", "evaluate", "-P", f"train_run_id={run.info.run_id}",
                      "-P", "ood_sets=uniform", "-P", "ood_count=50")  # other far sets than the train run's
    assert proc.returncode == 0, proc.stderr[-4000:]
    [again] = client.search_runs([run.info.experiment_id], f"tags.train_run_id = '{run.info.run_id}'")
    assert again.info.status == "FINISHED"
    for key in ("test/acc", "test/max_logit/auroc", "test/energy/fpr95"):
        assert again.data.metrics[key] == pytest.approx(run.data.metrics[key], abs=1e-6)
    assert again.data.tags["ood/uniform/images"] == "50" and "ood/gaussian/images" not in again.data.tags
    assert "test/ood/uniform/max_logit/near_harder" in again.data.metrics


def test_bad_parameter_fails_the_run(mlflow_server, tmp_path):
    proc = mlflow_run(mlflow_server, tmp_path, "-P", "lr=-1", "-P", "epochs=1")
    assert proc.returncode != 0
    assert "anomaly-repr: error: lr must be positive" in proc.stderr
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("e2e")
    [run] = client.search_runs([experiment.experiment_id], "params.lr = '-1'")  # the parent `mlflow run` made
    assert run.info.status == "FAILED"


@pytest.mark.slow  # main on digits covers the entry point in CI; test_reproduce.py covers several seeds in process
def test_reproduce_on_an_image_folder_with_several_seeds(mlflow_server, tmp_path):
    for c, name in enumerate(["beetle", "leaf", "moth", "rock", "wasp"]):
        for i in range(8):
            write_image(tmp_path / "photos" / name / f"{i}.png", (10, 10), 30 + 45 * c + i)
    for i in range(4):  # debris photos, one unreadable: a far set of the user's own
        write_image(tmp_path / "rocks" / f"stone{i}.png", (14, 12), 200 - 20 * i, fmt="PNG")
    (tmp_path / "rocks" / "broken.jpg").write_bytes(b"junk")
    params = {"dataset": "imagefolder", "data_root": tmp_path / "photos", "image_size": 8, "seed": "0,1",
              "known_classes": "beetle,moth,wasp", "epochs": 3, "batch_size": 8, "oracle_trees": 30,
              "recon_weight": 0, "godin": "false", "bad_images": "skip",
              "ood_sets": f"digits,gaussian,rocks={tmp_path / 'rocks'}"}
    pairs = [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    proc = mlflow_run(mlflow_server, tmp_path, "-e", "reproduce", *pairs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(mlflow_server)  # for the `runs:/` URIs below, whichever test ran before
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("e2e")
    [parent] = client.search_runs([experiment.experiment_id],
                                  "params.dataset = 'imagefolder' and tags.stage = 'reproduce'")
    assert parent.info.status == "FINISHED" and parent.data.params["seed"] == "0,1"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((c.data.tags["model"], c.data.params["seed"]) for c in children) == [
        ("classifier", "0"), ("classifier", "1"), ("oracle_rep", "0"), ("oracle_rep", "1")]
    m = parent.data.metrics
    per_seed = [c.data.metrics["test/max_logit/auroc"] for c in children if c.data.tags["model"] == "classifier"]
    assert m["test/classifier/max_logit/auroc"] == pytest.approx(sum(per_seed) / 2)
    assert m["test/classifier/max_logit/auroc_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert m["test/oracle_rep/oracle_rf/auroc_std"] >= 0
    assert "test/q3_gap" not in m  # no hybrid in this study
    assert "+-" in mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/results/auroc_table.csv")
    # the far sets: digits rendered to 8x8 RGB, noise, and the rocks folder less its unreadable file
    for name in ("digits", "gaussian", "rocks"):
        key = f"test/ood/{name}/classifier/max_logit"
        per_seed = [c.data.metrics[f"test/ood/{name}/max_logit/auroc"] - c.data.metrics["test/max_logit/auroc"]
                    for c in children if c.data.tags["model"] == "classifier"]
        assert m[f"{key}/near_harder"] == pytest.approx(np.mean(per_seed))
        assert m[f"{key}/near_harder_std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert m[f"{key}/near_harder_ci_low"] <= m[f"{key}/near_harder_ci_high"]
        assert f"test/ood/{name}/oracle_rep/oracle_rf/auroc" in m
    child = next(c for c in children if c.data.tags["model"] == "classifier")
    assert child.data.tags["ood/rocks/images"] == "4" and child.data.tags["ood/rocks/bad_images"] == "1"
    [rocks] = [d for d in child.inputs.dataset_inputs if d.dataset.name == "rocks"]
    assert [t.value for t in rocks.tags] == ["ood"] and len(rocks.dataset.digest) == 16
    assert str(tmp_path / "rocks") in rocks.dataset.source
    assert "figures/near_vs_far.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}


def test_reproduce_with_jem_and_csi_against_the_server(mlflow_server, tmp_path):
    parent, children = reproduce_parent(mlflow_server, tmp_path, {
        "methods": "classifier,jem,csi", "epochs": 1, "csi_epochs": 1, "csi_jitter": 0, "jem_sgld_steps": 2,
        "jem_buffer_size": 200, "lr": 0.05, "oracle_trees": 20, "bootstrap": 50, "val_auroc_every": 0},
        "params.methods = 'classifier,jem,csi'")
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["method"] for c in children) == ["classifier", "csi", "jem"]
    m = parent.data.metrics
    own = {"jem": ("jem_px", "jem_py", "jem_pxgrad"), "csi": ("csi", "csi_ens", "csi_unlabeled")}
    for method, scorers in own.items():
        assert {f"test/gain/{method}/oracle_rf", f"test/gain/{method}/best_score"} <= set(m), method
        assert all(0 <= m[f"test/{method}/{s}/auroc"] <= 1 for s in scorers), method


def test_reproduce_with_two_augmentation_policies_against_the_server(mlflow_server, tmp_path):
    parent, children = reproduce_parent(mlflow_server, tmp_path, {
        "augment": "crop_flip,trivialaugment", "methods": "classifier", "epochs": 2, "oracle_trees": 20,
        "bootstrap": 50, "val_auroc_every": 0}, "params.augment = 'crop_flip,trivialaugment'")
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["augment"] for c in children) == ["crop_flip", "trivialaugment"]
    m = parent.data.metrics
    assert {"test/classifier.trivialaugment/max_logit/auroc", "test/gain/classifier.trivialaugment/max_logit",
            "test/gain/classifier.trivialaugment/acc", "test/classifier/max_logit/auroc"} <= set(m)
    assert "| classifier.trivialaugment |" in mlflow.artifacts.load_text(
        f"runs:/{parent.info.run_id}/results/auroc_table.md")
