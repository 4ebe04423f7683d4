"""`svgd`: an ensemble whose members are particles moved together by Stein variational gradient descent
(SVGD, Liu & Wang 2016), with the kernel on the particles' predictions (function space, D'Angelo & Fortuin
2021, "Repulsive deep ensembles are Bayesian", Sec. 3.3-3.4, eq. 20) or on their weights (`svgd_space`).

The update. M particles x_1..x_M: in function space x_i = f_i(X), particle i's logits on the batch X,
flattened (B*K values; the logits, the paper code's `logit_soft=1`: on softmax outputs the likelihood's
gradient y/p is unbounded); in weight space x_i = theta_i, its weights flattened. s_i = -grad_{x_i} L_i,
where L_i is particle i's batch-mean cross-entropy (with label smoothing and mixing as configured): the
gradient of its log-likelihood, per example. The kernel is k_ij = exp(-|x_i - x_j|^2 / h) with the median
heuristic of the paper's code, h = svgd_bandwidth * med_ij |x_i - x_j|^2 / log(M + 1) (median over all
M x M pairs, the zero diagonal included), recomputed at every step and not differentiated. Each particle
moves along

    phi_i = [ sum_j k_ij s_j  +  svgd_repulsion * sum_j grad_{x_j} k(x_j, x_i) ] / sum_j k_ij,
    where   sum_j grad_{x_j} k(x_j, x_i) = (2 / h) sum_j k_ij (x_i - x_j)     (away from the others):

Liu & Wang's phi normalised by sum_j k_ij instead of M (as the paper's kernel-density repulsion is), so that
a particle's step is a kernel-weighted mean, as large as one network's step whatever M, and the classifier's
learning rate and schedule apply unchanged. svgd_repulsion = 0 switches the kernel off (k_ij = delta_ij):
phi_i = s_i, each particle takes its own gradient step, a deep ensemble trained in lockstep on shared
batches. In function space phi_i is pulled back to the weights by the vector-Jacobian product J_i^T phi_i
(backpropagating -<f_i(X), stopgrad(phi_i)>); in weight space it is the weights' direction itself. One
optimiser (the classifier's SGD with Nesterov momentum and schedule) descends along -phi for all
particles at once; time and memory grow linearly in M.

The prior is a Gaussian on the weights, as weight decay on each particle's own weights (applied by the
optimiser, outside the kernel average), in both spaces; the paper's function-space runs estimate the score
of a functional prior with SSGE instead, which is not done here. Units: s is per example, where the paper
scales the log-likelihood by the training-set size N, so svgd_repulsion = 1 weighs the repulsion N times
more, relative to the data, than the paper's default; `tune --target svgd` searches it (log-uniform) with
the bandwidth's scale. Particle i starts from the weights of deep-ensemble member i of the same seed.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods.base import Autocast, register_method
from anomaly_repr.methods.ensemble import Ensemble, EnsembleNet, check_size, member_seeds
from anomaly_repr.models.backbones import OpenSetNet, create_model

if TYPE_CHECKING:
    import optuna

    from anomaly_repr.methods.base import SearchBounds


REPULSION_RANGE, BANDWIDTH_RANGE = (0.01, 100.0), (0.1, 10.0)  # `tune --target svgd`, both log-uniform


def svgd_direction(x: torch.Tensor, s: torch.Tensor, repulsion: float, bandwidth: float) -> torch.Tensor:
    """phi (M, D) for particles x (M, D) whose log-likelihood gradients are s (M, D): see the module."""
    if repulsion == 0:
        return s
    x, s = x.float(), s.float()
    d2 = torch.cdist(x, x).pow(2)
    h = (bandwidth * torch.quantile(d2.flatten(), 0.5) / math.log(len(x) + 1)).clamp_min(1e-12)
    k = torch.exp(-d2 / h)
    total = k.sum(dim=1, keepdim=True)
    repulse = (2.0 / h) * (total * x - k @ x)  # sum_j k_ij (x_i - x_j)
    return (k @ s + repulsion * repulse) / total


@register_method("svgd")
class Svgd(Ensemble):
    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if cfg.svgd_repulsion < 0 or not cfg.svgd_bandwidth > 0:
            raise ConfigError(f"svgd_repulsion must not be negative and svgd_bandwidth must be positive, got "
                              f"{cfg.svgd_repulsion} and {cfg.svgd_bandwidth}")

    tune_scorer = "max_logit"

    @classmethod
    def settle(cls, cfg: ExperimentConfig) -> dict:
        check_size(cfg)
        return {}

    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        members = []
        for seed in member_seeds(self.cfg):
            torch.manual_seed(seed)  # the caller forks the random state: this stays inside
            members.append(create_model(self.cfg.arch, num_classes, in_channels))
        return EnsembleNet(members)

    def train_step(self, model: OpenSetNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   autocast: Autocast) -> torch.Tensor:
        assert isinstance(model, EnsembleNet)
        cfg, particles = self.cfg, list(model.members)
        with autocast():
            f = [particle(x).logits.flatten() for particle in particles]  # float32 out of every network
        losses = torch.stack([F.cross_entropy(v.view(len(x), -1), y, label_smoothing=cfg.label_smoothing) for v in f])
        optimizer.zero_grad(set_to_none=True)
        if cfg.svgd_space == "function":
            grads = torch.autograd.grad(losses.sum(), f, retain_graph=True)
            phi = svgd_direction(torch.stack([v.detach() for v in f]), -torch.stack(grads), cfg.svgd_repulsion,
                                 cfg.svgd_bandwidth)
            (-sum((v * p).sum() for v, p in zip(f, phi, strict=True))).backward()
        else:
            losses.sum().backward()
            params = [[p for p in particle.parameters() if p.grad is not None] for particle in particles]
            theta = torch.stack([torch.cat([p.detach().flatten() for p in ps]) for ps in params])
            grad = torch.stack([torch.cat([p.grad.flatten() for p in ps]) for ps in params])  # type: ignore[union-attr]
            phi = svgd_direction(theta, -grad, cfg.svgd_repulsion, cfg.svgd_bandwidth)
            for ps, direction in zip(params, phi, strict=True):
                for p, part in zip(ps, direction.split([p.numel() for p in ps]), strict=True):
                    p.grad.copy_(-part.view_as(p))  # type: ignore[union-attr]
        optimizer.step()
        return losses.mean().detach()

    def suggest(self, trial: optuna.Trial, tcfg: SearchBounds) -> dict[str, Any]:
        return {"svgd_repulsion": trial.suggest_float("svgd_repulsion", *REPULSION_RANGE, log=True),
                "svgd_bandwidth": trial.suggest_float("svgd_bandwidth", *BANDWIDTH_RANGE, log=True)}

    def talk_values(self, tcfg: SearchBounds) -> list[dict[str, Any]]:
        """The defaults first (the talk gives no values)."""
        defaults = {f.name: f.default for f in fields(ExperimentConfig)}
        return [{"svgd_repulsion": defaults["svgd_repulsion"], "svgd_bandwidth": defaults["svgd_bandwidth"]}]
