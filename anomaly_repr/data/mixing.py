"""After the augmentation policy, on normalised batches: torchvision's random erasing, one draw per image, and
mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019) of a batch's images and soft labels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ERASE_SCALE, ERASE_RATIO, ERASE_TRIES = (0.02, 0.33), (0.3, 3.3), 10  # torchvision's RandomErasing defaults


def erase_boxes(n: int, height: int, width: int, p: float, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """(n, 4) boxes (top, left, height, width) of torchvision's RandomErasing, one draw per image: with
    probability p, the first of 10 tries whose box fits (area a uniform share of the image in [0.02, 0.33],
    log aspect ratio uniform in [log 0.3, log 3.3]); height 0 = nothing erased."""
    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, device=device, generator=generator, dtype=torch.float64)

    area = height * width * uniform(*ERASE_SCALE, n, ERASE_TRIES)
    aspect = torch.exp(uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), n, ERASE_TRIES))
    h = torch.sqrt(area * aspect).round().long()
    w = torch.sqrt(area / aspect).round().long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    erase = fits.any(dim=1) & (torch.rand(n, device=device, generator=generator) < p)
    top = (torch.rand(n, device=device, generator=generator, dtype=torch.float64) * (height - h + 1)).long()
    left = (torch.rand(n, device=device, generator=generator, dtype=torch.float64) * (width - w + 1)).long()
    return torch.stack([top, left, torch.where(erase, h, 0), torch.where(erase, w, 0)], dim=1)


def erase(x: torch.Tensor, boxes: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Each image with its box set to `value` (0 on normalised images: the training mean)."""
    rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
    top, left, h, w = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return x.masked_fill(inside.unsqueeze(1), value)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image and its one-hot label blended with the previous one's (the batch rolled by one, like
    torchvision.transforms.v2.MixUp): lam * own + (1 - lam) * other."""
    return lam * x + (1.0 - lam) * x.roll(1, 0), lam * y + (1.0 - lam) * y.roll(1, 0)


def cutmix(x: torch.Tensor, y: torch.Tensor, lam: float, center: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision.transforms.v2.CutMix for a drawn lam and box centre (row, column): a box of side
    sqrt(1 - lam) of the image's, clipped at the border, pasted from the previous image; the labels are
    mixed by the area actually pasted."""
    h, w = x.shape[-2:]
    r = 0.5 * math.sqrt(1.0 - lam)
    half_h, half_w = int(r * h), int(r * w)
    y1, y2 = max(center[0] - half_h, 0), min(center[0] + half_h, h)
    x1, x2 = max(center[1] - half_w, 0), min(center[1] + half_w, w)
    out = x.clone()
    out[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
    kept = 1.0 - (x2 - x1) * (y2 - y1) / (h * w)
    return out, kept * y + (1.0 - kept) * y.roll(1, 0)


class Mixing:
    """Mixup and/or CutMix of a normalised batch with one-hot labels: per batch, one of the enabled two
    (each with equal chance when both are), lam ~ Beta(alpha, alpha)."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int):
        self.alphas = [(mix, a) for mix, a in ((mixup, mixup_alpha), (cutmix, cutmix_alpha)) if a > 0]
        self.num_classes = num_classes

    def __bool__(self) -> bool:
        return bool(self.alphas)

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        soft = F.one_hot(y, self.num_classes).float()
        mix, alpha = self.alphas[int(torch.randint(len(self.alphas), (1,), generator=generator, device=x.device))]
        # torch's Beta sampler takes no generator: it draws from torch's global random state, which the
        # training checkpoint saves with the generator's
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        if mix is mixup:
            return mixup(x, soft, lam)
        h, w = x.shape[-2:]
        center = (int(torch.randint(h, (1,), generator=generator, device=x.device)),
                  int(torch.randint(w, (1,), generator=generator, device=x.device)))
        return cutmix(x, soft, lam, center)
