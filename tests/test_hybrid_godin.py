"""Hybrid (classification + reconstruction) models and Generalized ODIN, with known answers."""

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anomaly_repr.workflow as workflow
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import ConfigError
from anomaly_repr.extract import extract, select_epsilon
from anomaly_repr.models import GodinHead, create_model
from anomaly_repr.pipeline import Normalizer
from anomaly_repr.train import param_groups


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
    model = create_model("resnet8", 4, 3, decoder_size=16)
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
    out = create_model("resnet8", 3, 1, decoder_size=size).eval()(torch.randn(2, 1, size, size))
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
    model = create_model("resnet8", 5, 3, head="godin", godin_h=similarity).eval()
    out = model(torch.randn(4, 3, 16, 16))
    assert out.h.shape == (4, 5) and out.g.shape == (4,) and ((out.g > 0) & (out.g < 1)).all()
    assert torch.allclose(out.logits, out.h / out.g[:, None])


def test_class_vectors_of_h_have_their_own_weight_decay():
    model = create_model("resnet8", 5, 3, head="godin")
    decayed, plain, h = param_groups(model, 5e-4)
    assert [g["weight_decay"] for g in (decayed, plain, h)] == [5e-4, 0.0, 0.0]  # none on h by default
    assert [p is model.head.h.weight for p in h["params"]] == [True]
    assert any(p is model.head.g[0].weight for p in decayed["params"])
    assert not any(p.ndim > 1 for p in plain["params"])
    assert param_groups(model, 5e-4, h_weight_decay=1e-4)[2]["weight_decay"] == 1e-4


def test_select_epsilon_maximises_the_mean_perturbed_score():
    torch.manual_seed(0)
    model = create_model("resnet8", 3, 1, head="godin").eval()
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    norm = Normalizer.fit(images)
    best, means = select_epsilon(model, images, norm, torch.device("cpu"), [0.0, 0.01, 0.05])
    assert best == max(means, key=means.get) and set(means) == {0.0, 0.01, 0.05}
    assert means[0.01] > means[0.0]  # a step up the gradient raises max h


def test_epsilon_search_never_reads_anomaly_or_test_images(tracking, monkeypatch):
    cfg = ExperimentConfig(head="godin", epochs=1, godin_epsilons="0,0.01")
    prep = workflow.prepare(cfg)
    allowed = set(prep.split.nominal(prep.split.val, prep.data.labels).tolist())
    read: list[np.ndarray] = []

    class Sealed(workflow.Prepared):
        def images(self, index):
            read.append(index)
            if not set(index.tolist()) <= allowed:
                raise AssertionError("the epsilon search read an anomaly or test image")
            return super().images(index)

    sealed = Sealed(**vars(prep))
    model = workflow.new_model(prep)
    with mlflow.start_run():
        epsilon = workflow.choose_epsilon(sealed, model, Normalizer.fit(prep.images(prep.split.train)))
    assert epsilon in (0.0, 0.01) and read and len(np.concatenate(read)) == len(allowed)


def test_extract_fills_the_optional_outputs():
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    norm, cpu = Normalizer.fit(images), torch.device("cpu")
    hybrid = extract(create_model("resnet8", 3, 1, decoder_size=8), images, np.zeros(6), norm, cpu)
    assert hybrid.recon_error.shape == (6,) and hybrid.godin_h is None
    godin = extract(create_model("resnet8", 3, 1, head="godin"), images, np.zeros(6), norm, cpu)
    assert godin.godin_h.shape == (6, 3) and godin.godin_g.shape == (6,) and godin.recon_error is None
