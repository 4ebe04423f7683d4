"""Batched augmentation policies against torchvision's own single-image results, random erasing, mixup and
cutmix against torchvision's, and the policies in the training pipeline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF
from torchvision.transforms.autoaugment import _apply_op  # torchvision's op, as its policies call it

from anomaly_repr.config import AUGMENTS, ExperimentConfig
from anomaly_repr.data import augment, image_ops, mixing
from anomaly_repr.data.pipeline import DeviceBatches, Normalizer
from anomaly_repr.errors import ConfigError

SPACES = {
    "trivialaugment": augment.trivialaugment_space(),
    "randaugment": augment.randaugment_space(31, 32, 32),
    "autoaugment": augment.randaugment_space(10, 32, 32, identity_op=False),
}


def images(n: int = 12, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Noisy and smooth uint8 images, one with a constant channel and one nearly black (edge cases of
    autocontrast and equalize)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, channels, size, size, generator=g) * 255).to(torch.uint8)
    x[: n // 2] = F.avg_pool2d(x[: n // 2].float(), 3, 1, 1).to(torch.uint8)
    x[1, 0] = 77
    x[2] = (x[2] // 64).to(torch.uint8)
    return x


def signed_magnitudes(space: dict, op: str) -> list[float]:
    table, signed = space[op]
    values = [0.0] if table is None else [float(v) for v in table.tolist()]
    return values + ([-v for v in values if v] if signed else [])


@pytest.mark.parametrize("policy", list(SPACES))
@pytest.mark.parametrize("channels", [3, 1])
def test_every_op_at_every_magnitude_is_torchvisions(policy, channels):
    x = images(channels=channels)
    space = SPACES[policy]
    for op in space:
        for m in signed_magnitudes(space, op):
            expected = torch.stack([_apply_op(im, op, m, InterpolationMode.NEAREST, None) for im in x])
            got = image_ops.OPS[op](x, torch.full((len(x),), m, dtype=torch.float64))
            assert got.dtype == torch.uint8 and torch.equal(got, expected), (policy, op, m)


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment", "autoaugment"])
def test_a_batch_is_each_image_through_torchvision_with_its_own_draws(policy):
    x = images(n=96, seed=1)
    chain = augment.Policy(policy, 32, 32)
    plan = chain.plan(len(x), torch.Generator().manual_seed(3), x.device)
    out = chain.apply(x, plan)
    drawn = set()
    for i in range(len(x)):
        expected = x[i]
        for chosen, magnitudes in plan:
            if chosen[i] >= 0:
                drawn.add(chain.ops[chosen[i]])
                expected = _apply_op(expected, chain.ops[chosen[i]], float(magnitudes[i]), InterpolationMode.NEAREST,
                                     None)
        assert torch.equal(out[i], expected), i
    assert len(drawn) >= 8  # the images drew many different ops, not one for the batch


def test_draws_cover_the_policy_and_follow_the_generator():
    chain = augment.Policy("trivialaugment", 32, 32)
    (chosen, magnitudes), = chain.plan(5000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert set(chosen.tolist()) == set(range(len(chain.ops)))  # every op of the 14
    rotations = magnitudes[chosen == chain.ops.index("Rotate")]
    assert rotations.min() < -100 and rotations.max() > 100 and rotations.abs().max() <= 135
    assert len(set(rotations.tolist())) > 40  # 31 bins, both signs
    again = chain.plan(5000, torch.Generator().manual_seed(0), torch.device("cpu"))[0]
    assert torch.equal(again[0], chosen) and torch.equal(again[1], magnitudes)
    # randaugment: every op at magnitude bin 9 of 31 (rotate 9 degrees)
    (ra, ra_mags), _ = augment.Policy("randaugment", 32, 32).plan(2000, torch.Generator().manual_seed(0),
                                                                 torch.device("cpu"))
    ops = augment.Policy("randaugment", 32, 32).ops
    assert set(ra_mags[ra == ops.index("Rotate")].abs().tolist()) == {9.0}
    # other settings: 3 ops in turn, bin 30 of 31 (rotate 30 degrees)
    plan = augment.Policy("randaugment", 32, 32, ops=3, magnitude=30).plan(2000, torch.Generator().manual_seed(0),
                                                                          torch.device("cpu"))
    assert len(plan) == 3
    assert all(set(m[c == ops.index("Rotate")].abs().tolist()) == {30.0} for c, m in plan)


def test_autoaugment_applies_its_steps_with_their_probabilities():
    chain = augment.Policy("autoaugment", 32, 32)
    plan = chain.plan(20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    # the 50 steps of the 25 sub-policies apply with mean probability 0.5495 (sum of p over steps / 50)
    expected = sum(p for pair in augment.AUTOAUGMENT_CIFAR10 for _, p, _ in pair) / 50
    applied = torch.cat([chosen >= 0 for chosen, _ in plan]).float().mean().item()
    assert applied == pytest.approx(expected, abs=0.01)


def test_random_erasing_boxes_are_torchvisions_erase():
    x = torch.randn(200, 3, 32, 32)
    boxes = mixing.erase_boxes(len(x), 32, 32, 1.0, torch.Generator().manual_seed(0), x.device)
    out = mixing.erase(x, boxes)
    for i in range(0, 200, 17):
        top, left, h, w = boxes[i].tolist()
        assert torch.equal(out[i], TF.erase(x[i], top, left, h, w, torch.tensor(0.0)))
    area = (boxes[:, 2] * boxes[:, 3]).float() / 1024
    erased = area > 0
    assert erased.float().mean() > 0.95  # p = 1: every image that found a box in 10 tries
    assert area[erased].min() >= 0.015 and area[erased].max() <= 0.36  # the scale range, up to rounding
    none = mixing.erase_boxes(50, 32, 32, 0.0, torch.Generator().manual_seed(0), x.device)
    assert (none[:, 2] * none[:, 3]).sum() == 0


def test_mixup_is_torchvisions(monkeypatch):
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    mix = v2.MixUp(alpha=1.0, num_classes=5)
    monkeypatch.setattr(mix, "_dist", type("Fixed", (), {"sample": lambda self, shape=(): torch.tensor(0.3)})())
    expected_x, expected_y = mix(x, y)
    got_x, got_y = mixing.mixup(x, F.one_hot(y, 5).float(), 0.3)
    assert torch.allclose(got_x, expected_x) and torch.allclose(got_y, expected_y)


def test_cutmix_is_torchvisions():
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    torch.manual_seed(7)
    expected_x, expected_y = v2.CutMix(alpha=1.0, num_classes=5)(x, y)
    torch.manual_seed(7)  # the same draws, in torchvision's order: lam, then the box centre's column and row
    lam = float(torch.distributions.Beta(torch.tensor([1.0]), torch.tensor([1.0])).sample(()))
    column, row = int(torch.randint(32, size=(1,))), int(torch.randint(32, size=(1,)))
    got_x, got_y = mixing.cutmix(x, F.one_hot(y, 5).float(), lam, (row, column))
    assert torch.equal(got_x, expected_x) and torch.allclose(got_y, expected_y)
    assert torch.allclose(got_y.sum(1), torch.ones(8))


def test_the_pipeline_runs_each_policy_with_erasing_and_mixing():
    x, labels = images(n=40), torch.arange(40) % 4
    norm = Normalizer.fit(x)
    for name in AUGMENTS:
        batches = DeviceBatches(x, labels, norm, 16, True, torch.Generator().manual_seed(0),
                                augment.Policy(name, 32, 32), 0.5, mixing.Mixing(0.2, 1.0, 4))
        for xb, yb in batches:
            assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32)
            assert yb.shape == (len(xb), 4) and torch.allclose(yb.sum(1), torch.ones(len(xb)))
    plain = DeviceBatches(x, labels, norm, 16, True, torch.Generator().manual_seed(0))
    assert next(iter(plain))[1].dtype == torch.long  # no mixing: class indices as before


@pytest.mark.parametrize("change, message", [
    ({"augment": "cutout"}, "unknown augment 'cutout'; choose one of crop_flip, trivialaugment"),
    ({"random_erasing": 1.5}, "random_erasing is a probability in"),
    ({"randaugment_magnitude": 31}, r"randaugment_magnitude a bin in \[0, 30\], got 2 and 31"),
    ({"randaugment_ops": 0}, "randaugment_ops must be positive"),
    ({"mixup": -0.2}, "mixup and cutmix are Beta alphas"),
    ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ({"warmup_epochs": 2.0}, "warmup_epochs applies to schedule=cosine"),
    ({"warmup_epochs": 40.0, "schedule": "cosine"}, r"warmup_epochs must be in \[0, epochs\)"),
])
def test_bad_recipe_settings_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**change)
