"""`rotation`: the classifier plus a 4-way rotation head on z (Hendrycks et al. 2019, "Using self-supervised
learning can improve model robustness and uncertainty").

Every batch is trained on the four rotations (0, 90, 180, 270 degrees) of each image: loss CE(class head
on the upright image) + `aux_weight` x mean CE(rotation head over the four rotations); see `auxiliary.py`.
Scores, higher = more anomalous:

- `rotation`: the paper's score negated, -(KL(U || p(y|x)) + (1/4) sum_k log p(k | rot_k(x))): a
  confident class prediction and recognisable rotations mean a nominal image;
- `rotation_only`: the rotation term alone, -(1/4) sum_k log p(k | rot_k(x)).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import log_softmax

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.methods.auxiliary import Transform, TransformTask, wrong_transform
from anomaly_repr.methods.base import register_method
from anomaly_repr.scoring.scorers import FunctionScorer, register_scorer


def rotate(k: int) -> Transform:
    """Rotation by k x 90 degrees, counter-clockwise."""
    return lambda x: torch.rot90(x, k, dims=(2, 3))


@register_method("rotation")
class Rotation(TransformTask):
    task = "rotation"
    extra_outputs = frozenset({"rotation_logp"})
    tune_scorer = "rotation"

    def transforms(self, channels: int, size: int) -> list[Transform]:
        return [rotate(k) for k in range(4)]

    @classmethod
    def transform_count(cls, cfg: ExperimentConfig) -> int:
        return 4


def kl_from_uniform(logits: np.ndarray) -> np.ndarray:
    """KL(U || softmax(logits)) = -log K - (1/K) sum_y log p(y|x): zero for a flat prediction."""
    return -np.log(logits.shape[1]) - log_softmax(logits, axis=1).mean(axis=1)


def rotation_score(logits: np.ndarray, rotation_logp: np.ndarray) -> np.ndarray:
    return -(kl_from_uniform(logits) + rotation_logp.mean(axis=1))


register_scorer("rotation", "method")(lambda cfg: FunctionScorer(lambda o: rotation_score(o.logits, o.rotation_logp),
                                                       ("logits", "rotation_logp")))
register_scorer("rotation_only", "method")(lambda cfg: FunctionScorer(lambda o: wrong_transform(o.rotation_logp),
                                                            ("rotation_logp",)))
