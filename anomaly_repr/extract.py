"""Extract once: one forward pass per model and split gives every output that any scorer reads."""

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

    @property
    def is_anomaly(self) -> np.ndarray:
        return self.labels == UNKNOWN

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> Outputs:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls)})


@torch.no_grad()
def extract(model: OpenSetNet, images: torch.Tensor, labels: np.ndarray, normalizer: Normalizer,
            device: torch.device, batch_size: int = 512) -> Outputs:
    """Run `model` once over uint8 `images`; `labels` are open-set labels (-1 = anomaly)."""
    model.eval()
    zs, logits = [], []
    for x in eval_batches(images, normalizer, batch_size, device):
        out = model(x.contiguous(memory_format=torch.channels_last))
        zs.append(out.z.float().cpu())
        logits.append(out.logits.float().cpu())
    return Outputs(z=torch.cat(zs).numpy(), logits=torch.cat(logits).numpy(), labels=np.asarray(labels))
