"""CSI: the supervised contrastive loss by hand, rotations, LARS, the two stages in one run (the backbone frozen
in the second), resume across stages, the time budget, its scorers, and CSI in `reproduce` and `tune`."""

from __future__ import annotations

import contextlib
import math

import mlflow
import numpy as np
import pytest
import torch

import anomaly_repr.engine.train as train_module
from anomaly_repr.cli import main
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.engine.evaluation import extract_parts
from anomaly_repr.engine.workflow import Prepared, fit, new_model, prepare
from anomaly_repr.errors import BudgetError, ConfigError
from anomaly_repr.methods import csi as csi_module
from anomaly_repr.methods import method_for
from anomaly_repr.methods import views as views_module
from anomaly_repr.methods.csi import (
    Csi,
    CsiNet,
    joint_labels,
    rotation_ensemble,
    rotations,
    supcon_loss,
    unlabeled_score,
)
from anomaly_repr.methods.lars import Lars
from anomaly_repr.methods.views import resized_crop_flip, rotated_views, simclr_view
from anomaly_repr.study.cells import Study
from anomaly_repr.study.reproduce import run_reproduce

from conftest import assert_gains

FAST = ExperimentConfig(method="csi", csi_epochs=1, epochs=2, device="cpu", oracle_trees=20, bootstrap=50,
                        val_auroc_every=0, csi_jitter=0.0)  # digits have one channel: no colour jitter


def test_the_supervised_contrastive_loss_by_hand():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # anchors 0 and 1 are each other's positive against one negative at similarity 0; anchor 2 has none
    expected = 2 * -math.log(math.e / (math.e + 1)) / 3
    assert supcon_loss(features, torch.tensor([0, 0, 1]), temperature=1.0).item() == pytest.approx(expected)
    colder = supcon_loss(features, torch.tensor([0, 0, 1]), temperature=0.5).item()
    assert colder == pytest.approx(2 * -math.log(math.e ** 2 / (math.e ** 2 + 1)) / 3)


def test_the_supervised_contrastive_loss_by_hand_on_four_samples():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    e = math.e
    # anchor: -log(exp(positive's similarity) / sum of exp(the other three's similarities))
    expected = [math.log(e + 1 + 1 / e) - 1, math.log(e + 1 + 1 / e) - 1, math.log(3), math.log(1 + 2 / e)]
    loss = supcon_loss(features, torch.tensor([0, 0, 1, 1]), temperature=1.0).item()
    assert loss == pytest.approx(sum(expected) / 4)


def test_simclr_views_distort_colour_only_at_a_positive_jitter():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = simclr_view(x, torch.Generator().manual_seed(1), 0.0)
    assert torch.equal(plain, resized_crop_flip(x, torch.Generator().manual_seed(1)))
    coloured = simclr_view(x, torch.Generator().manual_seed(1), 0.4)  # the same crops, then colour
    grey = ((coloured[:, 0] == coloured[:, 1]) & (coloured[:, 1] == coloured[:, 2])).flatten(1).all(1)
    changed = (coloured - plain).flatten(1).abs().amax(1) > 1e-3
    assert 0 < grey.sum() < 32 and changed.float().mean() > 0.5  # greyscale p 0.2; jitter p 0.8
    assert coloured.min() >= 0 and coloured.max() <= 1


def test_single_channel_data_with_colour_jitter_is_refused(tracking, capsys):
    assert main(["train", "--method", "csi", "--csi_epochs", "1", "--epochs", "1", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "anomaly-repr: error: method=csi's colour jitter needs RGB images, but the digits images have 1 channel(s); "
        "set csi_jitter=0")


def test_four_rotations_in_turn():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    turned = rotations(x)
    assert turned.shape == (8, 1, 3, 3)
    for k in range(4):
        assert torch.equal(turned[2 * k:2 * k + 2], torch.rot90(x, k, dims=(-2, -1)))


def test_joint_labels_pair_each_turned_image_with_its_class_and_rotation():
    y = torch.tensor([2, 0, 1])
    x = torch.randn(3, 1, 3, 3)
    turned, labels = rotations(x), joint_labels(y)
    assert labels.shape == (12,)
    for i, label in enumerate(labels.tolist()):
        c, k = divmod(label, 4)
        assert c == y[i % 3] and torch.equal(turned[i], torch.rot90(x[i % 3], k, dims=(-2, -1)))


def test_csi_ens_on_hand_made_joint_logits():
    # one image, two classes; row k holds the joint head on the image turned by k, output c * 4 + j
    joint = torch.full((4, 8), 100.0)  # the blocks of the other rotations: they must be ignored
    for k, (a, b) in enumerate([(math.log(3), 0.0), (0.0, 0.0), (math.log(3), 0.0), (0.0, math.log(3))]):
        joint[k, 0 * 4 + k], joint[k, 1 * 4 + k] = a, b
    # block logits averaged over the rotations (the reference code's CSI-ens): log(3)/2 and log(3)/4, then the
    # softmax: sqrt(3) / (sqrt(3) + 3 ** 0.25) = 0.568 (averaging the softmaxes instead would give 0.5625)
    assert rotation_ensemble(joint).tolist() == pytest.approx([1 - math.sqrt(3) / (math.sqrt(3) + 3 ** 0.25)])


def test_a_contrastive_view_flips_before_it_rotates(monkeypatch):
    """A flip after a 90-degree turn would be a flipped 270-degree turn: each image's four turns in a view
    must be turns of one image, flipped or not as a whole."""
    monkeypatch.setattr(views_module, "simclr_view", lambda x, generator, jitter, flip: x)  # crops aside
    x = torch.rand(16, 3, 5, 5)
    normalizer = Normalizer(torch.zeros(3), torch.ones(3))
    flipped_any = False
    for view in rotated_views(x, normalizer, 2, torch.Generator().manual_seed(0), 0.0):
        assert view.shape == (64, 3, 5, 5)
        upright = [torch.rot90(view[16 * k:16 * (k + 1)], -k, dims=(-2, -1)) for k in range(4)]
        assert all(torch.allclose(upright[0], u) for u in upright[1:])
        assert all(torch.allclose(upright[0][i], x[i]) or torch.allclose(upright[0][i], x[i].flip(-1))
                   for i in range(16))
        flipped_any |= not torch.allclose(upright[0], x)
    assert flipped_any
    # without its flip, a view's crop is the same crop, unmirrored
    plain = resized_crop_flip(x, torch.Generator().manual_seed(3), flip=False)
    either = resized_crop_flip(x, torch.Generator().manual_seed(3), flip=True)
    mirrored = [not torch.allclose(plain[i], either[i], atol=1e-5) for i in range(16)]
    assert any(mirrored) and all(torch.allclose(plain[i].flip(-1), either[i], atol=1e-5)
                                 for i in range(16) if mirrored[i])


def test_csi_unlabeled_reads_no_anomaly_of_the_training_or_validation_split(tracking):
    prep = prepare(FAST.replace(csi_test_views=1))
    anomalies = {int(i) for part in (prep.split.train, prep.split.val) for i in part[prep.open_labels[part] < 0]}
    assert anomalies

    class Sealed(Prepared):
        def images(self, index):
            if anomalies & set(index.tolist()):
                raise AssertionError("an anomaly of the training or validation split was read")
            return super().images(index)

    torch.manual_seed(0)
    model, normalizer = new_model(prep), Normalizer.fit(prep.images(prep.split.train))
    outputs, calibration = extract_parts(Sealed(**vars(prep)), model, normalizer, {"test": prep.split.test})
    nominal_train = prep.images(prep.split.nominal(prep.split.train, prep.data.labels))
    method = method_for(prep.cfg)
    assert isinstance(method, Csi)
    expected = method._features(model, nominal_train, normalizer, torch.device("cpu"), 1)[0]
    # the bank: the nominal training images, read through as many views as a test image
    assert torch.allclose(calibration.values["reference"], torch.nn.functional.normalize(expected, dim=-1))
    assert np.isfinite(outputs["test"].csi_unlabeled).all()


def test_csi_unlabeled_is_the_papers_score_on_hand_made_features():
    # two rotations' worth of the four: z_0 = (3, 4) against a bank holding (1, 0) and (0, 1): the best cosine
    # similarity times |z| is the largest coordinate, 4
    projections = torch.zeros(1, 4, 2)
    projections[0, 0] = torch.tensor([3.0, 4.0])
    projections[0, 1] = torch.tensor([-1.0, 0.0])
    bank = torch.zeros(2, 4, 2)
    bank[0, :, 0] = 1.0
    bank[1, :, 1] = 1.0
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.0]])  # raw logits, negative ones too: no softmax
    weights = (torch.tensor([1.0, 2.0, 1.0, 1.0]), torch.tensor([0.5, 1.0, 1.0, 1.0]))
    score = unlabeled_score(projections, logits, bank, weights)
    assert score.tolist() == pytest.approx([4 * 1.0 + 0 * 2.0 + 2 * 0.5 - 1 * 1.0])


def test_csi_unlabeled_averages_each_rotations_features_over_views_before_it_scores(monkeypatch):
    prep = prepare(FAST.replace(csi_test_views=2))
    torch.manual_seed(0)
    model, normalizer = new_model(prep), Normalizer.fit(prep.images(prep.split.train))
    method = method_for(prep.cfg)
    assert isinstance(method, Csi) and isinstance(model, CsiNet)
    images = prep.images(prep.split.test[:8])
    x = normalizer(images)
    seen = [rotations(x), rotations(x.flip(-1) * 0.5)]  # two stand-in views of the four turns
    monkeypatch.setattr(csi_module, "rotated_views", lambda *args: iter(seen))
    projections, logits = method._features(model, images, normalizer, torch.device("cpu"), 2)
    model.eval()
    with torch.no_grad():
        outs = [model(v) for v in seen]
    proj = torch.stack([o.extras["projection"].view(4, 8, -1).transpose(0, 1) for o in outs]).mean(dim=0)
    raw = torch.stack([torch.stack([o.extras["rotation"].view(4, 8, 4)[k, :, k] for k in range(4)], dim=1)
                       for o in outs]).mean(dim=0)
    assert torch.allclose(projections, proj, atol=1e-5)  # features averaged, not normalised, over the views
    assert torch.allclose(logits, raw, atol=1e-5)  # the raw logit of the right rotation, not its probability


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_supcsi_trains_the_contrastive_loss_alone_unless_a_rotation_weight_asks(weight):
    prep = prepare(FAST.replace(csi_rotation_weight=weight))
    method = method_for(prep.cfg)
    assert isinstance(method, Csi)
    model, normalizer = new_model(prep), Normalizer.fit(prep.images(prep.split.train))
    method.start(normalizer, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    index = prep.split.nominal(prep.split.train, prep.data.labels)[:16]
    method.train_step(model, optimizer, normalizer(prep.images(index)), torch.tensor(prep.open_labels[index]),
                      contextlib.nullcontext)
    touched = model.rotation.weight.grad is not None
    assert touched == (weight > 0)  # SupCSI's stage 1 leaves the rotation head to the linear stage


def test_lars_scales_each_layers_step_by_its_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    w.grad = torch.tensor([0.0, 2.0])  # with weight decay 0.5: grad + wd w = (1.5, 4), |.| = sqrt(18.25)
    Lars([{"params": [w], "weight_decay": 0.5}], lr=1.0, momentum=0.0).step()
    step = 0.001 * 5 / math.sqrt(18.25) * torch.tensor([1.5, 4.0])
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - step)


def test_the_stages_log_their_curves_and_the_second_keeps_the_backbone(tracking):
    assert main(["train", "--method", "csi", "--csi_jitter", "0", "--csi_epochs", "1", "--epochs", "2",
                 "--device", "cpu", "--val_auroc_every", "1"]) == 0
    client = mlflow.MlflowClient(tracking)
    [run] = client.search_runs(["1"], "tags.stage = 'train'")

    def steps(key: str) -> list[int]:
        return [m.step for m in client.get_metric_history(run.info.run_id, key)]

    assert steps("train/contrastive_loss") == [1] and steps("train/loss") == [2, 3]
    assert steps("val/acc") == [2, 3] and steps("train/class_loss") == [2, 3] and steps("train/joint_loss") == [2, 3]
    assert steps("train/rotation_loss") == [2, 3]
    assert steps("val/max_logit/auroc") == [2, 3]  # the analysis reads the class head once it trains
    assert run.data.metrics["train/best_epoch"] in (2, 3)


def test_the_heads_stage_changes_the_heads_alone(tracking, tmp_path, monkeypatch):
    states = {}
    real = train_module.save_atomically

    def remember(state, path):
        states[state["epoch"]] = {k: v.clone() for k, v in state["model"].items()}
        real(state, path)

    monkeypatch.setattr(train_module, "save_atomically", remember)
    fit(prepare(FAST), tmp_path / "csi.pt")
    after_contrastive, final = states[1], states[3]
    backbone = [k for k in final if k.startswith("backbone.")]
    assert backbone and all(torch.equal(after_contrastive[k], final[k]) for k in backbone)  # frozen, BN included
    assert not torch.equal(after_contrastive["head.weight"], final["head.weight"])
    assert not torch.equal(after_contrastive["joint.weight"], final["joint.weight"])
    assert not torch.equal(after_contrastive["rotation.weight"], final["rotation.weight"])  # fitted linearly here


def test_a_resume_inside_the_second_stage_reaches_the_uninterrupted_result(tracking, tmp_path):
    prep = prepare(FAST.replace(epochs=3))
    whole = fit(prep, tmp_path / "whole.pt")

    def crash(model, normalizer, row, val_logits):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(prep, tmp_path / "part.pt", on_epoch=crash)
    resumed = fit(prep, tmp_path / "part.pt", resume=True)
    assert [r.get("val/acc") for r in resumed.result.history] == [r.get("val/acc") for r in whole.result.history]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_max_hours_stops_a_run_its_first_epoch_shows_cannot_finish(tracking, capsys):
    assert main(["train", "--method", "csi", "--csi_jitter", "0", "--csi_epochs", "3", "--epochs", "2",
                 "--device", "cpu", "--max_hours", "0.000001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("anomaly-repr: error: contrastive: an epoch took ")
    assert "the stage needs about" in err and "(2 epochs to go), more than max_hours=1e-06" in err
    [run] = mlflow.MlflowClient(tracking).search_runs(["1"], "tags.stage = 'train'")
    assert run.info.status == "FAILED"
    with pytest.raises(BudgetError):
        train_module.check_budget(1.0, "train", elapsed=100, epoch_seconds=400, epochs_left=9)
    train_module.check_budget(1.0, "train", elapsed=100, epoch_seconds=300, epochs_left=9)  # 3100 s fits


def test_the_csi_scores_of_a_trained_model(tracking):
    assert main(["train", "--method", "csi", "--csi_jitter", "0", "--csi_epochs", "1", "--epochs", "2",
                 "--device", "cpu", "--csi_test_views", "2"]) == 0
    client = mlflow.MlflowClient(tracking)
    [run] = client.search_runs(["1"], "tags.stage = 'train'")
    assert main(["evaluate", "--train_run_id", run.info.run_id]) == 0
    [evaluation] = client.search_runs(["1"], "tags.stage = 'evaluate'")
    m = evaluation.data.metrics
    for name in ("csi", "csi_ens", "csi_unlabeled"):
        assert 0 <= m[f"test/{name}/auroc"] <= 1, name
    assert m["test/csi/auroc"] == pytest.approx(m["test/msp/auroc"])  # the class head's softmax
    assert all(m[f"csi/weight_sim_{k}"] > 0 and m[f"csi/weight_rot_{k}"] > 0 for k in range(4))
    with np.load(mlflow.artifacts.download_artifacts(run_id=evaluation.info.run_id,
                                                     artifact_path="outputs/test.npz")) as test:
        assert ((0 <= test["csi_ens"]) & (test["csi_ens"] < 1)).all() and np.isfinite(test["csi_unlabeled"]).all()


@pytest.mark.parametrize("change, message", [
    ({"mixup": 0.2}, "method=csi pairs images by their labels"),
    ({"csi_optimizer": "adam"}, "unknown csi_optimizer 'adam'; choose one of sgd, lars"),
    ({"csi_temperature": 0.0}, "csi_temperature positive"),
    ({"csi_jitter": 1.5}, "csi_jitter must be in \\[0, 1\\]"),
])
def test_bad_csi_settings_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(method="csi", **change)


def test_reproduce_with_csi_logs_its_gains(tracking):
    parent_id = run_reproduce(Study(FAST.replace(method="", epochs=1), methods=("classifier", "csi")))
    assert_gains(parent_id, "csi", own="csi_unlabeled")


def test_lars_trains_the_contrastive_stage():
    method = method_for(ExperimentConfig(method="csi", csi_optimizer="lars"))
    assert isinstance(method.optimizer([{"params": [torch.nn.Parameter(torch.ones(2))], "weight_decay": 0.0}]), Lars)
