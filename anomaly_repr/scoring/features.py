"""Feature-space detectors: deployable scorers that learn from nominal outputs only.

Each is an estimator like the others (`fit` on a reference, `score` higher = more anomalous), fitted on
the outputs of the nominal training images (or the nominal validation images, `scorer_reference`): they
never see an anomaly, which is what makes them deployable, unlike the oracles. They read z, the logits
and, for those that recompute logits, the final layer (`Outputs.final_layer`). Defaults follow OpenOOD
v1.5's configs for CIFAR-10 where it has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import numpy as np
import torch
from scipy.special import logsumexp, softmax

from anomaly_repr.errors import DataError
from anomaly_repr.scoring.outputs import Outputs
from anomaly_repr.scoring.scorers import FunctionScorer, check_fitted, register_scorer

if TYPE_CHECKING:
    from anomaly_repr.config import ExperimentConfig

class NominalScorer:
    """Base of the feature scorers: `fit` checks that the reference holds nominal images only."""

    requires: tuple[str, ...] = ("z",)
    fits_reference = True

    def fit(self, reference: Outputs) -> Self:
        if reference.is_anomaly.any():
            raise DataError(f"{type(self).__name__} learns from nominal outputs only; the reference holds "
                            f"{int(reference.is_anomaly.sum())} anomaly images")
        if len(reference.labels) == 0:
            raise DataError(f"{type(self).__name__} needs a non-empty nominal reference")
        self._learn(reference)
        self.fitted_ = True
        return self

    def _learn(self, reference: Outputs) -> None:
        raise NotImplementedError

    def score(self, outputs: Outputs) -> np.ndarray:
        check_fitted(self)
        return self._score(outputs)

    def _score(self, outputs: Outputs) -> np.ndarray:
        raise NotImplementedError


def _unit(z: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


class KNN(NominalScorer):
    """Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors": the distance from the
    L2-normalised z to its k-th nearest L2-normalised nominal reference feature (OpenOOD: k = 50).

    Exact search: for unit vectors the squared distance is 2 - 2 cos, so the k nearest are the k largest
    dot products, found with one matrix product and `topk` per batch of test rows."""

    def __init__(self, k: int = 50, batch_size: int = 2048):
        self.k, self.batch_size = k, batch_size

    def _learn(self, reference: Outputs) -> None:
        self.bank_ = _unit(reference.z)
        self.k_ = min(self.k, len(self.bank_))

    def _score(self, outputs: Outputs) -> np.ndarray:
        query = _unit(outputs.z)
        kth = [torch.topk(rows @ self.bank_.T, self.k_, dim=1).values[:, -1] for rows in query.split(self.batch_size)]
        cos = torch.cat(kth) if kth else torch.empty(0)
        return (2.0 - 2.0 * cos).clamp_min(0).sqrt().numpy().astype(np.float64)


def _precision(centred: np.ndarray) -> np.ndarray:
    """Inverse of the (maximum-likelihood) covariance of centred rows; a pseudo-inverse when it is singular."""
    cov = centred.T @ centred / len(centred)
    return np.linalg.pinv(cov, hermitian=True)


def _class_mahalanobis(z: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N, K) squared Mahalanobis distances of each row to each class mean under one shared precision."""
    zp = z @ precision
    quad = np.einsum("nd,nd->n", zp, z)[:, None]
    cross = zp @ means.T
    mean_quad = np.einsum("kd,kd->k", means @ precision, means)[None, :]
    return np.maximum(quad - 2.0 * cross + mean_quad, 0.0)


class Mahalanobis(NominalScorer):
    """Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples and
    adversarial attacks", on the penultimate layer z, without input perturbation or feature ensembles:
    the minimum over known classes of the squared Mahalanobis distance to the class mean, with one
    covariance shared by the classes (fitted on the nominal reference with its class labels)."""

    def _learn(self, reference: Outputs) -> None:
        z, y = reference.z.astype(np.float64), reference.labels
        classes = np.unique(y)
        self.means_ = np.stack([z[y == c].mean(axis=0) for c in classes])
        self.precision_ = _precision(z - self.means_[np.searchsorted(classes, y)])

    def _score(self, outputs: Outputs) -> np.ndarray:
        return _class_mahalanobis(outputs.z.astype(np.float64), self.means_, self.precision_).min(axis=1)


class RelativeMahalanobis(Mahalanobis):
    """Ren et al. 2021, "A simple fix to Mahalanobis distance for improving near-OOD detection" (RMDS):
    min over classes of (class-conditional distance minus the distance under one Gaussian fitted to all
    nominal features, the background)."""

    def _learn(self, reference: Outputs) -> None:
        super()._learn(reference)
        z = reference.z.astype(np.float64)
        self.background_mean_ = z.mean(axis=0, keepdims=True)
        self.background_precision_ = _precision(z - self.background_mean_)

    def _score(self, outputs: Outputs) -> np.ndarray:
        z = outputs.z.astype(np.float64)
        background = _class_mahalanobis(z, self.background_mean_, self.background_precision_)
        return (_class_mahalanobis(z, self.means_, self.precision_) - background).min(axis=1)


def vim_dim(width: int) -> int:
    """The principal-subspace dimension by Wang et al.'s rule: 1000 for features of 2048 and more, 512 for
    768 and more, else half the width (OpenOOD: 256 for the CIFAR ResNet-18's 512)."""
    return 1000 if width >= 2048 else 512 if width >= 768 else max(1, width // 2)


class ViM(NominalScorer):
    """Wang et al. 2022, "ViM: out-of-distribution with virtual-logit matching": the norm of z's residual
    off the principal subspace of the nominal features (about the origin u = -pinv(W) b), scaled by
    alpha = mean max logit / mean residual norm on the reference, is a virtual logit; the score is that
    virtual logit minus logsumexp of the real logits (OpenOOD's ViM score, negated)."""

    requires: tuple[str, ...] = ("z", "logits", "final_layer")

    def __init__(self, dim: int = 0):
        self.dim = dim  # 0: `vim_dim` of the feature width

    def _learn(self, reference: Outputs) -> None:
        weight, bias = reference.final_layer
        z = reference.z.astype(np.float64)
        self.origin_ = -np.linalg.pinv(weight.astype(np.float64)) @ bias.astype(np.float64)
        dim = self.dim or vim_dim(z.shape[1])
        if not 0 < dim < z.shape[1]:
            raise DataError(f"vim_dim must be between 1 and the feature width - 1 ({z.shape[1] - 1}), got {dim}")
        centred = z - self.origin_
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
        self.null_space_ = eigenvectors[:, np.argsort(eigenvalues)[::-1][dim:]]  # the least-variance directions
        residual = np.linalg.norm(centred @ self.null_space_, axis=1)
        self.alpha_ = reference.logits.max(axis=1).mean() / residual.mean()

    def _score(self, outputs: Outputs) -> np.ndarray:
        residual = np.linalg.norm((outputs.z.astype(np.float64) - self.origin_) @ self.null_space_, axis=1)
        virtual = self.alpha_ * residual
        return virtual - logsumexp(outputs.logits.astype(np.float64), axis=1)


class FDBD(NominalScorer):
    """Liu & Qin 2024, "Fast decision boundary based out-of-distribution detector": the mean over the
    other classes of z's distance to the decision boundary between the predicted class and that class,
    |logit_c - logit_max| / ||w_c - w_max||, divided by z's distance to the mean nominal feature; a small
    value (close to a boundary, far from the data) means anomalous, so the score is its negative."""

    requires: tuple[str, ...] = ("z", "logits", "final_layer")

    def _learn(self, reference: Outputs) -> None:
        weight, _ = reference.final_layer
        self.mean_ = reference.z.astype(np.float64).mean(axis=0)
        w = weight.astype(np.float64)
        norms = (w * w).sum(axis=1)  # ||w_i - w_j||^2 = |w_i|^2 + |w_j|^2 - 2 w_i.w_j: no (K, K, D) tensor
        self.gaps_ = np.sqrt(np.clip(norms[:, None] + norms[None, :] - 2.0 * w @ w.T, 0.0, None))
        np.fill_diagonal(self.gaps_, 1.0)  # the predicted class's own term is 0 / 1

    def _score(self, outputs: Outputs) -> np.ndarray:
        logits = outputs.logits.astype(np.float64)
        top = logits.argmax(axis=1)
        distances = np.abs(logits - logits[np.arange(len(top)), top][:, None]) / self.gaps_[top]
        mean_distance = distances.sum(axis=1) / max(1, logits.shape[1] - 1)
        return -mean_distance / np.linalg.norm(outputs.z.astype(np.float64) - self.mean_, axis=1).clip(1e-12)


class ReAct(NominalScorer):
    """Sun et al. 2021, "ReAct: out-of-distribution detection with rectified activations": clip z at the
    `percentile` of the nominal reference's activations (OpenOOD: 90), recompute the logits with the final
    layer, score by energy (negative log-sum-exp)."""

    requires: tuple[str, ...] = ("z", "final_layer")

    def __init__(self, percentile: float = 90.0):
        self.percentile = percentile

    def _learn(self, reference: Outputs) -> None:
        self.threshold_ = float(np.percentile(reference.z, self.percentile))

    def _score(self, outputs: Outputs) -> np.ndarray:
        weight, bias = outputs.final_layer
        logits = np.minimum(outputs.z, self.threshold_).astype(np.float64) @ weight.T.astype(np.float64) + bias
        return -logsumexp(logits, axis=1)


def generalized_entropy(logits: np.ndarray, gamma: float = 0.1, top: int = 0) -> np.ndarray:
    """Liu et al. 2023, "GEN: pushing the limits of softmax-based out-of-distribution detection": the sum
    over the `top` largest softmax probabilities (0 = all classes) of p^gamma (1 - p)^gamma; flat
    distributions score high. Needs no reference."""
    p = np.sort(softmax(logits.astype(np.float64), axis=1), axis=1)[:, ::-1]
    p = p[:, :top] if top else p
    return (p**gamma * (1.0 - p) ** gamma).sum(axis=1)


@register_scorer("knn", "feature")
def _knn(cfg: ExperimentConfig) -> KNN:
    return KNN(cfg.knn_k)


@register_scorer("mahalanobis", "feature")
def _mahalanobis(cfg: ExperimentConfig) -> Mahalanobis:
    return Mahalanobis()


@register_scorer("rmds", "feature")
def _rmds(cfg: ExperimentConfig) -> RelativeMahalanobis:
    return RelativeMahalanobis()


@register_scorer("vim", "feature")
def _vim(cfg: ExperimentConfig) -> ViM:
    return ViM(cfg.vim_dim)


@register_scorer("fdbd", "feature")
def _fdbd(cfg: ExperimentConfig) -> FDBD:
    return FDBD()


@register_scorer("react", "feature")
def _react(cfg: ExperimentConfig) -> ReAct:
    return ReAct(cfg.react_percentile)


@register_scorer("gen", "feature")
def _gen(cfg: ExperimentConfig) -> FunctionScorer:
    return FunctionScorer(lambda outputs: generalized_entropy(outputs.logits, cfg.gen_gamma, cfg.gen_top))
