"""`sobel`: the classifier plus a decoder from z that regresses the Sobel edge-magnitude map of its input.

One of the seed talk's self-supervised tasks. The decoder is the hybrid's (`hybrid.Decoder`) with one
output channel; the target is the edge magnitude sqrt(Gx^2 + Gy^2) of the channel mean of the
(augmented, normalised) input the network saw, with replicate padding and the Sobel kernels divided by 8
(so a step of height 1 between two pixels reads 0.5 at each of them). Loss CE + `aux_weight` x MSE.
Score `sobel_error` (higher = more anomalous): the per-image mean squared error of the edge map.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_repr.methods.auxiliary import SearchesAuxWeight
from anomaly_repr.methods.base import register_method
from anomaly_repr.methods.hybrid import Decoder, HybridNet
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet, build_backbone
from anomaly_repr.scoring.scorers import FunctionScorer, register_scorer

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8  # /8: a derivative per pixel


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): the Sobel gradient magnitude of the channel mean."""
    gray = F.pad(x.float().mean(dim=1, keepdim=True), (1, 1, 1, 1), mode="replicate")
    kernels = torch.stack([SOBEL_X, SOBEL_X.T]).unsqueeze(1).to(x.device)  # (2, 1, 3, 3): Gx, Gy
    g = F.conv2d(gray, kernels)
    return g.pow(2).sum(dim=1, keepdim=True).sqrt()


@register_method("sobel")
class Sobel(SearchesAuxWeight):
    extra_outputs = frozenset({"sobel_error"})
    tune_scorer = "sobel_error"

    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        backbone, z_dim = build_backbone(self.cfg.arch, in_channels)
        return HybridNet(backbone, z_dim, nn.Linear(z_dim, num_classes), Decoder(z_dim, 1, image_size))

    def edge_error(self, out: ModelOutput, x: torch.Tensor) -> torch.Tensor:
        """Per-image mean squared error of the predicted edge map."""
        return (out.extras["recon"].float() - sobel_edges(x)).pow(2).mean(dim=(1, 2, 3))

    def loss(self, out: ModelOutput, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().loss(out, x, y) + self.cfg.aux_weight * self.edge_error(out, x).mean()

    def batch_extras(self, out: ModelOutput, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return {"sobel_error": self.edge_error(out, x)}


register_scorer("sobel_error", "method")(lambda cfg: FunctionScorer(lambda o: o.sobel_error, ("sobel_error",)))
