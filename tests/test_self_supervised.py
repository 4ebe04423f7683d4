"""Self-supervised auxiliary tasks: rotation, GEOM, recolouring and Sobel edges."""

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from test_cli import assert_clean_failure, cli_in_process

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError, DataError
from anomaly_repr.methods import method_for
from anomaly_repr.methods.auxiliary import draw_transforms, views
from anomaly_repr.methods.geom import dirichlet_logpdf, fit_dirichlet, geom_parameters, geometric, inverse_digamma
from anomaly_repr.methods.recolor import PERMUTATIONS, permute
from anomaly_repr.methods.rotation import kl_from_uniform, rotate, rotation_score
from anomaly_repr.methods.sobel import sobel_edges
from anomaly_repr.scoring.outputs import Outputs, extract
from anomaly_repr.scoring.scorers import make_scorer
from anomaly_repr.study.cells import Study
from anomaly_repr.study.reproduce import run_reproduce

from conftest import assert_gains, best_deployable_auroc, markdown_tables, reproduce_parent, write_image

NO_AUTOCAST = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731


# --- the transforms are exact ------------------------------------------------------------------------------

def test_four_quarter_turns_are_the_identity_and_each_turn_is_rot90():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(rotate(1)(rotate(1)(rotate(1)(rotate(1)(x)))), x)
    assert torch.equal(rotate(0)(x), x) and torch.equal(rotate(2)(x), x.flip(2).flip(3))
    assert rotate(1)(x)[0, 0, 0, 0] == x[0, 0, 0, -1]  # counter-clockwise: the top-right pixel comes to the top-left


@pytest.mark.parametrize("count", [8, 18, 72])
def test_geom_transform_sets_are_distinct_with_the_identity_first(count):
    x = torch.randn(1, 3, 32, 32)
    params = geom_parameters(count, 32)
    assert len(params) == len(set(params)) == count and params[0] == (False, 0, 0, 0)
    outs = torch.cat([geometric(*p)(x) for p in params]).flatten(1)
    assert torch.equal(outs[0], x.flatten())
    assert (torch.cdist(outs, outs) + torch.eye(count) * 1e9).min() > 1.0  # no two transforms give the same image
    shifts = {abs(p[1]) for p in params} | {abs(p[2]) for p in params}
    assert shifts == ({0, 8} if count > 8 else {0})


def test_a_geom_shift_moves_the_content_with_reflect_padding():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    shifted = geometric(False, 1, 0, 0)(x)  # one pixel to the right
    assert torch.equal(shifted[..., 1:], x[..., :-1]) and torch.equal(shifted[..., 0], x[..., 1])  # reflected
    down = geometric(False, 0, 1, 0)(x)
    assert torch.equal(down[..., 1:, :], x[..., :-1, :])


def test_a_channel_permutation_and_its_inverse():
    x = torch.randn(2, 3, 4, 4)
    assert PERMUTATIONS[0] == (0, 1, 2) and len(set(PERMUTATIONS)) == 6
    for order in PERMUTATIONS:
        inverse = tuple(int(i) for i in np.argsort(order))
        assert torch.equal(permute(inverse)(permute(order)(x)), x)
        assert torch.equal(permute(order)(x)[:, 0], x[:, order[0]])


def test_views_hold_every_image_upright_then_its_drawn_transforms():
    x = torch.randn(3, 1, 4, 4)
    transforms = [rotate(k) for k in range(4)]
    batch, targets = views(x, transforms, draw_transforms(3, 4, 0))
    assert batch.shape == (12, 1, 4, 4) and torch.equal(batch[:3], x)
    assert sorted(targets.tolist()) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for view, t in zip(batch, targets, strict=True):  # each view is some image under its target's rotation
        assert any(torch.equal(view, transforms[int(t)](x[i:i + 1])[0]) for i in range(3))
    drawn = draw_transforms(5, 72, 2)
    assert drawn.shape == (5, 2) and drawn.min() >= 1 and drawn.max() < 72
    assert views(x, transforms, draw_transforms(3, 4, 1))[0].shape == (6, 1, 4, 4)


def test_sobel_edges_of_a_step():
    x = torch.zeros(1, 3, 6, 6)
    x[..., 3:] = 1.0  # a vertical step between columns 2 and 3
    edges = sobel_edges(x)[0, 0]
    assert torch.allclose(edges[:, 2:4], torch.full((6, 2), 0.5)) and edges[:, [0, 1, 4, 5]].abs().max() == 0


# --- scores on hand-made outputs --------------------------------------------------------------------------

def test_the_rotation_score_on_hand_made_log_probabilities():
    flat, sure = np.zeros((1, 4)), np.array([[10.0, 0.0, 0.0, 0.0]])
    assert kl_from_uniform(flat) == pytest.approx([0.0])
    p = np.exp(sure[0]) / np.exp(sure[0]).sum()
    assert kl_from_uniform(sure) == pytest.approx([np.sum(0.25 * np.log(0.25 / p))])
    logp = np.log([[0.9, 0.8, 0.7, 0.6], [0.3, 0.2, 0.25, 0.25]])
    scores = rotation_score(np.vstack([sure, flat]), logp)
    assert scores == pytest.approx([-(kl_from_uniform(sure)[0] + logp[0].mean()), -logp[1].mean()])
    assert scores[0] < scores[1]  # a confident class and recognised rotations: the nominal one
    rotation_only = make_scorer("rotation_only", ExperimentConfig())
    outputs = Outputs(np.zeros((2, 2)), np.zeros((2, 4)), np.zeros(2), rotation_logp=logp)
    assert rotation_only.fit(outputs).score(outputs) == pytest.approx(-logp.mean(axis=1))


def test_inverse_digamma_and_the_dirichlet_fit_recover_known_values():
    from scipy.special import digamma
    y = np.array([-5.0, -1.0, 0.0, 2.0])
    assert digamma(inverse_digamma(y)) == pytest.approx(y, abs=1e-10)
    alpha = np.array([0.5, 2.0, 5.0])
    samples = np.random.default_rng(0).dirichlet(alpha, size=20000)
    fitted = fit_dirichlet(np.log(samples))
    assert fitted == pytest.approx(alpha, rel=0.05)
    from scipy.stats import dirichlet
    assert dirichlet_logpdf(np.log(samples[:3]), alpha) == pytest.approx(
        [dirichlet.logpdf(s, alpha) for s in samples[:3]])


# --- training -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rotation", "geom", "recolor", "sobel"])
def test_each_auxiliary_loss_falls_on_a_fixed_batch(name):
    cfg = ExperimentConfig(method=name, geom_transforms=8, aux_weight=1.0)
    method = method_for(cfg)
    torch.manual_seed(0)
    model = method.build(num_classes=3, in_channels=3, image_size=8)
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 3, (16,))

    def aux_loss() -> float:
        model.eval()
        with torch.no_grad():
            if name == "sobel":
                return float(method.edge_error(model(x), x).mean())
            transforms = method.transforms(3, 8)
            batch, targets = views(x, transforms, draw_transforms(len(x), len(transforms), 0))
            return float(F.cross_entropy(model(batch).extras["aux"], targets))

    before = aux_loss()
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.05, momentum=0.9)
    for _ in range(30):
        model.train()
        method.train_step(model, optimizer, x, y, NO_AUTOCAST)
    assert aux_loss() < 0.7 * before


def test_aux_samples_draw_fewer_views_per_image(monkeypatch):
    method = method_for(ExperimentConfig(method="geom", geom_transforms=72, aux_samples=3))
    model = method.build(num_classes=3, in_channels=3, image_size=8)
    seen = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, x: seen.append(len(x)) or forward(self, x))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method.train_step(model, optimizer, torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), NO_AUTOCAST)
    assert seen == [4 * (1 + 3)]


def test_extraction_scores_every_transform_of_every_image():
    method = method_for(ExperimentConfig(method="geom", geom_transforms=8))
    torch.manual_seed(0)
    model = method.build(num_classes=3, in_channels=3, image_size=8).eval()
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    norm = Normalizer.fit(images)
    full = method.transform_logp(model, images, norm, torch.device("cpu"))
    assert full.shape == (5, 8, 8) and np.allclose(np.exp(full).sum(axis=2), 1, atol=1e-5)
    x = norm(images[2:3])  # image 2 under transform 5, by hand
    with torch.no_grad():
        by_hand = F.log_softmax(model(method.transforms(3, 8)[5](x)).extras["aux"], dim=1)[0]
    assert np.allclose(full[2, 5], by_hand.numpy(), atol=1e-5)
    calibration = method.calibrate(model, images, norm, torch.device("cpu"), images)
    assert calibration.values["dirichlet_alpha"].shape == (8, 8)
    extras = method.extra_passes(model, images, norm, torch.device("cpu"), calibration)
    assert np.allclose(extras["geom_logp"], np.diagonal(full, axis1=1, axis2=2), atol=1e-5)
    assert extras["geom_dirichlet_nll"].shape == (5,) and np.isfinite(extras["geom_dirichlet_nll"]).all()
    plain = extract(model, images, np.zeros(5), norm, torch.device("cpu"))
    with torch.no_grad():
        assert np.allclose(plain.logits, model(norm(images)).logits.numpy(), atol=1e-5)  # class logits: upright


# --- configuration and bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"geom_transforms": 10}, "geom_transforms must be one of 8, 18, 72, got 10"),
    ({"aux_weight": -1.0}, "aux_weight and aux_samples must not be negative"),
    ({"aux_samples": -2}, "aux_weight and aux_samples must not be negative"),
])
def test_bad_settings_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(method="geom", **change)


def test_recolor_refuses_single_channel_data(tracking, capsys):
    with pytest.raises(DataError, match="method=recolor permutes the RGB channels"):
        method_for(ExperimentConfig(method="recolor")).build(3, 1, 8)
    proc = cli_in_process(capsys, "train", "--method", "recolor", "--epochs", "1")  # digits: one channel
    assert_clean_failure(proc, "method=recolor permutes the RGB channels, but the digits images have 1 channel",
                         tracking)
    proc = cli_in_process(capsys, "reproduce", "--methods", "classifier,recolor", "--epochs", "1")
    assert_clean_failure(proc, "method=recolor permutes the RGB channels", tracking)


def test_tune_targets_search_the_auxiliary_weight():
    from tuning.config import TuneConfig
    from tuning.space import method_of

    for name, scorer in [("rotation", "rotation"), ("geom", "geom"), ("recolor", "recolor"), ("sobel", "sobel_error")]:
        assert TuneConfig(target=name).scorers == [scorer]
        assert method_of(name, ExperimentConfig()).cfg.method == name


def test_a_rotation_study_searches_aux_weight_on_validation_data(tracking):
    import optuna

    from tuning.config import TuneConfig
    from tuning.study import run_tune

    cfg = ExperimentConfig(epochs=1, batch_size=64, oracle_trees=20, device="cpu", bootstrap=0)  # digits
    parent_id = run_tune(cfg, TuneConfig(target="rotation", n_trials=2, startup_trials=1, pruner="none",
                                         heartbeat_interval=2, study_name="rot"))
    study = optuna.load_study(study_name="rot", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.trials[0].params == {"aux_weight": 1.0}  # the papers' weight, enqueued first
    assert 0.1 <= study.trials[1].params["aux_weight"] <= 10
    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_params.aux_weight"]
    m = parent.data.metrics
    assert m["val/rotation/auroc"] == pytest.approx(study.best_value)  # the best trial's objective
    children = mlflow.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                  output_format="list")
    [test_run] = [r for r in children if r.data.tags["stage"] == "test"]
    assert test_run.info.run_name == f"rotation test of trial {study.best_trial.number}"
    assert m["test/rotation/auroc"] == pytest.approx(test_run.data.metrics["test/rotation/auroc"])
    assert m["tune/val_test_gap"] == pytest.approx(m["val/rotation/auroc"] - m["test/rotation/auroc"])


# --- through the study ---------------------------------------------------------------------------------------

@pytest.fixture
def rgb_folder(tmp_path):
    for c, name in enumerate(["beetle", "leaf", "moth", "rock", "wasp"]):
        for i in range(10):
            write_image(tmp_path / "rgb" / name / f"{i}.png", (10, 10), 30 + 45 * c + i)
    return tmp_path / "rgb"


def test_reproduce_trains_the_four_tasks_and_logs_their_gains(tracking, rgb_folder):
    base = ExperimentConfig(dataset="imagefolder", data_root=str(rgb_folder), image_size=8,
                            known_classes="beetle,moth,wasp", epochs=2, batch_size=8, oracle_trees=20,
                            geom_transforms=8, bootstrap=50, device="cpu")
    methods = ("classifier", "rotation", "geom", "recolor", "sobel")
    parent_id = run_reproduce(Study(base, methods=methods))
    client = MlflowClient(tracking)
    parent = client.get_run(parent_id)
    m = parent.data.metrics
    own = {"rotation": ["rotation", "rotation_only"], "geom": ["geom", "geom_dirichlet"], "recolor": ["recolor"],
           "sobel": ["sobel_error"]}
    for method, scorers in own.items():
        assert [s for s in scorers if f"test/{method}/{s}/auroc" not in m] == []
        assert f"test/classifier/{scorers[0]}/auroc" not in m
        gain = m[f"test/{method}/oracle_rf/auroc"] - m["test/classifier/oracle_rf/auroc"]
        assert m[f"test/gain/{method}/oracle_rf"] == pytest.approx(gain)
        best = best_deployable_auroc(parent, method) - best_deployable_auroc(parent, "classifier")
        assert m[f"test/gain/{method}/best_score"] == pytest.approx(best)
    tables = markdown_tables(mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md"))
    assert [row[0] for row in tables["oracle"][1:]] == list(methods)
    [child] = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                 f"tags.mlflow.parentRunId = '{parent_id}' and tags.method = 'geom'")
    assert child.data.params["geom_transforms"] == "8" and child.data.metrics["geom/dirichlet_fit_images"] > 0
    alpha = mlflow.artifacts.load_dict(f"runs:/{child.info.run_id}/geom/dirichlet_alpha.json")
    assert np.array(alpha).shape == (8, 8)
    with np.load(mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="outputs/test.npz")) as f:
        assert f["geom_logp"].shape == (len(f["labels"]), 8)


def test_mlflow_run_reproduce_with_rotation(mlflow_server, tmp_path, rgb_folder):
    parent, children = reproduce_parent(mlflow_server, tmp_path, {
        "dataset": "imagefolder", "data_root": rgb_folder, "image_size": 8, "known_classes": "beetle,moth,wasp",
        "epochs": 2, "batch_size": 8, "oracle_trees": 20, "bootstrap": 50, "methods": "classifier,rotation"},
        "params.methods = 'classifier,rotation'")
    assert parent.info.status == "FINISHED"
    assert_gains(parent.info.run_id, "rotation", own="rotation")
    assert sorted(c.data.params["method"] for c in children) == ["classifier", "rotation"]


def test_the_logged_model_serves_class_and_auxiliary_logits(tracking):
    from anomaly_repr.tracking.store import log_model

    method = method_for(ExperimentConfig(method="rotation"))
    torch.manual_seed(0)
    model = method.build(num_classes=3, in_channels=3, image_size=8).eval()
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    norm = Normalizer.fit(pixels)
    with mlflow.start_run():
        model_id = log_model(model, norm, pixels)
    uri = f"models:/{model_id}"
    assert mlflow.models.get_model_info(uri).metadata["outputs"] == {"logits": [0, 3], "aux_logits": [3, 7]}
    served = mlflow.pyfunc.load_model(uri).predict(pixels.float().numpy())
    with torch.no_grad():
        out = model(norm(pixels))
    assert np.allclose(served[:, :3], out.logits.numpy(), atol=1e-4)
    assert np.allclose(served[:, 3:], out.extras["aux"].numpy(), atol=1e-4)
