"""Classifier + a self-supervised auxiliary head + transform batches: what `rotation`, `geom` and `recolor` share.

A task is a list of image transforms whose first is the identity. The network is the classifier with a
second linear head on z that predicts which transform was applied (`AuxNet`; its extra output `aux`).
Every training batch is expanded into views: each image upright, plus `aux_samples` other transforms
drawn per image (0 = all of them). The loss is

    CE(class head on the upright images) + aux_weight * mean CE(transform head on every view),

and model selection reads the class head's validation accuracy, as for the classifier. At test time the
method's extra pass applies every transform to every image, batched so that one forward holds about
`VIEWS_PER_FORWARD` views, and keeps `<task>_logp` (N, T): log p(t | transform_t(x)) for each t.
Transforms act on normalised images; rotations, flips and reflect-padded shifts commute with the
per-channel normalisation, and a channel permutation permutes channels already standardised (so the
head cannot read a permutation off the channel means alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods.base import Autocast, Calibration, Method
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet, build_backbone
from anomaly_repr.scoring.outputs import batches

if TYPE_CHECKING:
    import optuna

    from anomaly_repr.config import ExperimentConfig
    from anomaly_repr.methods.base import SearchBounds

Transform = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) -> (N, C, H, W)
VIEWS_PER_FORWARD = 1024  # views in one evaluation forward: images per batch = this // transforms
AUX_WEIGHT_RANGE = (0.1, 10.0)  # `tune --target <task>` searches aux_weight log-uniformly in this range


class AuxNet(OpenSetNet):
    """The classifier plus a linear transform head on z; its logits stay the class logits."""

    def __init__(self, backbone: nn.Module, z_dim: int, head: nn.Module, aux: nn.Module):
        super().__init__(backbone, z_dim, head)
        self.aux = aux

    def forward_head(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.head(z), z=z, extras={"aux": self.aux(z)})

    def served_outputs(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        return {"logits": out.logits, "aux_logits": out.extras["aux"]}


def views(x: torch.Tensor, transforms: Sequence[Transform], draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `x` upright (target 0), then image i under transform draws[i, j] for each j.
    Returns (views, transform targets); the first len(x) views are `x` itself."""
    parts, targets = [x], [torch.zeros(len(x), dtype=torch.long, device=x.device)]
    for t in range(1, len(transforms)):
        rows = (draws == t).nonzero()[:, 0]  # an image drawn twice for t appears twice
        if len(rows):
            parts.append(transforms[t](x[rows]))
            targets.append(torch.full((len(rows),), t, dtype=torch.long, device=x.device))
    return torch.cat(parts), torch.cat(targets)


def draw_transforms(n: int, count: int, samples: int) -> torch.Tensor:
    """(n, samples) transform indices in 1..count-1 per image, drawn on the CPU from torch's global random
    state (which the training checkpoint saves, so a resumed run draws the same); samples=0: all of them."""
    if samples == 0:
        return torch.arange(1, count).expand(n, count - 1)
    return torch.randint(1, count, (n, samples))


class SearchesAuxWeight(Method):
    """A method whose searchable setting is `aux_weight`, the weight of its auxiliary loss."""

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        if cfg.aux_weight < 0 or cfg.aux_samples < 0:
            raise ConfigError(f"aux_weight and aux_samples must not be negative, got {cfg.aux_weight} and "
                              f"{cfg.aux_samples}")

    def suggest(self, trial: optuna.Trial, tcfg: SearchBounds) -> dict[str, Any]:
        return {"aux_weight": trial.suggest_float("aux_weight", *AUX_WEIGHT_RANGE, log=True)}

    def talk_values(self, tcfg: SearchBounds) -> list[dict[str, Any]]:
        return [{"aux_weight": 1.0}]  # the papers' weight


class TransformTask(SearchesAuxWeight):
    """A method whose auxiliary head predicts which of `transforms()` was applied (identity first)."""

    task: ClassVar[str] = ""  # prefix of its extra output `<task>_logp`

    def transforms(self, channels: int, size: int) -> list[Transform]:
        raise NotImplementedError

    @classmethod
    def transform_count(cls, cfg: ExperimentConfig) -> int:
        raise NotImplementedError

    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        self.check_data((in_channels, image_size, image_size))
        backbone, z_dim = build_backbone(self.cfg.arch, in_channels)
        return AuxNet(backbone, z_dim, nn.Linear(z_dim, num_classes), nn.Linear(z_dim, self.transform_count(self.cfg)))

    def train_step(self, model: OpenSetNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   autocast: Autocast) -> torch.Tensor:
        transforms = self.transforms(x.shape[1], x.shape[-1])
        draws = draw_transforms(len(x), len(transforms), self.cfg.aux_samples).to(x.device)
        batch, targets = views(x, transforms, draws)
        with autocast():
            out = model(batch.contiguous(memory_format=torch.channels_last))
            loss = (F.cross_entropy(out.logits[:len(x)], y, label_smoothing=self.cfg.label_smoothing)
                    + self.cfg.aux_weight * F.cross_entropy(out.extras["aux"], targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def transform_logp(self, model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer,
                       device: torch.device) -> np.ndarray:
        """(N, T, T): log-softmax of the transform head on every transform of every image."""
        model.eval()
        transforms = self.transforms(images.shape[1], images.shape[-1])
        per_batch = max(1, VIEWS_PER_FORWARD // len(transforms))
        out = []
        for x in batches(images, normalizer, device, per_batch):
            stacked = torch.cat([t(x) for t in transforms])  # transform-major: rows t*B .. (t+1)*B - 1
            logp = F.log_softmax(model(stacked.contiguous(memory_format=torch.channels_last)).extras["aux"], dim=1)
            out.append(logp.view(len(transforms), len(x), -1).transpose(0, 1).cpu())
        return torch.cat(out).numpy()

    def extra_passes(self, model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     calibration: Calibration) -> dict[str, np.ndarray]:
        """`<task>_logp` (N, T): log p(t | transform_t(x)), the log-probability of the right transform."""
        logp = self.transform_logp(model, images, normalizer, device)
        return {f"{self.task}_logp": np.diagonal(logp, axis1=1, axis2=2).copy()}


def wrong_transform(logp: np.ndarray) -> np.ndarray:
    """Negative mean log-probability of the right transform over the transforms: higher = more anomalous."""
    return -logp.mean(axis=1)
