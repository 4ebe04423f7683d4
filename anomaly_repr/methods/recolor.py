"""`recolor`: the classifier plus a 6-way head that tells which permutation of the RGB channels was applied.

One of the seed talk's self-supervised tasks. Every batch is trained on all six channel permutations of
each image (identity first; see `auxiliary.py`); the channels it permutes are already standardised by the
training statistics. Score `recolor` (higher = more anomalous): the negative mean log-probability of the
right permutation over the six. Data with other than three channels is refused.
"""

from __future__ import annotations

from itertools import permutations

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import DataError
from anomaly_repr.methods.auxiliary import Transform, TransformTask, wrong_transform
from anomaly_repr.methods.base import register_method
from anomaly_repr.scoring.scorers import FunctionScorer, register_scorer

PERMUTATIONS = list(permutations(range(3)))  # (0, 1, 2) first: the identity


def permute(order: tuple[int, ...]) -> Transform:
    return lambda x: x[:, list(order)]


@register_method("recolor")
class Recolor(TransformTask):
    task = "recolor"
    extra_outputs = frozenset({"recolor_logp"})
    tune_scorer = "recolor"

    def check_data(self, shape: tuple[int, int, int]) -> None:
        if shape[0] != 3:
            raise DataError(f"method=recolor permutes the RGB channels, but the {self.cfg.dataset} images have "
                            f"{shape[0]} channel(s); choose another method")

    def transforms(self, channels: int, size: int) -> list[Transform]:
        return [permute(order) for order in PERMUTATIONS]

    @classmethod
    def transform_count(cls, cfg: ExperimentConfig) -> int:
        return len(PERMUTATIONS)


register_scorer("recolor", "method")(lambda cfg: FunctionScorer(lambda o: wrong_transform(o.recolor_logp),
                                                            ("recolor_logp",)))
