"""Extract once: one pass per model and split gives every output that any scorer reads.

Optional outputs exist only for the models that produce them: `recon_error` for hybrid models (a
decoder), `godin_h` / `godin_g` for G-ODIN heads, and `godin_h_perturbed` once an input-perturbation
magnitude has been chosen (`select_epsilon`, on nominal validation images only).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from anomaly_repr.models import OpenSetNet
from anomaly_repr.pipeline import Normalizer, eval_batches
from anomaly_repr.split import UNKNOWN


@dataclass(frozen=True)
class Outputs:
    z: np.ndarray  # (N, D) float32 latent features
    logits: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64: 0..K-1 known, -1 anomaly
    recon_error: np.ndarray | None = None  # (N,) hybrid: mean squared reconstruction error per image
    godin_h: np.ndarray | None = None  # (N, K) G-ODIN h_i(z)
    godin_g: np.ndarray | None = None  # (N,) G-ODIN g(z)
    godin_h_perturbed: np.ndarray | None = None  # (N,) G-ODIN max_i h_i after input perturbation

    @property
    def is_anomaly(self) -> np.ndarray:
        return self.labels == UNKNOWN

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)
                                     if getattr(self, f.name) is not None})

    @classmethod
    def load(cls, path: Path) -> Outputs:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _perturbed_max_h(model: OpenSetNet, x: torch.Tensor, epsilon: float, normalizer: Normalizer) -> torch.Tensor:
    """G-ODIN input preprocessing: step each pixel by epsilon (in [0, 1] pixel units) up the gradient of
    max_i h_i, then return max_i h_i of the stepped image."""
    x = x.detach().requires_grad_(True)
    score = model(_channels_last(x)).h.max(dim=1).values
    (grad,) = torch.autograd.grad(score.sum(), x)
    step = epsilon * grad.sign() / normalizer.std.to(x.device).view(1, -1, 1, 1)  # pixel units -> normalised
    with torch.no_grad():
        return model(_channels_last(x + step)).h.max(dim=1).values


def perturbed_scores(model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     epsilon: float, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([_perturbed_max_h(model, x, epsilon, normalizer).float().cpu()
                      for x in eval_batches(images, normalizer, batch_size, device)]).numpy()


def select_epsilon(model: OpenSetNet, nominal_images: torch.Tensor, normalizer: Normalizer,
                   device: torch.device, grid: list[float]) -> tuple[float, dict[float, float]]:
    """The epsilon of `grid` that maximises the mean perturbed max h over *nominal validation* images.

    This is G-ODIN's anomaly-free selection: the caller passes known-class validation images only, so
    neither anomalies nor test images can influence the choice. Returns (epsilon, mean score per epsilon).
    """
    means = {eps: float(perturbed_scores(model, nominal_images, normalizer, device, eps).mean()) for eps in grid}
    return max(means, key=means.get), means


@torch.no_grad()
def extract(model: OpenSetNet, images: torch.Tensor, labels: np.ndarray, normalizer: Normalizer,
            device: torch.device, batch_size: int = 512) -> Outputs:
    """Run `model` once over uint8 `images`; `labels` are open-set labels (-1 = anomaly)."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"z": [], "logits": [], "recon_error": [], "godin_h": [], "godin_g": []}
    for x in eval_batches(images, normalizer, batch_size, device):
        out = model(_channels_last(x))
        parts["z"].append(out.z)
        parts["logits"].append(out.logits)
        if out.recon is not None:
            parts["recon_error"].append((out.recon.float() - x).pow(2).mean(dim=(1, 2, 3)))
        if out.h is not None:
            parts["godin_h"].append(out.h)
            parts["godin_g"].append(out.g)
    arrays = {k: torch.cat(v).float().cpu().numpy() for k, v in parts.items() if v}
    return Outputs(labels=np.asarray(labels), **arrays)
