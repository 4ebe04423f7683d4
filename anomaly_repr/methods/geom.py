"""`geom`: the classifier plus a head that tells which geometric transform was applied (Golan & El-Yaniv 2018,
"Deep anomaly detection using geometric transformations").

The transforms (`geom_transforms`), identity first, each a horizontal flip or not, then a shift, then a
rotation by k x 90 degrees:

- 72 (the paper's): flip x shifts (tx, ty) in {0, +s, -s}^2 x 4 rotations, s = a quarter of the image
  side (8 px at 32 px), reflect-padded;
- 18: flip x the nine shifts, no rotation;
- 8: flip x 4 rotations, no shift.

Training as in `auxiliary.py` (all transforms of every image per step unless `aux_samples` draws fewer).
Scores, higher = more anomalous: `geom`, the negative mean log-probability of the right transform over
the transforms; `geom_dirichlet`, the paper's: for each transform t a Dirichlet over the head's softmax
p(. | transform_t(x)), fitted by maximum likelihood (Minka's fixed point) on nominal *training* images
after training, and the score is the negative summed log-density over t. The fit reads at most
`DIRICHLET_FIT_IMAGES` nominal training images (a seeded draw): one forward per transform each.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import digamma, gammaln, polygamma

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods.auxiliary import Transform, TransformTask, wrong_transform
from anomaly_repr.methods.base import Calibration, register_method
from anomaly_repr.models.backbones import OpenSetNet
from anomaly_repr.scoring.scorers import FunctionScorer, register_scorer

GEOM_TRANSFORMS = (8, 18, 72)  # the transform sets: flip x rotations, flip x shifts, all three
DIRICHLET_FIT_IMAGES = 5000


def geometric(flip: bool, tx: int, ty: int, k: int) -> Transform:
    """Flip (horizontally), shift the content by (tx, ty) pixels with reflect padding, rotate by k x 90 degrees."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        if flip:
            x = x.flip(3)
        if tx or ty:
            s = max(abs(tx), abs(ty))
            h, w = x.shape[-2:]
            padded = F.pad(x, (s, s, s, s), mode="reflect")
            x = padded[..., s - ty:s - ty + h, s - tx:s - tx + w]
        return torch.rot90(x, k, dims=(2, 3)) if k else x
    return apply


def geom_parameters(count: int, size: int) -> list[tuple[bool, int, int, int]]:
    """(flip, tx, ty, k) of each transform of the set, the identity first."""
    s = size // 4
    shifts = (0, s, -s) if count in (18, 72) else (0,)
    rotations = range(4) if count in (8, 72) else (0,)
    return [(flip, tx, ty, k) for flip, tx, ty, k in product((False, True), shifts, shifts, rotations)]


def inverse_digamma(y: np.ndarray, steps: int = 5) -> np.ndarray:
    """x with digamma(x) = y: Minka's starting point, then Newton steps."""
    x = np.where(y >= -2.22, np.exp(y) + 0.5, -1.0 / (y - digamma(1.0)))
    for _ in range(steps):
        x = x - (digamma(x) - y) / polygamma(1, x)
    return x


def fit_dirichlet(logp: np.ndarray, iterations: int = 1000, tol: float = 1e-7) -> np.ndarray:
    """Maximum-likelihood Dirichlet concentration (K,) for probability vectors given as log p (N, K):
    the fixed point digamma(a_k) = digamma(sum a) + mean_n log p_nk (Minka 2000)."""
    mean_logp = logp.mean(axis=0)
    alpha = np.ones(logp.shape[1])
    for _ in range(iterations):
        new = inverse_digamma(digamma(alpha.sum()) + mean_logp)
        if np.abs(new - alpha).max() < tol * alpha.max():
            return new
        alpha = new
    return alpha


def dirichlet_logpdf(logp: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """log Dir(p; alpha) per row of log p (N, K)."""
    return gammaln(alpha.sum()) - gammaln(alpha).sum() + ((alpha - 1) * logp).sum(axis=1)


@register_method("geom")
class Geom(TransformTask):
    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if cfg.geom_transforms not in GEOM_TRANSFORMS:
            raise ConfigError(f"geom_transforms must be one of {', '.join(map(str, GEOM_TRANSFORMS))}, "
                              f"got {cfg.geom_transforms}")

    task = "geom"
    extra_outputs = frozenset({"geom_logp", "geom_dirichlet_nll"})
    tune_scorer = "geom"

    def transforms(self, channels: int, size: int) -> list[Transform]:
        return [geometric(*p) for p in geom_parameters(self.cfg.geom_transforms, size)]

    @classmethod
    def transform_count(cls, cfg: ExperimentConfig) -> int:
        return cfg.geom_transforms

    def calibrate(self, model: OpenSetNet, nominal_val: torch.Tensor, normalizer: Normalizer, device: torch.device,
                  nominal_train: torch.Tensor) -> Calibration:
        """One Dirichlet per transform, fitted on the head's softmax over nominal training images."""
        rng = np.random.default_rng(self.cfg.seed)
        n = min(len(nominal_train), DIRICHLET_FIT_IMAGES)
        chosen = torch.from_numpy(np.sort(rng.choice(len(nominal_train), n, replace=False)))
        logp = self.transform_logp(model, nominal_train[chosen], normalizer, device)
        alpha = np.stack([fit_dirichlet(logp[:, t].astype(np.float64)) for t in range(logp.shape[1])])
        return Calibration(values={"dirichlet_alpha": alpha},
                           metrics={"geom/dirichlet_fit_images": float(n)},
                           records={"geom/dirichlet_alpha.json": alpha.tolist()})

    def extra_passes(self, model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     calibration: Calibration) -> dict[str, np.ndarray]:
        logp = self.transform_logp(model, images, normalizer, device).astype(np.float64)
        alpha = calibration.values["dirichlet_alpha"]
        loglik = np.sum([dirichlet_logpdf(logp[:, t], alpha[t]) for t in range(len(alpha))], axis=0)
        return {"geom_logp": np.diagonal(logp, axis1=1, axis2=2).copy(), "geom_dirichlet_nll": -loglik}


register_scorer("geom", "method")(lambda cfg: FunctionScorer(lambda o: wrong_transform(o.geom_logp), ("geom_logp",)))
register_scorer("geom_dirichlet", "method")(lambda cfg: FunctionScorer(lambda o: o.geom_dirichlet_nll,
                                                                   ("geom_dirichlet_nll",)))
