"""`ensemble`: a deep ensemble (Lakshminarayanan et al. 2017) of `ensemble_size` classifiers, and what every
ensemble shares (the SVGD ensemble of `svgd.py` too): the joined network, its outputs and its scorers.

Each member is the classifier of the same architecture, trained on its own on the known classes with its
own seed (`seed + 1000 i`: member 0 is the classifier of the same seed), hence its own initial
weights and data order, and its own early stopping on validation accuracy; members train one after
another (`ensemble_workers` > 1: in that many local processes). The ensemble predicts with the members'
mean logits; z is the members' z side by side, so the oracles (and the feature-space scorers) read the
concatenation, and the members' outputs are kept with a member axis: `member_logits` (N, M, K) and
`member_z` (N, M, D). Each member, scored on its own, gives `test/member_mean/<scorer>/auroc`, the mean
over members: does the ensemble's representation hold more anomaly information than one member's, and
how much of that is only the larger width?

Scorers (higher = more anomalous), on the members' softmax p_m and logits l_m:
`ens_msp` 1 - max_k mean_m p_m; `ens_entropy` H(mean_m p_m) (total uncertainty); `mutual_info`
H(mean_m p_m) - mean_m H(p_m) (the epistemic part); `ens_max_logit` -max_k mean_m l_m; `ens_energy`
-mean_m logsumexp(l_m); `disagreement`, the fraction of members whose argmax differs from the ensemble's.
The classic scorers read the mean logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from scipy.special import logsumexp, softmax
from torch import nn

from anomaly_repr.errors import ConfigError
from anomaly_repr.methods.base import Method, child_config, register_method
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet, create_model
from anomaly_repr.scoring.outputs import Outputs
from anomaly_repr.scoring.scorers import FunctionScorer, ScorerFactory, register_scorer

if TYPE_CHECKING:
    from anomaly_repr.config import ExperimentConfig

MEMBER_OUTPUTS = frozenset({"member_logits", "member_z"})


class EnsembleNet(OpenSetNet):
    """M member networks side by side: logits = their mean logits, z = their z concatenated; the extras
    `member_logits` (N, M, K) and `member_z` (N, M, D). Parameters are `members.<i>.backbone.*` and
    `members.<i>.head.*`."""

    def __init__(self, members: list[OpenSetNet]):
        nn.Module.__init__(self)
        self.members = nn.ModuleList(members)
        self.z_dim = sum(m.z_dim for m in members)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        outs = [member(x) for member in self.members]
        logits = torch.stack([o.logits for o in outs], dim=1)
        z = torch.stack([o.z for o in outs], dim=1)
        return ModelOutput(logits=logits.mean(dim=1), z=z.flatten(1), extras={"member_logits": logits, "member_z": z})

    def final_linear(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The mean of linear heads is linear in the concatenated z: weights side by side over M, mean bias."""
        layers = [cast(OpenSetNet, m).final_linear() for m in self.members]
        if any(layer is None for layer in layers):
            return None
        weights, biases = zip(*layers, strict=True)  # type: ignore[misc]  # None ruled out above
        return torch.cat(weights, dim=1) / len(layers), torch.stack(biases).mean(dim=0)

    def served_outputs(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        return {"logits": out.logits, "member_logits": out.extras["member_logits"].flatten(1)}


def check_size(cfg: ExperimentConfig) -> None:
    if cfg.ensemble_size < 2:
        raise ConfigError(f"ensemble_size must be at least 2, got {cfg.ensemble_size}")


MEMBER_SEED_STRIDE = 1000  # member i's seed is seed + 1000 i: apart for the seeds of a study (below 1000)


def member_seeds(cfg: ExperimentConfig) -> list[int]:
    """Member i's seed: seed + 1000 i (member 0 is the classifier of the same seed)."""
    return [cfg.seed + MEMBER_SEED_STRIDE * i for i in range(cfg.ensemble_size)]


def member_views(outputs: dict[str, Outputs]) -> list[dict[str, Outputs]]:
    """Each member's own outputs (its z and logits), part by part."""
    members = next(iter(outputs.values())).member_logits.shape[1]
    return [{part: Outputs(out.member_z[:, m], out.member_logits[:, m], out.labels) for part, out in outputs.items()}
            for m in range(members)]


class Ensemble(Method):
    """What every ensemble method says: its outputs, its members' views."""

    extra_outputs = MEMBER_OUTPUTS

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        if cfg.ensemble_size < 1 or cfg.ensemble_workers < 1:
            raise ConfigError(f"ensemble_size and ensemble_workers must be positive integers, got "
                              f"{cfg.ensemble_size} and {cfg.ensemble_workers}")

    def batch_extras(self, out: ModelOutput, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return {"member_logits": out.extras["member_logits"], "member_z": out.extras["member_z"]}

    def views(self, outputs: dict[str, Outputs]) -> list[dict[str, Outputs]]:
        return member_views(outputs)


@register_method("ensemble")
class DeepEnsemble(Ensemble):
    @classmethod
    def settle(cls, cfg: ExperimentConfig) -> dict:
        check_size(cfg)
        return {}

    def member_configs(self) -> list[ExperimentConfig]:
        base = child_config(self.cfg, "classifier")
        return [base.replace(seed=seed) for seed in member_seeds(self.cfg)]

    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        size = self.cfg.ensemble_size
        return EnsembleNet([create_model(self.cfg.arch, num_classes, in_channels) for _ in range(size)])

    def combine(self, members: list[OpenSetNet]) -> OpenSetNet:
        return EnsembleNet(members)


# --- scorers ------------------------------------------------------------------------------------------------

def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)


def ens_msp(member_logits: np.ndarray) -> np.ndarray:
    return 1.0 - softmax(member_logits, axis=-1).mean(axis=1).max(axis=-1)


def ens_entropy(member_logits: np.ndarray) -> np.ndarray:
    return _entropy(softmax(member_logits, axis=-1).mean(axis=1))


def mutual_info(member_logits: np.ndarray) -> np.ndarray:
    p = softmax(member_logits, axis=-1)
    return _entropy(p.mean(axis=1)) - _entropy(p).mean(axis=1)


def ens_max_logit(member_logits: np.ndarray) -> np.ndarray:
    return -member_logits.mean(axis=1).max(axis=-1)


def ens_energy(member_logits: np.ndarray) -> np.ndarray:
    return -logsumexp(member_logits, axis=-1).mean(axis=1)


def disagreement(member_logits: np.ndarray) -> np.ndarray:
    ensemble = softmax(member_logits, axis=-1).mean(axis=1).argmax(axis=-1)
    return (member_logits.argmax(axis=-1) != ensemble[:, None]).mean(axis=1)


def _of_members(fn: Callable[[np.ndarray], np.ndarray]) -> ScorerFactory:
    return lambda cfg: FunctionScorer(lambda outputs: fn(outputs.member_logits), requires=("member_logits",))


for _fn in (ens_msp, ens_entropy, mutual_info, ens_max_logit, ens_energy, disagreement):
    register_scorer(_fn.__name__, "method")(_of_members(_fn))
