"""`jem`: the classifier as an energy-based model (Grathwohl et al., ICLR 2020, "Your classifier is secretly an
energy based model"), trained with stochastic-gradient Langevin dynamics (SGLD), and its density scores.

The classifier's logits f(x) define log p(x) = logsumexp_y f(x)[y] - log Z: the energy is E(x) = -logsumexp.
The loss is the classifier's cross-entropy on the (noised) known-class images plus `jem_weight` times the
generative term, -(mean logsumexp on the data - mean logsumexp on samples), whose gradient is the maximum-
likelihood gradient of log p(x) estimated with samples from the model. As in the paper's code:

- the data get Gaussian noise of `jem_data_noise` (0.03) before both terms;
- samples come from SGLD started from a replay buffer of `jem_buffer_size` (10,000) images: each step draws
  a batch from it, re-initialising a share `jem_reinit` (5 %) from uniform noise over the pixel range, runs
  `jem_sgld_steps` (20) steps x <- x + `jem_sgld_step` * grad_x logsumexp f(x) + `jem_sgld_noise` * N(0, I)
  (step 1, noise 0.01) on the whole batch at once on the device, and writes the samples back;
- the step and the two noises are in the paper's pixel units, pixels in [-1, 1]. The model reads pixels
  normalised by the training mean and per-channel std σ instead, v = (p - mean) / σ, so that
  u = 2p - 1 = 2σv + const: a step α on grad_u is α / (4σ²) on grad_v, and noise s in u is s / (2σ) in
  v. On CIFAR-10 (σ about 0.25) the paper's step 1 is a step of about 4 on the normalised pixels. Taken
  in normalised units as they stood, step 1 was a quarter of the paper's: the samples lagged behind the
  model (on digits and on CIFAR-10 the samples' energy rose while the data's fell, and the class head
  stayed near chance), where with step 10 on the normalised pixels (about 5.7 in the paper's units on
  digits, σ 0.38) the two energies stayed together and digits reached 0.95 validation accuracy in 15
  epochs;
- batch normalisation breaks JEM (its batch statistics differ between data and samples), so the backbone is
  built without it: every BatchNorm2d of the registered architecture becomes a GroupNorm of `GROUPS` groups,
  whose statistics are per image. The paper's runs drop normalisation altogether (a WideResNet trained with
  Adam at 1e-4); with SGD a ResNet without any normalisation barely learned in a few epochs on digits
  (validation accuracy 0.23 after 6 epochs at lr 0.01, with or without the generative term), where the
  GroupNorm one reached 0.99 (classifier term alone, lr 0.1);
- the optimiser is the paper's, Adam at `jem_lr` (1e-4, no weight decay), on the run's
  schedule: onecycle's linear warm-up over the first 20 % of the steps (or cosine with `warmup_epochs`)
  stands in for the paper's 1,000-iteration warm-up. `jem_optimizer=sgd` trains at `lr` like the other
  methods; with it (lr 0.02, one-cycle) a ResNet-20 stayed at chance accuracy on CIFAR-10 (BENCHMARKS.md).

Stability. JEM training is known to diverge. After every step the mean logsumexp of the samples is checked:
beyond `jem_energy_limit` (or not finite) the run fails naming the epoch and the step; the last epoch's
checkpoint is kept, and `train --resume RUN_ID --jem_sgld_step S` continues from it with a smaller step.
The per-epoch curves `train/energy_data` and `train/energy_samples` (mean energies -logsumexp) show
divergence coming: the samples' energy running away from the data's; `train/sgld_seconds` is the
sampler's time per training step. Every `jem_sample_every` epochs the run logs
`figures/samples_epoch_<N>.png`, 64 images of the replay buffer: what the model believes nominal images
look like.

Scorers (higher = more anomalous): `jem_px` -logsumexp f(x) (the energy, under the JEM-trained model),
`jem_py` 1 - max softmax, and `jem_pxgrad` |grad_x log p(x)|, the norm of the density's input gradient
(the paper's "approximate mass": in-distribution inputs sit where log p(x) changes little); it needs a
backward pass per test batch, batched like a forward one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError, DivergedError
from anomaly_repr.methods.base import Autocast, Calibration, Method, register_method
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet, create_model
from anomaly_repr.scoring.outputs import batches
from anomaly_repr.scoring.scorers import FunctionScorer, msp, register_scorer

if TYPE_CHECKING:
    import optuna

    from anomaly_repr.config import ExperimentConfig
    from anomaly_repr.methods.base import SearchBounds


STEP_RANGE, WEIGHT_RANGE = (0.1, 10.0), (0.1, 10.0)  # `tune --target jem`, both log-uniform
GRID = 64  # replay-buffer images in a samples figure
GROUPS = 8  # GroupNorm's groups where the backbone had batch norm (fewer when the channels do not divide)


def without_batch_norm(module: nn.Module) -> nn.Module:
    """The module with every BatchNorm2d replaced by a GroupNorm of its channels (per-image statistics)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(GROUPS, channels), channels))
        else:
            without_batch_norm(child)
    return module


def logsumexp(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.float(), dim=1)


def generative_term(data_logits: torch.Tensor, sample_logits: torch.Tensor) -> torch.Tensor:
    """JEM's generative loss, the mean energy of the data minus that of the samples (energy = -logsumexp of
    the logits, -log p(x) up to the shared constant): minimising it lowers the data's energy and raises the
    samples' (the gradient of the log-likelihood, eq. 2 of Grathwohl et al. 2020, by contrastive divergence)."""
    return logsumexp(sample_logits).mean() - logsumexp(data_logits).mean()


class ReplayBuffer:
    """SGLD's persistent starting points, on the training device, in normalised pixel units."""

    def __init__(self, size: int, shape: tuple[int, ...], low: torch.Tensor, high: torch.Tensor,
                 device: torch.device):
        self.low, self.high = low.to(device).view(1, -1, 1, 1), high.to(device).view(1, -1, 1, 1)
        self.images = self.noise(size, shape, device)

    def noise(self, n: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Uniform noise over the pixel range [0, 1], normalised."""
        return self.low + (self.high - self.low) * torch.rand(n, *shape, device=device)

    def draw(self, n: int, reinit: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(buffer rows, starting images): n rows at random, a share `reinit` of them fresh noise."""
        rows = torch.randint(len(self.images), (n,), device=self.images.device)
        start = self.images[rows]
        fresh = torch.rand(n, device=start.device) < reinit
        start[fresh] = self.noise(int(fresh.sum()), tuple(start.shape[1:]), start.device)
        return rows, start


@register_method("jem")
class Jem(Method):
    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        if min(cfg.jem_buffer_size, cfg.jem_sgld_steps) < 1 or min(cfg.jem_sample_every, cfg.jem_weight,
                                                                    cfg.jem_sgld_noise, cfg.jem_data_noise) < 0:
            raise ConfigError("jem_buffer_size and jem_sgld_steps must be positive; jem_sample_every, jem_weight, "
                              "jem_sgld_noise and jem_data_noise must not be negative")
        if not 0 <= cfg.jem_reinit <= 1 or not cfg.jem_sgld_step > 0 or not cfg.jem_energy_limit > 0:
            raise ConfigError(f"jem_reinit must be in [0, 1] and jem_sgld_step and jem_energy_limit positive, got "
                              f"{cfg.jem_reinit}, {cfg.jem_sgld_step} and {cfg.jem_energy_limit}")
        if not cfg.jem_lr > 0:
            raise ConfigError(f"jem_lr must be positive, got {cfg.jem_lr}")

    extra_outputs = frozenset({"jem_logpx", "jem_pxgrad"})
    tune_scorer = "jem_px"
    resume_fields = ("jem_sgld_step",)

    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        return without_batch_norm(create_model(self.cfg.arch, num_classes, in_channels))  # type: ignore[return-value]

    # --- training ---
    def optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        """Adam at `jem_lr` without weight decay as in the paper's code, or SGD at `lr` with `weight_decay` like
        every method."""
        if self.cfg.jem_optimizer == "adam":
            return torch.optim.Adam([group | {"weight_decay": 0.0} for group in param_groups], lr=self.cfg.jem_lr)
        return super().optimizer(param_groups)

    def start(self, normalizer: Normalizer, device: torch.device) -> None:
        self.normalizer, self.device = normalizer, device
        self.unit = (0.5 / normalizer.std).to(device).view(1, -1, 1, 1)  # d(normalised pixel) / d(paper's pixel)
        self.buffer: ReplayBuffer | None = None  # made at the first step, when the image shape is known
        self.sums = {"energy_data": 0.0, "energy_samples": 0.0, "sgld_seconds": 0.0, "steps": 0}

    def _buffer(self, shape: tuple[int, ...]) -> ReplayBuffer:
        if self.buffer is None:
            low, high = self.normalizer(torch.zeros(1, shape[0], 1, 1)), self.normalizer(torch.ones(1, shape[0], 1, 1))
            self.buffer = ReplayBuffer(self.cfg.jem_buffer_size, shape, low.flatten(), high.flatten(), self.device)
        return self.buffer

    def sample(self, model: OpenSetNet, n: int, shape: tuple[int, ...], autocast: Autocast) -> torch.Tensor:
        """SGLD from the replay buffer, in a batch; the samples go back into the buffer."""
        cfg, buffer = self.cfg, self._buffer(shape)
        rows, x = buffer.draw(n, cfg.jem_reinit)
        was_training = model.training
        model.eval()  # no dropout or batch statistics while sampling (the backbone has no batch norm anyway)
        for _ in range(cfg.jem_sgld_steps):
            x.requires_grad_(True)
            with autocast():
                energy = logsumexp(model(x).logits).sum()
            grad = torch.autograd.grad(energy, x)[0]
            x = (x.detach() + cfg.jem_sgld_step * self.unit ** 2 * grad.float()
                 + cfg.jem_sgld_noise * self.unit * torch.randn_like(x)).detach()
        model.train(was_training)
        buffer.images[rows] = x
        return x

    def train_step(self, model: OpenSetNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   autocast: Autocast) -> torch.Tensor:
        cfg = self.cfg
        began = time.perf_counter()
        samples = self.sample(model, len(x), tuple(x.shape[1:]), autocast)
        sgld_seconds = time.perf_counter() - began
        x = x + cfg.jem_data_noise * self.unit * torch.randn_like(x)
        with autocast():
            data = model(x).logits
            fake = model(samples.contiguous(memory_format=torch.channels_last)).logits
        lse_data, lse_samples = logsumexp(data.detach()).mean(), logsumexp(fake.detach()).mean()
        sample_energy = float(-lse_samples)  # read every step: divergence is caught inside the epoch
        if not math.isfinite(sample_energy) or abs(sample_energy) > cfg.jem_energy_limit:
            raise DivergedError(f"the samples' energy exploded ({sample_energy:.3g}, limit {cfg.jem_energy_limit:g}); "
                                "resume from the last epoch's checkpoint with a smaller jem_sgld_step")
        loss = (F.cross_entropy(data, y, label_smoothing=cfg.label_smoothing)
                + cfg.jem_weight * generative_term(data, fake))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.sums["energy_data"] += float(-lse_data)
        self.sums["energy_samples"] += sample_energy
        self.sums["sgld_seconds"] += sgld_seconds
        self.sums["steps"] += 1
        return loss.detach()

    def epoch_metrics(self) -> dict[str, float]:
        steps = max(1, self.sums.pop("steps"))
        out = {f"train/{name}": value / steps for name, value in self.sums.items()}
        self.sums = dict.fromkeys(self.sums, 0.0) | {"steps": 0}
        return out

    def epoch_figures(self, epoch: int) -> dict[str, Figure]:
        every = self.cfg.jem_sample_every
        if not every or epoch % every or self.buffer is None:
            return {}
        images = self.buffer.images[:GRID].float().cpu()
        mean, std = self.normalizer.mean.view(1, -1, 1, 1), self.normalizer.std.view(1, -1, 1, 1)
        pixels = (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        side = math.ceil(math.sqrt(len(pixels)))
        figure = Figure(figsize=(side * 0.6, side * 0.6))
        grey = pixels.shape[-1] == 1
        for i, image in enumerate(pixels):
            ax = figure.add_subplot(side, side, i + 1)
            ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=1)
            ax.axis("off")
        figure.suptitle(f"replay-buffer samples after epoch {epoch}", fontsize=8)
        return {f"figures/samples_epoch_{epoch}.png": figure}

    def train_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.images.half() if self.buffer is not None else torch.empty(0)}

    def load_train_state(self, state: dict[str, Any]) -> None:
        if len(state.get("buffer", ())):
            shape = tuple(state["buffer"].shape[1:])
            self._buffer(shape).images = state["buffer"].float().to(self.device)

    # --- extraction ---
    def batch_extras(self, out: ModelOutput, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return {"jem_logpx": logsumexp(out.logits)}

    def extra_passes(self, model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     calibration: Calibration) -> dict[str, np.ndarray]:
        """`jem_pxgrad`: |grad_x logsumexp f(x)| per image, one backward pass per batch."""
        model.eval()
        norms = []
        for x in batches(images, normalizer, device):
            x.requires_grad_(True)
            grad = torch.autograd.grad(logsumexp(model(x).logits).sum(), x)[0]
            norms.append(grad.flatten(1).norm(dim=1).detach().cpu())
        return {"jem_pxgrad": torch.cat(norms).numpy()}

    # --- tuning ---
    def suggest(self, trial: optuna.Trial, tcfg: SearchBounds) -> dict[str, Any]:
        return {"jem_sgld_step": trial.suggest_float("jem_sgld_step", *STEP_RANGE, log=True),
                "jem_weight": trial.suggest_float("jem_weight", *WEIGHT_RANGE, log=True)}

    def talk_values(self, tcfg: SearchBounds) -> list[dict[str, Any]]:
        return [{"jem_sgld_step": 1.0, "jem_weight": 1.0}]  # the paper's


register_scorer("jem_px", "method")(lambda cfg: FunctionScorer(lambda o: -o.jem_logpx, requires=("jem_logpx",)))
register_scorer("jem_py", "method")(lambda cfg: FunctionScorer(lambda o: msp(o.logits),
                                                           requires=("logits", "jem_logpx")))
register_scorer("jem_pxgrad", "method")(lambda cfg: FunctionScorer(lambda o: o.jem_pxgrad, requires=("jem_pxgrad",)))
