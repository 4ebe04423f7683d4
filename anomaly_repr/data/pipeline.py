"""Input pipeline: uint8 images on the device, normalised and augmented a whole batch at a time.

Like cifar10-airbench, the data stay one uint8 tensor on the training device; a batch is sliced, put
through its augmentation policy (`augment.py`: each image its own draw, still uint8), converted,
normalised, randomly cropped (reflect padding) and flipped, then optionally erased and mixed (mixup,
cutmix: the labels become class probabilities), all with tensor ops. There is no per-image PIL work and
no DataLoader worker process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anomaly_repr.data.augment import Policy
from anomaly_repr.data.mixing import Mixing, erase, erase_boxes


@dataclass(frozen=True)
class Normalizer:
    mean: torch.Tensor  # per channel, in [0, 1] pixel units, shape (C,)
    std: torch.Tensor

    @classmethod
    def fit(cls, images: torch.Tensor) -> Normalizer:
        """Channel statistics of uint8 images (N, C, H, W): computed on the training split only."""
        x = images.to(torch.float64) / 255.0
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return cls(mean.float(), std.float())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float32 on the images' device."""
        mean = self.mean.to(images.device).view(1, -1, 1, 1)
        std = self.std.to(images.device).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Crop every image of a batch at its own random offset from a reflect-padded copy."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indexing puts C last


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class DeviceBatches:
    """Shuffled, augmented training batches from uint8 images already on the device: the policy on the
    uint8 images, then normalise, crop and flip, then random erasing with probability `erasing` and the
    batch mixing (labels stay class indices unless mixing is on)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer, batch_size: int,
                 hflip: bool, generator: torch.Generator, policy: Policy | None = None, erasing: float = 0.0,
                 mixing: Mixing | None = None):
        self.images, self.labels = images, labels
        self.normalizer, self.batch_size = normalizer, batch_size
        self.hflip, self.generator = hflip, generator
        self.pad = max(1, images.shape[-1] // 8)  # 4 pixels for 32x32 images, 1 for 8x8
        self.policy, self.erasing, self.mixing = policy, erasing, mixing

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.images), device=self.images.device, generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            images, y = self.images[index], self.labels[index]
            if self.policy is not None:
                images = self.policy(images, self.generator)
            x = random_crop(self.normalizer(images), self.pad, self.generator)
            if self.hflip:
                x = random_hflip(x, self.generator)
            if self.erasing:
                x = erase(x, erase_boxes(len(x), x.shape[-2], x.shape[-1], self.erasing, self.generator, x.device))
            if self.mixing:
                x, y = self.mixing(x, y, self.generator)
            yield x, y


EVAL_BATCH = {"cpu": 128}  # images per evaluation forward by device type; other devices EVAL_BATCH_DEFAULT
EVAL_BATCH_DEFAULT = 512  # (on a 2-core CPU, a ResNet-20 pass over 7,200 images took 3.8 s at 128, 7.4 s at 1,024)


def eval_batch_size(device: torch.device) -> int:
    """Images per evaluation forward: small on a CPU, where a batch's activations should stay in cache."""
    return EVAL_BATCH.get(device.type, EVAL_BATCH_DEFAULT)


def eval_batches(images: torch.Tensor, normalizer: Normalizer, batch_size: int | None,
                 device: torch.device) -> Iterator[torch.Tensor]:
    """Normalised, unaugmented batches in order, moved to `device` one batch at a time (`batch_size` None:
    the device's own, `eval_batch_size`)."""
    batch_size = batch_size or eval_batch_size(device)
    for start in range(0, len(images), batch_size):
        yield normalizer(images[start:start + batch_size].to(device, non_blocking=True))
