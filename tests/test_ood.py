"""Far anomaly sets (`ood_sets`) beside the held-out classes: how each set is made, the user's folders, the
near_harder gap with its joint bootstrap, OSCR, and that no far image reaches tuning or any fit."""

import re

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_repr.cli import main
from anomaly_repr.config import ExperimentConfig, OodSpec
from anomaly_repr.data.ood import build_set
from anomaly_repr.engine import evaluation as evaluation_module
from anomaly_repr.engine.evaluation import evaluate, read_far_sets
from anomaly_repr.engine.workflow import fit, prepare
from anomaly_repr.errors import ConfigError, DataError, SealedError
from anomaly_repr.scoring.intervals import Bootstrap, Cell, far_metrics
from anomaly_repr.scoring.metrics import anomaly_metrics, oscr
from anomaly_repr.scoring.stats import Resamples, resampled_oscr
from tuning.config import TuneConfig
from tuning.study import run_tune

from conftest import write_image

RGB = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 3, 32, 32), dtype=np.uint8))


def nominal_with(means: list[float], stds: list[float], n: int = 200) -> torch.Tensor:
    rng = np.random.default_rng(1)
    x = rng.normal(np.array(means)[None, :, None, None], np.array(stds)[None, :, None, None], (n, len(means), 8, 8))
    return torch.from_numpy(np.clip(np.round(x), 0, 255).astype(np.uint8))


# --- how each set is made -------------------------------------------------------------------------------

def test_digits_are_rendered_to_the_datas_size_and_channels_the_same_every_time():
    digits = build_set(OodSpec("digits"), RGB, 100, "crop", "error")
    assert digits.images.shape == (100, 3, 32, 32) and digits.images.dtype == torch.uint8
    assert all(torch.equal(digits.images[:, 0], digits.images[:, c]) for c in (1, 2))  # grey, as RGB
    assert digits.images.min() == 0 and digits.images.max() > 200  # strokes on a black ground, as in sklearn's
    assert torch.equal(build_set(OodSpec("digits"), RGB, 100, "crop", "error").images, digits.images)
    assert len(build_set(OodSpec("digits"), RGB, 5000, "crop", "error").images) == 1797  # all there are


def test_noise_sets_take_the_nominal_images_statistics_on_a_fixed_seed():
    nominal = nominal_with([50, 120, 200], [10, 30, 5])
    gaussian = build_set(OodSpec("gaussian"), nominal, 2000, "crop", "error").images.double()
    assert gaussian.shape == (2000, 3, 8, 8)
    assert gaussian.mean(dim=(0, 2, 3)).numpy() == pytest.approx(nominal.double().mean(dim=(0, 2, 3)).numpy(), abs=0.5)
    assert gaussian.std(dim=(0, 2, 3)).numpy() == pytest.approx(nominal.double().std(dim=(0, 2, 3)).numpy(), abs=0.5)
    uniform = build_set(OodSpec("uniform"), nominal, 2000, "crop", "error").images
    low, high = nominal.amin(dim=(0, 2, 3)), nominal.amax(dim=(0, 2, 3))
    assert torch.equal(uniform.amin(dim=(0, 2, 3)), low) and torch.equal(uniform.amax(dim=(0, 2, 3)), high)
    counts = torch.bincount(uniform[:, 1].flatten().long(), minlength=256)[int(low[1]):int(high[1]) + 1]
    assert counts.min() > 0.5 * counts.float().mean()  # flat over the range
    again = build_set(OodSpec("uniform"), nominal, 2000, "crop", "error").images
    assert torch.equal(again, uniform) and not torch.equal(gaussian.to(torch.uint8)[:, :1], uniform[:, :1])


def debris(root, bad: bool = True):
    for i in range(3):
        write_image(root / "shore" / f"rock{i}.png", (40, 30), value=60 + 40 * i, fmt="PNG")
    (root / "notes.txt").write_text("collected 2024")
    (root / ".hidden.png").write_bytes(b"not looked at")
    if bad:
        (root / "broken.jpg").write_bytes(b"junk")
    return root


def test_a_user_folder_with_a_bad_file_under_both_bad_images_modes(tmp_path):
    root = debris(tmp_path / "rocks")
    with pytest.raises(DataError, match=r"1 unreadable image\(s\) in set 'rocks' under .*: broken.jpg; "
                                        r"bad_images=skip leaves them out"):
        build_set(OodSpec("rocks", str(root)), RGB, 10, "crop", "error")
    rocks = build_set(OodSpec("rocks", str(root)), RGB, 10, "crop", "skip")
    assert rocks.images.shape == (3, 3, 32, 32)  # every readable image, whatever `count` says
    assert rocks.left_out == ("broken.jpg",) and rocks.skipped == ("notes.txt",)
    assert rocks.origin == str(root.resolve()) and len(rocks.digest) == 16


def test_a_folder_is_converted_to_the_datas_channels(tmp_path):
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.full((20, 20), 90, np.uint8), mode="L").save(grey / "a.png")
    as_rgb = build_set(OodSpec("grey", str(grey)), RGB, 10, "crop", "error").images
    assert as_rgb.shape == (1, 3, 32, 32) and (as_rgb == 90).all()
    red = tmp_path / "red"
    red.mkdir()
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (20, 20, 1))).save(red / "a.png")
    one_channel = torch.zeros((5, 1, 8, 8), dtype=torch.uint8)
    as_grey = build_set(OodSpec("red", str(red)), one_channel, 10, "crop", "error").images
    assert as_grey.shape == (1, 1, 8, 8) and (as_grey == 76).all()  # ITU-R 601 luma of pure red: 0.299 * 255


@pytest.mark.parametrize("value, message", [
    ("cifar", "ood_sets: unknown set 'cifar'; choose digits, gaussian, uniform, or NAME=PATH"),
    ("gaussian,gaussian", "ood_sets: the set name 'gaussian' is given twice"),
    ("digits", "ood_sets: digits is the dataset itself"),
    ("rocks=", "ood_sets: 'rocks=' needs a folder after ="),
    ("rocks={missing}", "ood_sets: the folder of set 'rocks', .*missing, does not exist"),
    ("rocks={empty}", "ood_sets: the folder of set 'rocks', .*empty, holds no image file"),
])
def test_bad_ood_sets_are_one_line_errors_before_any_training(tracking, tmp_path, capsys, value, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    value = value.format(missing=tmp_path / "missing", empty=tmp_path / "empty")
    assert main(["reproduce", "--methods", "classifier", "--epochs", "1", "--ood_sets", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("anomaly-repr: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


# --- the statistics ---------------------------------------------------------------------------------------

def test_near_harder_is_far_minus_near_with_a_joint_bootstrap_on_hand_made_scores():
    rng = np.random.default_rng(3)
    is_anomaly = np.r_[np.zeros(300, bool), np.ones(200, bool)]
    near = {"s": np.r_[rng.normal(0, 1, 300), rng.normal(1, 1, 200)]}
    far_scores = {"far": {"s": rng.normal(3, 1, 150)}, "alike": {"s": rng.normal(1, 1, 200)}}
    metrics = {"test/s/auroc": anomaly_metrics(near["s"], is_anomaly)["auroc"]}
    for name, by in far_scores.items():
        both = np.r_[near["s"][~is_anomaly], by["s"]]
        metrics[f"test/ood/{name}/s/auroc"] = anomaly_metrics(both, np.r_[np.zeros(300, bool),
                                                                           np.ones(len(by["s"]), bool)])["auroc"]
    cell = Cell(0, 7, metrics, near, is_anomaly, far_scores=far_scores)
    boot = Bootstrap({"m": [cell]}, 500)
    out = far_metrics({"m": [cell]}, boot, "m", "test/ood/{set}/m/{scorer}")
    gap = out["test/ood/far/m/s/near_harder"]
    assert gap == pytest.approx(metrics["test/ood/far/s/auroc"] - metrics["test/s/auroc"]) and gap > 0.2
    assert out["test/ood/far/m/s/near_harder_ci_low"] > 0 and out["test/ood/far/m/s/near_harder_p"] < 0.01
    low, high = out["test/ood/alike/m/s/near_harder_ci_low"], out["test/ood/alike/m/s/near_harder_ci_high"]
    assert low < 0 < high  # anomalies of the same kind: no difference
    # joint: the far set's resamples draw the nominal images exactly as the near set's do
    near_draw = Resamples.draw(is_anomaly, 500, 7)
    assert np.array_equal(near_draw.sharing_nominal(150, 1).nominal, near_draw.nominal)
    far_auroc = metrics["test/ood/far/s/auroc"]
    assert out["test/ood/far/m/s/auroc_ci_low"] <= far_auroc <= out["test/ood/far/m/s/auroc_ci_high"]


def test_oscr_by_hand():
    # known: 0.1 (right), 0.2 (wrong), 0.5 (right); anomalies 0.3, 0.6. Accepting scores <= t as t sweeps:
    # CCR stays 1/3 while FPR goes 0 -> 1/2, then 2/3 while it goes 1/2 -> 1: area 1/6 + 1/3 = 1/2.
    scores = np.array([0.1, 0.2, 0.5, 0.3, 0.6])
    is_anomaly = np.array([False, False, False, True, True])
    correct = np.array([True, False, True, False, False])
    assert oscr(scores, is_anomaly, correct) == pytest.approx(0.5)
    assert oscr(scores, is_anomaly, np.zeros(5, bool)) == 0.0
    ones = Resamples(is_anomaly, np.ones((3, 4), np.int32), np.ones((2, 4), np.int32))
    assert resampled_oscr(scores, ones, correct) == pytest.approx([0.5] * 4)  # every image drawn once
    tied = np.array([0.3, 0.2, 0.5, 0.3, 0.6])  # a right known image tied with an anomaly counts half
    assert oscr(tied, is_anomaly, correct) == pytest.approx((0.5 + 1 + 0 + 1) / 4 * 2 / 3)
    assert resampled_oscr(tied, ones, correct)[0] == pytest.approx(oscr(tied, is_anomaly, correct))


# --- test data stays out of tuning and of every fit ---------------------------------------------------------

def test_tune_never_reads_a_far_set(tracking):
    sealed = prepare(ExperimentConfig(ood_sets="gaussian"), parts=("train", "val"))
    with pytest.raises(SealedError, match="ood_sets are test data"):
        read_far_sets(sealed)
    with pytest.raises(ConfigError, match="tune searches on validation data and ood_sets are test sets"):
        run_tune(ExperimentConfig(ood_sets="gaussian", epochs=1), TuneConfig(n_trials=1))
    assert mlflow.search_runs(search_all_experiments=True).empty  # refused before any run


def test_every_scorer_fits_on_nominal_or_validation_outputs_never_a_far_set(tracking, tmp_path, monkeypatch):
    cfg = ExperimentConfig(epochs=1, oracle_trees=20, bootstrap=50, device="cpu", ood_sets="uniform", ood_count=7)
    prep = prepare(cfg)
    fitted = fit(prep, tmp_path / "model.pt")
    references = []
    real = evaluation_module.make_scorer

    def recording(name, c):
        scorer = real(name, c)
        fit_ = scorer.fit
        scorer.fit = lambda reference: (references.append((name, reference)), fit_(reference))[1]
        return scorer

    monkeypatch.setattr(evaluation_module, "make_scorer", recording)
    result = evaluate(prep, fitted.model, fitted.normalizer)
    assert {len(s) for s in result.far_scores["uniform"].values()} == {7}
    allowed = {id(result.outputs["train"]), id(result.outputs["val"])}
    assert references and all(id(reference) in allowed for _, reference in references), \
        [(n, len(r.labels)) for n, r in references]
    m = result.metrics
    assert {"test/ood/uniform/knn/auroc", "test/ood/uniform/oracle_rf/fpr95", "test/max_logit/oscr",
            "test/max_logit/oscr_ci_low", "test/ood/uniform/knn/near_harder_p"} <= set(m)
    assert m["test/ood/uniform/knn/near_harder"] == pytest.approx(m["test/ood/uniform/knn/auroc"] - m["test/knn/auroc"])
