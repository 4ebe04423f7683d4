"""JEM: the backbone without batch norm, the SGLD sampler and its replay buffer, divergence caught inside the
epoch and resumed with a smaller step, the per-epoch energies and sample figures, the density scorers, and
JEM in `reproduce` and `tune`."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from anomaly_repr.cli import main
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods import method_for
from anomaly_repr.methods.jem import Jem, ReplayBuffer, generative_term, without_batch_norm
from anomaly_repr.models.backbones import ModelOutput, create_model
from anomaly_repr.scoring.outputs import Outputs
from anomaly_repr.scoring.scorers import applies, make_scorer
from anomaly_repr.study.cells import Study
from anomaly_repr.study.reproduce import run_reproduce

from conftest import assert_gains

TINY = ["--method", "jem", "--epochs", "2", "--device", "cpu", "--jem_sgld_steps", "2", "--jem_buffer_size", "200",
        "--val_auroc_every", "0", "--oracle_trees", "20", "--bootstrap", "50"]
OFF = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731


def test_the_backbone_has_no_batch_statistics():
    model = without_batch_norm(create_model("resnet8", 4, 3)).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    x = torch.randn(6, 3, 8, 8)
    alone = model(x[:1]).logits
    together = model(torch.cat([x[:1], 10 * torch.randn(5, 3, 8, 8)])).logits[:1]
    assert torch.allclose(alone, together, atol=1e-5)  # an image's output ignores the rest of its batch


def test_sgld_climbs_the_density_and_writes_back_to_the_buffer():
    method = Jem(ExperimentConfig(method="jem", jem_sgld_noise=0.0, jem_sgld_step=0.01, jem_reinit=0.0,
                                  jem_buffer_size=32))
    torch.manual_seed(0)
    model = method.build(4, 3, 8)
    method.start(Normalizer(torch.full((3,), 0.5), torch.full((3,), 0.25)), torch.device("cpu"))
    buffer = method._buffer((3, 8, 8))
    assert buffer.images.min() >= -2 and buffer.images.max() <= 2  # uniform pixels in [0, 1], normalised
    before = buffer.images.clone()
    samples = method.sample(model, 32, (3, 8, 8), OFF)
    with torch.no_grad():
        start_lse = torch.logsumexp(model(before).logits, 1)
        end_lse = torch.logsumexp(model(samples).logits, 1)
    assert not torch.equal(before, buffer.images)
    assert (end_lse.mean() > start_lse.mean()).item()  # gradient ascent on log p(x), no noise
    rows, start = ReplayBuffer(10, (1, 2, 2), torch.zeros(1), torch.ones(1), torch.device("cpu")).draw(1000, 1.0)
    assert rows.shape == (1000,) and 0 <= start.min() and start.max() <= 1  # every start fresh noise


def test_the_sgld_step_is_in_the_papers_pixel_units():
    """Pixels in [-1, 1] are 2σ times the normalised ones: a step α there is α / (4σ²) on the model's input."""
    method = Jem(ExperimentConfig(method="jem", jem_sgld_noise=0.0, jem_sgld_step=0.5, jem_sgld_steps=1,
                                  jem_reinit=0.0, jem_buffer_size=1))
    torch.manual_seed(0)
    model = method.build(4, 3, 8).eval()
    std = torch.tensor([0.25, 0.5, 1.0])
    method.start(Normalizer(torch.zeros(3), std), torch.device("cpu"))
    start = method._buffer((3, 8, 8)).images.clone()
    x = start.clone().requires_grad_(True)
    grad = torch.autograd.grad(torch.logsumexp(model(x).logits, 1).sum(), x)[0]
    expected = start + 0.5 / (4 * std.view(1, 3, 1, 1) ** 2) * grad
    assert torch.allclose(method.sample(model, 1, (3, 8, 8), OFF), expected, atol=1e-6)


def test_the_sgld_noise_is_in_the_papers_pixel_units():
    """Noise s on pixels in [-1, 1] is s / (2σ) per channel on the normalised pixels."""
    method = Jem(ExperimentConfig(method="jem", jem_sgld_noise=0.1, jem_sgld_step=1e-9, jem_sgld_steps=1,
                                  jem_reinit=0.0, jem_buffer_size=1))
    model = method.build(4, 3, 8).eval()
    std = torch.tensor([0.25, 0.5, 1.0])
    method.start(Normalizer(torch.zeros(3), std), torch.device("cpu"))
    start = method._buffer((3, 8, 8)).images.clone()
    moved = method.sample(model, 512, (3, 8, 8), OFF) - start  # 512 draws from the one buffer image
    assert torch.allclose(moved.transpose(0, 1).flatten(1).std(dim=1), 0.1 / (2 * std), rtol=0.02)


def test_the_buffer_reinitialises_the_configured_share_of_its_starting_points():
    torch.manual_seed(0)
    buffer = ReplayBuffer(100, (1, 2, 2), torch.zeros(1), torch.ones(1), torch.device("cpu"))
    buffer.images.fill_(5.0)  # outside the noise's range [0, 1]: a fresh start is told apart from a kept one
    for share in (0.0, 0.05, 0.3):
        rows, start = buffer.draw(20000, share)
        fresh = (start != 5.0).flatten(1).all(dim=1)
        assert ((start == 5.0).flatten(1).all(dim=1) | fresh).all()  # kept whole or drawn afresh whole
        assert fresh.float().mean().item() == pytest.approx(share, abs=0.01), share
        assert rows.min() >= 0 and rows.max() < 100


def test_the_generative_term_falls_as_the_datas_density_rises_against_the_samples():
    data, fake = torch.randn(8, 5), torch.randn(8, 5)
    base = generative_term(data, fake)
    # the energy is -logsumexp: adding c to every logit of the data lowers its energy by c, the term by c
    assert generative_term(data + 2.0, fake).item() == pytest.approx(base.item() - 2.0, abs=1e-5)
    assert generative_term(data, fake + 2.0).item() == pytest.approx(base.item() + 2.0, abs=1e-5)
    # the term is the data's energy minus the samples' (energy = -logsumexp): a gradient step on it lowers
    # the data's energy relative to the samples'
    torch.manual_seed(0)
    layer = nn.Linear(3, 4)
    x_data, x_fake = torch.randn(16, 3), torch.randn(16, 3) + 2.0
    energy = lambda x: -torch.logsumexp(layer(x), dim=1).mean()  # noqa: E731
    gap = energy(x_data) - energy(x_fake)
    assert generative_term(layer(x_data), layer(x_fake)).item() == pytest.approx(gap.item(), abs=1e-6)
    generative_term(layer(x_data), layer(x_fake)).backward()
    with torch.no_grad():
        for p in layer.parameters():
            p -= 0.1 * p.grad
    assert (energy(x_data) - energy(x_fake)).item() < gap.item()


class _Quadratic(nn.Module):
    """logits_k = sum_i w_ki x_i^2: a tiny model with an input gradient that finite differences check."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2 * 3 * 3))

    def forward(self, x):
        return ModelOutput(logits=(x.flatten(1) ** 2) @ self.w.T, z=x.flatten(1))


def test_pxgrad_is_the_norm_of_the_input_gradient_by_finite_differences():
    torch.manual_seed(0)
    model, images = _Quadratic(), torch.randint(0, 256, (5, 2, 3, 3), dtype=torch.uint8)
    normalizer = Normalizer(torch.full((2,), 0.5), torch.full((2,), 0.25))
    method = Jem(ExperimentConfig(method="jem"))
    got = method.extra_passes(model, images, normalizer, torch.device("cpu"), None)["jem_pxgrad"]
    x, eps = normalizer(images).double(), 1e-6
    logpx = lambda v: torch.logsumexp((v.flatten(1) ** 2) @ model.w.detach().double().T, dim=1)  # noqa: E731
    grad = torch.zeros_like(x)
    for i in range(x[0].numel()):
        step = torch.zeros(x[0].numel(), dtype=torch.float64)
        step[i] = eps
        step = step.view_as(x[0])
        grad.view(len(x), -1)[:, i] = (logpx(x + step) - logpx(x - step)) / (2 * eps)
    assert np.allclose(got, grad.flatten(1).norm(dim=1).numpy(), rtol=1e-3)


def test_the_density_scorers_on_known_outputs_and_only_for_jem_models():
    logits = np.log(np.array([[1.0, 1.0, 2.0], [8.0, 1.0, 1.0]]))
    out = Outputs(np.zeros((2, 4)), logits, np.array([0, -1]), jem_logpx=np.log([4.0, 10.0]),
                  jem_pxgrad=np.array([0.5, 3.0]))
    cfg = ExperimentConfig()
    assert np.allclose(make_scorer("jem_px", cfg).fit(out).score(out), -np.log([4.0, 10.0]))
    assert np.allclose(make_scorer("jem_py", cfg).fit(out).score(out), [0.5, 0.2])
    assert np.allclose(make_scorer("jem_pxgrad", cfg).fit(out).score(out), [0.5, 3.0])
    plain = Outputs(np.zeros((2, 4)), logits, np.array([0, -1]))
    assert not any(applies(make_scorer(name, cfg), plain) for name in ("jem_px", "jem_py", "jem_pxgrad"))


@pytest.mark.parametrize("change, message", [
    ({"jem_reinit": 1.5}, "jem_reinit must be in"), ({"jem_sgld_step": 0.0}, "jem_sgld_step"),
    ({"jem_sgld_steps": 0}, "jem_buffer_size and jem_sgld_steps must be positive"),
    ({"jem_optimizer": "rmsprop"}, "unknown jem_optimizer 'rmsprop'"), ({"jem_lr": 0.0}, "jem_lr must be positive"),
])
def test_bad_jem_settings_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(method="jem", **change)


def test_the_optimiser_is_adam_at_jem_lr_or_sgd_at_lr():
    def optimiser(**change) -> torch.optim.Optimizer:
        method = method_for(ExperimentConfig(method="jem", lr=0.05, jem_lr=3e-4, **change))
        return method.optimizer(method.param_groups(method.build(4, 3, 8)))

    adam, sgd = optimiser(), optimiser(jem_optimizer="sgd")
    assert type(adam) is torch.optim.Adam and {g["lr"] for g in adam.param_groups} == {3e-4}
    assert {g["weight_decay"] for g in adam.param_groups} == {0.0}  # the paper's Adam has none
    assert type(sgd) is torch.optim.SGD and {g["lr"] for g in sgd.param_groups} == {0.05}
    assert {g["weight_decay"] for g in sgd.param_groups} == {5e-4, 0.0}  # conv and linear weights, the rest


def test_a_run_logs_energies_sampler_time_samples_and_its_scores(tracking):
    assert main(["train", *TINY, "--jem_sample_every", "1"]) == 0
    client = mlflow.MlflowClient(tracking)
    [run] = client.search_runs(["1"], "tags.stage = 'train'")
    for key in ("train/energy_data", "train/energy_samples", "train/sgld_seconds"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/samples_epoch_1.png", "figures/samples_epoch_2.png"}
    assert main(["evaluate", "--train_run_id", run.info.run_id]) == 0
    [evaluation] = client.search_runs(["1"], "tags.stage = 'evaluate'")
    m = evaluation.data.metrics
    assert {"test/jem_px/auroc", "test/jem_py/auroc", "test/jem_pxgrad/auroc"} <= set(m)
    assert m["test/jem_px/auroc"] == pytest.approx(m["test/energy/auroc"])  # the energy of the same logits
    assert m["test/jem_py/auroc"] == pytest.approx(m["test/msp/auroc"])


def test_divergence_inside_an_epoch_fails_naming_it_and_resumes_with_a_smaller_step(tracking, monkeypatch, capsys):
    real, calls = Jem.train_step, []

    def explodes_in_epoch_two(self, model, optimizer, x, y, autocast):
        calls.append(1)
        if len(calls) == 8:  # digits: 6 steps an epoch at batch 128, so epoch 2, step 2
            self.cfg = self.cfg.replace(jem_energy_limit=1e-9)
        return real(self, model, optimizer, x, y, autocast)

    monkeypatch.setattr(Jem, "train_step", explodes_in_epoch_two)
    assert main(["train", *TINY, "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("anomaly-repr: error: training diverged at epoch 2, step 2: the samples' energy exploded")
    client = mlflow.MlflowClient(tracking)
    [run] = client.search_runs(["1"], "tags.stage = 'train'")
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1]  # epoch 1's checkpoint
    monkeypatch.setattr(Jem, "train_step", real)
    assert main(["train", "--resume", run.info.run_id, "--jem_sgld_step", "0.5"]) == 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_with.jem_sgld_step"] == "0.5"
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json")["jem_sgld_step"] == 0.5
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3]


def test_only_a_methods_resume_fields_may_change_on_resume(tracking, capsys):
    assert main(["train", "--epochs", "1", "--device", "cpu"]) == 0
    [run] = mlflow.MlflowClient(tracking).search_runs(["1"], "tags.stage = 'train'")
    # a finished run has no checkpoint; a classifier run may change nothing anyway
    assert main(["train", "--resume", run.info.run_id, "--jem_sgld_step", "0.5"]) == 2
    assert "no checkpoint for run" in capsys.readouterr().err
    assert main(["train", "--resume", run.info.run_id, "--epochs", "3"]) == 2
    assert "leave out --epochs" in capsys.readouterr().err


def test_reproduce_with_jem_logs_its_gains(tracking):
    base = ExperimentConfig(epochs=1, device="cpu", oracle_trees=20, bootstrap=50, jem_sgld_steps=2,
                            jem_buffer_size=200, lr=0.05)
    parent_id = run_reproduce(Study(base, methods=("classifier", "jem")))
    assert_gains(parent_id, "jem", own="jem_pxgrad")


def test_the_method_contract_for_jem_counts_its_sampler():
    method = method_for(ExperimentConfig(method="jem", jem_sgld_steps=3, jem_buffer_size=16))
    model = method.build(4, 3, 8)
    method.start(Normalizer(torch.zeros(3), torch.ones(3)), torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method.train_step(model, optimizer, torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)), OFF)
    curves = method.epoch_metrics()
    assert set(curves) == {"train/energy_data", "train/energy_samples", "train/sgld_seconds"}
    assert curves["train/sgld_seconds"] > 0 and method.epoch_metrics()["train/sgld_seconds"] == 0  # reset
