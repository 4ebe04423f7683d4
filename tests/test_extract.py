"""Extraction's test-time augmentation (the views by hand, and outputs averaged over them) and precision."""

import dataclasses

import numpy as np
import pytest
import torch

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.engine.device import predict
from anomaly_repr.engine.evaluation import extract_parts
from anomaly_repr.engine.workflow import new_model, prepare
from anomaly_repr.models.backbones import create_model
from anomaly_repr.scoring.outputs import extract, hflip, identity, translate, tta_views


def test_a_flip_of_a_flip_is_the_identity_and_translations_undo_each_other():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert torch.equal(hflip(hflip(x)), x)
    assert torch.equal(hflip(x)[..., 0], x[..., -1])
    moved = translate(x, 1, 1)
    assert torch.equal(moved[..., 1:, 1:], x[..., :-1, :-1])  # content one pixel down and right
    assert torch.equal(moved[..., 0, 1:], x[..., 1, :-1])  # the new top row: the reflection of row 1
    assert torch.equal(translate(moved, -1, -1)[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])


@pytest.mark.parametrize("tta, flips, count", [
    ("none", True, 1), ("flip", True, 2), ("flip", False, 1), ("flip_translate", True, 6),
    ("flip_translate", False, 3),
])
def test_views_are_only_those_the_data_allow(tta, flips, count):
    views = tta_views(tta, flips)
    assert len(views) == count and views[0] is identity
    x = torch.randn(1, 1, 4, 4)
    assert any(torch.equal(v(x), hflip(x)) for v in views) == (flips and tta != "none")
    assert any(torch.equal(v(x), translate(x, 1, 1)) for v in views) == (tta == "flip_translate")


def test_extraction_averages_logits_and_z_over_the_views():
    torch.manual_seed(0)
    model = create_model("resnet8", 3, 3).eval()
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    normalizer, device, labels = Normalizer.fit(images), torch.device("cpu"), np.zeros(6)
    plain = extract(model, images, labels, normalizer, device)
    mirrored = extract(model, images.flip(3), labels, normalizer, device)
    both = extract(model, images, labels, normalizer, device, views=tta_views("flip", True))
    np.testing.assert_allclose(both.logits, (plain.logits + mirrored.logits) / 2, atol=1e-5)
    np.testing.assert_allclose(both.z, (plain.z + mirrored.z) / 2, atol=1e-5)
    assert not np.allclose(both.logits, plain.logits)


def test_extraction_and_the_validation_pass_follow_trainings_precision():
    """`amp` decides extraction's forward passes (and `predict`'s, the validation pass's): float32 for
    amp=false, bfloat16 autocast for amp=true, with outputs in float32 either way."""
    prep = prepare(ExperimentConfig(arch="resnet8"))
    model, normalizer = new_model(prep), Normalizer.fit(prep.images(prep.split.train))
    index = prep.split.test[:64]
    images, labels, cpu = prep.images(index), prep.open_labels[index], torch.device("cpu")
    logits = {}
    for amp in ("false", "true"):
        amped = dataclasses.replace(prep, cfg=prep.cfg.replace(amp=amp))
        logits[amp] = extract_parts(amped, model, normalizer, {"test": index}, tta=False)[0]["test"].logits
        assert logits[amp].dtype == np.float32
    np.testing.assert_array_equal(logits["false"], extract(model, images, labels, normalizer, cpu).logits)
    bf16 = extract(model, images, labels, normalizer, cpu, precision=torch.bfloat16).logits
    np.testing.assert_array_equal(logits["true"], bf16)
    assert not np.array_equal(logits["true"], logits["false"])  # bfloat16 rounds: the two passes differ
    np.testing.assert_allclose(logits["true"], logits["false"], atol=0.05 * np.abs(logits["false"]).max())
    np.testing.assert_array_equal(predict(model, images, normalizer, cpu, precision=torch.bfloat16).numpy(), bf16)
