"""`godin`: Generalized ODIN (Hsu et al. 2020): logits h_i(z) / g(z), g(z) = sigmoid(BN(linear(z))).

h is the similarity of z to class vectors w_i (`godin_h`: cosine, the paper's choice, inner or
euclidean); the vectors get their own weight decay (`godin_h_weight_decay`, none in the paper, since
decay would shrink what h compares z with). After training, the input-perturbation magnitude ε is chosen
from the `godin_epsilons` grid on *nominal validation* images only: the ε that maximises the mean
perturbed max h. Scores (higher = more anomalous): `godin` (negative max h after perturbation, the
paper's), `godin_quotient` (negative max h/g) and `godin_g` (negative g). `tune --target godin` searches
h, ε, the decay of h and (when several are given) the scorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_repr.config import GODIN_H
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods.base import Calibration, Method, register_method
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet, build_backbone
from anomaly_repr.scoring.outputs import batches, channels_last
from anomaly_repr.scoring.scorers import FunctionScorer, register_scorer

if TYPE_CHECKING:
    import optuna

    from anomaly_repr.config import ExperimentConfig
    from anomaly_repr.methods.base import SearchBounds

H_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 5e-4)  # candidate L2 penalties on h searched by `tune` (0: Hsu et al. 2020)


class GodinHead(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, similarity: str):
        super().__init__()
        self.similarity = similarity  # cosine | inner | euclidean
        self.h = nn.Linear(z_dim, num_classes, bias=False)  # class vectors w_i
        self.g = nn.Sequential(nn.Linear(z_dim, 1), nn.BatchNorm1d(1), nn.Sigmoid())

    def parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.h.weight
        if self.similarity == "cosine":
            h = F.normalize(z, dim=1) @ F.normalize(w, dim=1).T
        elif self.similarity == "inner":
            h = z @ w.T
        else:  # negative squared euclidean distance
            h = -torch.cdist(z, w).pow(2)
        return h, self.g(z).squeeze(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, g = self.parts(z)
        return h / g[:, None]


class GodinNet(OpenSetNet):
    head: GodinHead

    def forward_head(self, z: torch.Tensor) -> ModelOutput:
        h, g = self.head.parts(z)
        return ModelOutput(logits=h / g[:, None], z=z, extras={"h": h, "g": g})


def build_godin(arch: str, num_classes: int, in_channels: int, similarity: str = "cosine") -> GodinNet:
    backbone, z_dim = build_backbone(arch, in_channels)
    return GodinNet(backbone, z_dim, GodinHead(z_dim, num_classes, similarity))


def _perturbed_max_h(model: OpenSetNet, x: torch.Tensor, epsilon: float, normalizer: Normalizer) -> torch.Tensor:
    """G-ODIN input preprocessing: step each pixel by epsilon (in [0, 1] pixel units) up the gradient of
    max_i h_i, then return max_i h_i of the stepped image. Gradients in fp32: no autocast here."""
    x = x.detach().requires_grad_(True)
    score = model(channels_last(x)).h.max(dim=1).values
    (grad,) = torch.autograd.grad(score.sum(), x)
    step = epsilon * grad.sign() / normalizer.std.to(x.device).view(1, -1, 1, 1)  # pixel units -> normalised
    with torch.no_grad():
        return model(channels_last(x + step)).h.max(dim=1).values


def perturbed_scores(model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     epsilon: float, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([_perturbed_max_h(model, x, epsilon, normalizer).float().cpu()
                      for x in batches(images, normalizer, device, batch_size)]).numpy()


def select_epsilon(model: OpenSetNet, nominal_images: torch.Tensor, normalizer: Normalizer,
                   device: torch.device, grid: list[float]) -> tuple[float, dict[float, float]]:
    """The epsilon of `grid` that maximises the mean perturbed max h over *nominal validation* images:
    G-ODIN's anomaly-free selection. Returns (epsilon, mean score per epsilon)."""
    means = {eps: float(perturbed_scores(model, nominal_images, normalizer, device, eps).mean()) for eps in grid}
    return max(means, key=means.__getitem__), means


def epsilons(cfg: ExperimentConfig) -> list[float]:
    """The perturbation grid `godin_epsilons` as numbers (checked: non-negative, at least one)."""
    try:
        grid = [float(v) for v in cfg.godin_epsilons.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"godin_epsilons must be comma-separated numbers, got {cfg.godin_epsilons!r}") from None
    if not grid or min(grid) < 0:
        raise ConfigError(f"godin_epsilons must be non-negative numbers, got {cfg.godin_epsilons!r}")
    return grid


@register_method("godin")
class Godin(Method):
    extra_outputs = frozenset({"godin_h", "godin_g", "godin_h_perturbed"})
    linear_head = False  # logits = h(z) / g(z)
    selectors = ("head",)
    tune_scorer = "godin"

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        if cfg.godin_h_weight_decay < 0:
            raise ConfigError(f"godin_h_weight_decay must not be negative, got {cfg.godin_h_weight_decay}")
        epsilons(cfg)

    @classmethod
    def claims(cls, cfg: ExperimentConfig) -> bool:
        return cfg.head == "godin"

    @classmethod
    def settle(cls, cfg: ExperimentConfig) -> dict[str, Any]:
        if cfg.head not in ("godin", "linear"):  # "linear" is the default: choosing the method implies the head
            raise ConfigError(f"method=godin contradicts head={cfg.head}")
        return {"head": "godin"}

    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        return build_godin(self.cfg.arch, num_classes, in_channels, self.cfg.godin_h)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The default groups without the class vectors h, which get `godin_h_weight_decay`."""
        h = model.get_parameter("head.h.weight")
        groups = super().param_groups(model)
        for group in groups:
            group["params"] = [p for p in group["params"] if p is not h]
        return [*groups, {"params": [h], "weight_decay": self.cfg.godin_h_weight_decay}]

    def batch_extras(self, out: ModelOutput, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return {"godin_h": out.extras["h"], "godin_g": out.extras["g"]}

    def calibrate(self, model: OpenSetNet, nominal_val: torch.Tensor, normalizer: Normalizer, device: torch.device,
                  nominal_train: torch.Tensor) -> Calibration:
        grid = epsilons(self.cfg)
        if len(grid) == 1:  # a grid of one value (a tuned epsilon): nothing to search
            return Calibration(values={"epsilon": grid[0]}, metrics={"godin/epsilon": grid[0]})
        epsilon, means = select_epsilon(model, nominal_val, normalizer, device, grid)
        return Calibration(values={"epsilon": epsilon}, metrics={"godin/epsilon": epsilon},
                           records={"godin/epsilon_search.json": {str(k): v for k, v in means.items()}})

    def extra_passes(self, model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     calibration: Calibration) -> dict[str, np.ndarray]:
        return {"godin_h_perturbed": perturbed_scores(model, images, normalizer, device,
                                                      calibration.values["epsilon"])}

    def suggest(self, trial: optuna.Trial, tcfg: SearchBounds) -> dict[str, Any]:
        return {"godin_h": trial.suggest_categorical("godin_h", GODIN_H),
                "godin_epsilons": str(trial.suggest_categorical("godin_epsilon", epsilons(self.cfg))),
                "godin_h_weight_decay": trial.suggest_categorical("godin_h_weight_decay", H_WEIGHT_DECAYS)}

    def talk_values(self, tcfg: SearchBounds) -> list[dict[str, Any]]:
        """Cosine h and no decay on h (ε and the scorer are left to the sampler)."""
        return [{"godin_h": "cosine", "godin_h_weight_decay": 0.0}]


register_scorer("godin", "method")(lambda cfg: FunctionScorer(lambda o: -o.godin_h_perturbed, ("godin_h_perturbed",)))
register_scorer("godin_quotient", "method")(lambda cfg: FunctionScorer(
    lambda o: -(o.godin_h / o.godin_g[:, None]).max(axis=1), ("godin_h", "godin_g")))
register_scorer("godin_g", "method")(lambda cfg: FunctionScorer(lambda o: -o.godin_g, ("godin_g",)))
