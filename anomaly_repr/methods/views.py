"""SimCLR's view augmentation (Chen et al. 2020) for contrastive methods, batched on the device, on images
in [0, 1]: random resized crop and flip, colour jitter, greyscale; each image its own draw. The colour
distortions need RGB images. Also CSI's rotations and its views of normalised images."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from anomaly_repr.data.pipeline import Normalizer

ROTATIONS = 4  # CSI's shifted instances: turns by 0, 90, 180 and 270 degrees
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # random resized crop
JITTER_P, GREY_P = 0.8, 0.2  # SimCLR's: colour jitter with probability 0.8, then greyscale with probability 0.2


def _uniform(low: float, high: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device, generator=generator)


def resized_crop_flip(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Each image: a random crop of 8-100 % of its area and aspect ratio 3/4-4/3, resized back to the
    image's size (bilinear), then with `flip` flipped with probability 1/2 (the draw is made either way, so
    that the crops do not depend on `flip`)."""
    n, device = len(x), x.device
    area = _uniform(*CROP_SCALE, n, generator, device)
    ratio = torch.exp(_uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), n, generator, device))
    width, height = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - width) * (2 * torch.rand(n, device=device, generator=generator) - 1)  # the box stays inside
    cy = (1 - height) * (2 * torch.rand(n, device=device, generator=generator) - 1)
    mirror = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width * (mirror if flip else 1.0), cx, height, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """With probability 0.8 an RGB image's brightness, contrast and saturation are scaled by factors drawn in
    [1 - strength, 1 + strength] and its hue turned by up to strength / 4 of a circle, in that order; then
    greyscale with probability 0.2. `strength` is 0.8 times SimCLR's strength s (whose CIFAR setting, s = 0.5,
    is 0.4, 0.4, 0.4 and 0.1: strength 0.4). The hue turn is a rotation of the chroma plane in YIQ space, the
    batched stand-in for torchvision's HSV shift."""
    n, device = len(x), x.device
    jitter = (torch.rand(n, device=device, generator=generator) < JITTER_P).view(-1, 1, 1, 1)
    b, c, s, h = strength, strength, strength, strength / 4

    def factor(spread: float) -> torch.Tensor:
        return _uniform(1 - spread, 1 + spread, n, generator, device).view(-1, 1, 1, 1)

    out = x * factor(b)
    grey = _grey(out)
    out = grey.mean(dim=(-2, -1), keepdim=True) + factor(c) * (out - grey.mean(dim=(-2, -1), keepdim=True))
    grey = _grey(out)
    out = grey + factor(s) * (out - grey)
    out = _turn_hue(out, _uniform(-h, h, n, generator, device) * 2 * math.pi)
    out = torch.where(jitter, out.clamp(0, 1), x)
    to_grey = (torch.rand(n, device=device, generator=generator) < GREY_P).view(-1, 1, 1, 1)
    return torch.where(to_grey, _grey(out).expand_as(out), out)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _turn_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    to_yiq, from_yiq = YIQ.to(x.device), torch.linalg.inv(YIQ).to(x.device)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,njhw->nihw", from_yiq, yiq)


def simclr_view(x: torch.Tensor, generator: torch.Generator, jitter: float, flip: bool = True) -> torch.Tensor:
    """One SimCLR view of every image of a batch in [0, 1]: resized crop and (with `flip`) flip, then, with
    `jitter` > 0, colour jitter of that strength and greyscale."""
    view = resized_crop_flip(x, generator, flip)
    return colour_jitter(view, generator, jitter) if jitter > 0 else view


def rotations(x: torch.Tensor) -> torch.Tensor:
    """(4N, ...): the batch turned by 0, 90, 180 and 270 degrees, rotation-major."""
    return torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(ROTATIONS)])


def views(x: torch.Tensor, normalizer: Normalizer, count: int, generator: torch.Generator,
          jitter: float) -> Iterable[torch.Tensor]:
    """`count` SimCLR views of normalised images, normalised again (count 0: the images themselves)."""
    if count == 0:
        yield x
        return
    pixels, mean, std = _pixels(x, normalizer)
    for _ in range(count):
        yield (simclr_view(pixels, generator, jitter) - mean) / std


def rotated_views(x: torch.Tensor, normalizer: Normalizer, count: int, generator: torch.Generator,
                  jitter: float) -> Iterable[torch.Tensor]:
    """`count` views of the four rotations of normalised images (each (4N, ...), rotation-major): every image
    flipped or not (probability 1/2), then turned, then each turned image its own SimCLR crop and colours."""
    pixels, mean, std = _pixels(x, normalizer)
    for _ in range(count):
        flipped = torch.where((torch.rand(len(x), device=x.device, generator=generator) < 0.5).view(-1, 1, 1, 1),
                              pixels.flip(-1), pixels)
        yield (simclr_view(rotations(flipped), generator, jitter, flip=False) - mean) / std


def _pixels(x: torch.Tensor, normalizer: Normalizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images back in [0, 1], with the per-channel mean and std that normalise them again."""
    mean, std = normalizer.mean.to(x.device).view(1, -1, 1, 1), normalizer.std.to(x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1), mean, std
