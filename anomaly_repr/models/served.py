"""The served form of a model: what the MLflow LoggedModel holds and `mlflow models serve` runs."""

from __future__ import annotations

import torch

from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.models.backbones import OpenSetNet


class PixelsToLogits(torch.nn.Module):
    """Served form of a model: uint8-range pixels (N, C, H, W) in, one tensor out (as pyfunc wants): the
    class logits, then the extra outputs a method's network serves (an auxiliary head's logits), side by
    side; the LoggedModel's metadata `outputs` names their columns."""

    def __init__(self, model: OpenSetNet, normalizer: Normalizer):
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", normalizer.mean.view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", normalizer.std.view(1, -1, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model((pixels - self.mean) / self.std)
        return torch.cat(list(self.model.served_outputs(out).values()), dim=1)

    def columns(self, pixels: torch.Tensor) -> dict[str, list[int]]:
        """Each named output's [first, last + 1) columns in the served tensor."""
        out = self.model((pixels - self.mean) / self.std)
        bounds, start = {}, 0
        for name, value in self.model.served_outputs(out).items():
            bounds[name], start = [start, start + value.shape[1]], start + value.shape[1]
        return bounds
