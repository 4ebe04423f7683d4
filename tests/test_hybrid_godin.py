"""Hybrid (classification + reconstruction) models and Generalized ODIN, with known answers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anomaly_repr.engine.evaluation as evaluation
import anomaly_repr.engine.workflow as workflow
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods import method_for
from anomaly_repr.methods.godin import GodinHead, build_godin, select_epsilon
from anomaly_repr.methods.hybrid import build_hybrid
from anomaly_repr.models.backbones import create_model
from anomaly_repr.scoring.outputs import extract


@pytest.mark.parametrize("change, message", [
    ({"recon_weight": -0.1}, "recon_weight must not be negative"),
    ({"godin_h": "manhattan"}, "unknown godin_h 'manhattan'"),
    ({"godin_epsilons": "0,-0.01"}, "godin_epsilons must be non-negative"),
    ({"godin_epsilons": "0,tiny"}, "godin_epsilons must be comma-separated numbers"),
    ({"head": "mlp"}, "unknown head 'mlp'"),
])
def test_clear_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**change)


def test_decoder_learns_to_reconstruct_a_fixed_batch():
    torch.manual_seed(0)
    model = build_hybrid("resnet8", 4, 3, 16)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def recon_error() -> float:
        model.eval()
        with torch.no_grad():
            return F.mse_loss(model(x).recon, x).item()

    before = recon_error()
    for _ in range(60):
        model.train()
        out = model(x)
        loss = F.cross_entropy(out.logits, y) + 0.9 * F.mse_loss(out.recon, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert recon_error() < 0.7 * before


@pytest.mark.parametrize("size", [8, 10, 32])
def test_decoder_output_matches_the_input_size(size):
    out = build_hybrid("resnet8", 3, 1, size).eval()(torch.randn(2, 1, size, size))
    assert out.recon.shape == (2, 1, size, size) and out.h is None


def test_cosine_h_is_invariant_to_the_scale_of_z():
    head = GodinHead(8, 5, "cosine").eval()
    z = torch.randn(6, 8)
    h1, _ = head.parts(z)
    h2, _ = head.parts(3.7 * z)
    assert torch.allclose(h1, h2, atol=1e-6)
    inner = GodinHead(8, 5, "inner").eval()
    inner.h.weight = head.h.weight
    assert not torch.allclose(inner.parts(z)[0], inner.parts(3.7 * z)[0])


@pytest.mark.parametrize("similarity", ["cosine", "inner", "euclidean"])
def test_godin_outputs(similarity):
    model = build_godin("resnet8", 5, 3, similarity).eval()
    out = model(torch.randn(4, 3, 16, 16))
    assert out.h.shape == (4, 5) and out.g.shape == (4,) and ((out.g > 0) & (out.g < 1)).all()
    assert torch.allclose(out.logits, out.h / out.g[:, None])


def test_class_vectors_of_h_have_their_own_weight_decay():
    model = build_godin("resnet8", 5, 3)
    decayed, plain, h = method_for(ExperimentConfig(method="godin", weight_decay=5e-4)).param_groups(model)
    assert [g["weight_decay"] for g in (decayed, plain, h)] == [5e-4, 0.0, 0.0]  # none on h by default
    assert [p is model.head.h.weight for p in h["params"]] == [True]
    assert any(p is model.head.g[0].weight for p in decayed["params"])
    assert not any(p.ndim > 1 for p in plain["params"])
    tuned = ExperimentConfig(method="godin", weight_decay=5e-4, godin_h_weight_decay=1e-4)
    assert method_for(tuned).param_groups(model)[2]["weight_decay"] == 1e-4


def test_select_epsilon_maximises_the_mean_perturbed_score():
    torch.manual_seed(0)
    model = build_godin("resnet8", 3, 1).eval()
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    norm = Normalizer.fit(images)
    best, means = select_epsilon(model, images, norm, torch.device("cpu"), [0.0, 0.01, 0.05])
    assert best == max(means, key=means.get) and set(means) == {0.0, 0.01, 0.05}
    assert means[0.01] > means[0.0]  # a step up the gradient raises max h


def test_calibration_inside_extraction_reads_only_nominal_validation_images(tracking):
    """`extract_parts` hands the method nominal validation images alone, whatever parts it extracts."""
    cfg = ExperimentConfig(head="godin", epochs=1, godin_epsilons="0,0.01")
    prep = workflow.prepare(cfg)
    seen: list[torch.Tensor] = []
    method = method_for(cfg)
    original = type(method).calibrate

    def spy(self, model, nominal_val, normalizer, device, nominal_train):
        seen.append(nominal_val)
        return original(self, model, nominal_val, normalizer, device, nominal_train)

    type(method).calibrate = spy
    try:
        model = workflow.new_model(prep)
        norm = Normalizer.fit(prep.images(prep.split.train))
        outputs, calibration = evaluation.extract_parts(prep, model, norm, {"test": prep.split.test})
    finally:
        type(method).calibrate = original
    # The epsilon search sees nominal validation images alone: no anomaly and no test image.
    nominal_val = prep.images(prep.split.nominal(prep.split.val, prep.data.labels))
    assert len(seen) == 1 and torch.equal(seen[0], nominal_val)
    search = {float(k): v for k, v in calibration.records["godin/epsilon_search.json"].items()}
    assert sorted(search) == [0.0, 0.01]  # the grid, every value tried
    best = max(search, key=search.get)  # the ε whose perturbed images score highest on average
    assert calibration.values["epsilon"] == calibration.metrics["godin/epsilon"] == best
    assert outputs["test"].godin_h_perturbed.shape == (len(prep.split.test),)
    _, means = select_epsilon(model, nominal_val, norm, torch.device("cpu"), [0.0, 0.01])
    assert means == pytest.approx(search)  # the recorded search is the search on those images


def test_extract_fills_the_optional_outputs():
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    norm, cpu = Normalizer.fit(images), torch.device("cpu")
    hybrid_method = method_for(ExperimentConfig(method="hybrid"))
    hybrid = extract(build_hybrid("resnet8", 3, 1, 8), images, np.zeros(6), norm, cpu, hybrid_method.batch_extras)
    assert hybrid.recon_error.shape == (6,) and not hybrid.has("godin_h")
    godin_method = method_for(ExperimentConfig(method="godin"))
    godin = extract(build_godin("resnet8", 3, 1), images, np.zeros(6), norm, cpu, godin_method.batch_extras)
    assert godin.godin_h.shape == (6, 3) and godin.godin_g.shape == (6,) and not godin.has("recon_error")
    plain = extract(create_model("resnet8", 3, 1), images, np.zeros(6), norm, cpu)
    assert set(plain.arrays()) == {"z", "logits", "labels"}
