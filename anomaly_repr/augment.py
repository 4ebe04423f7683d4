"""Augmentation policies for whole batches on the device: TrivialAugment, RandAugment, AutoAugment.

torchvision's policy transforms draw one operation and magnitude per call, so a batch through them gets
one draw, or costs a Python call per image. Here every image of a uint8 batch (N, C, H, W) draws its own
operation, magnitude bin and sign at once; the batch is grouped by operation and each operation runs once
on its group, as tensor ops on the batch's device. The op set, the magnitude ranges and the arithmetic
(uint8 in and out, the same rounding and truncation) are torchvision 0.29's
(`torchvision/transforms/autoaugment.py`), so each op gives torchvision's own single-image result (the
tests compare them):

- `trivialaugment`: TrivialAugmentWide (Müller & Hutter 2021): one op per image of 14 (Identity, ShearX/Y
  up to 0.99, TranslateX/Y up to 32 px, Rotate up to 135°, Brightness/Color/Contrast/Sharpness up to
  ±0.99, Posterize 8..2 bits, Solarize 255..0, AutoContrast, Equalize), a magnitude bin of 31 drawn
  uniformly, a random sign for the signed ops;
- `randaugment`: RandAugment (Cubuk et al. 2020) with torchvision's defaults: 2 ops per image in turn, of
  the same 14 with the narrower ranges (shear 0.3, translate 150/331 of the side, rotate 30°, colour
  0.9, posterize 8..4 bits), magnitude bin 9 of 31;
- `autoaugment`: AutoAugment (Cubuk et al. 2019), torchvision's CIFAR-10 policy: one of 25 sub-policies
  per image, each two (op, probability, magnitude bin of 10) steps, Invert among the ops.

Geometric ops use nearest interpolation and fill 0, as torchvision's defaults do. `crop_flip` adds no
policy: the random crop and flip of `pipeline.py` run for every policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from anomaly_repr.config import AUGMENTS

OpFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 images (n, C, H, W), magnitudes (n,)) -> uint8


# --- the operations: uint8 batches, one magnitude per image (float64, signed) ---

def _inverse_affine(angle: torch.Tensor, translate: tuple[torch.Tensor, torch.Tensor],
                    shear: tuple[torch.Tensor, torch.Tensor], center: tuple[float, float]) -> torch.Tensor:
    """(n, 2, 3) inverse affine matrices of torchvision's `_get_inverse_affine_matrix` (scale 1), in pixel
    coordinates centred on the image, for per-image angles, translations and shears in degrees (float64)."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear[0]), torch.deg2rad(shear[1])
    cx, cy = center
    tx, ty = translate
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def _grid_transform(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample each image at its inverse affine map (torchvision's `_gen_affine_grid`: pixel centres,
    normalised after the map), nearest neighbour, zeros outside."""
    n, _, h, w = x.shape
    theta = theta.to(device=x.device, dtype=torch.float32)
    base = torch.empty(1, h, w, 3, device=x.device)
    base[..., 0] = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=x.device)
    base[..., 1] = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=x.device).unsqueeze(-1)
    base[..., 2] = 1.0
    rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round().to(torch.uint8)


def _zeros(m: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(m)


def shear_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # torchvision shears by atan(m) degrees about the top-left corner (centre [0, 0] in its call)
    degrees = torch.rad2deg(torch.atan(m))
    center = (-x.shape[-1] * 0.5, -x.shape[-2] * 0.5)
    return _grid_transform(x, _inverse_affine(_zeros(m), (_zeros(m), _zeros(m)), (degrees, _zeros(m)), center))


def shear_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    degrees = torch.rad2deg(torch.atan(m))
    center = (-x.shape[-1] * 0.5, -x.shape[-2] * 0.5)
    return _grid_transform(x, _inverse_affine(_zeros(m), (_zeros(m), _zeros(m)), (_zeros(m), degrees), center))


def translate_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    pixels = torch.trunc(m)  # torchvision passes int(magnitude)
    return _grid_transform(x, _inverse_affine(_zeros(m), (pixels, _zeros(m)), (_zeros(m), _zeros(m)), (0.0, 0.0)))


def translate_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    pixels = torch.trunc(m)
    return _grid_transform(x, _inverse_affine(_zeros(m), (_zeros(m), pixels), (_zeros(m), _zeros(m)), (0.0, 0.0)))


def rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # F.rotate turns counter-clockwise by m degrees: its matrix is affine's with angle -m
    return _grid_transform(x, _inverse_affine(-m, (_zeros(m), _zeros(m)), (_zeros(m), _zeros(m)), (0.0, 0.0)))


def _per_image(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return m.to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """ratio * x + (1 - ratio) * other, clamped and truncated to uint8 (torchvision's `_blend`); the
    ratio is float64 per image, cast to float32 like a Python float multiplying a tensor."""
    return (_per_image(ratio, x) * x.float() + _per_image(1.0 - ratio, x) * other).clamp(0, 255).to(torch.uint8)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) uint8 luma, truncated as torchvision's `rgb_to_grayscale` does."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x, dtype=torch.float32), 1.0 + m)


def color(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # saturation of a grey image: unchanged (torchvision follows PIL)
        return x
    return _blend(x, _grayscale(x).float(), 1.0 + m)


def contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).float().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, 1.0 + m)


def sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    blurred = x.clone()  # the border keeps its pixels; the inside is the smoothed image, rounded
    blurred[..., 1:-1, 1:-1] = F.conv2d(x.float(), kernel, groups=x.shape[1]).round().to(torch.uint8)
    return _blend(x, blurred.float(), 1.0 + m)


def posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    bits = m.to(torch.int64)
    masks = (256 - 2 ** (8 - bits)).to(device=x.device, dtype=torch.uint8)  # keep the top `bits` bits
    return x & masks.view(-1, 1, 1, 1)


def solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= _per_image(m, x), 255 - x, x)


def autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(-2, -1), keepdim=True).float()
    high = x.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255.0 / (high - low)
    flat = ~torch.isfinite(scale)  # a constant channel stays as it is
    low, scale = low.masked_fill(flat, 0.0), scale.masked_fill(flat, 1.0)
    return ((x - low) * scale).clamp(0, 255).to(torch.uint8)


def equalize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of every channel of every image at once (torchvision's `_scale_channel`:
    step = (pixels - count of the brightest level) // 255; lut = (cumsum + step // 2) // step, shifted)."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    brightest = 255 - (hist.flip(1) > 0).to(torch.int64).argmax(dim=1)  # highest level present
    step = (h * w - hist.gather(1, brightest[:, None]).squeeze(1)) // 255
    safe = step.clamp_min(1)[:, None]
    lut = (hist.cumsum(1) + safe // 2) // safe
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = lut.gather(1, flat)
    out = torch.where(step[:, None] == 0, flat, out)  # a channel of one or two levels stays as it is
    return out.to(torch.uint8).view(n, c, h, w)


def invert(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return 255 - x


def identity(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x


OPS: dict[str, OpFn] = {
    "Identity": identity, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Rotate": rotate, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Sharpness": sharpness, "Posterize": posterize, "Solarize": solarize, "AutoContrast": autocontrast,
    "Equalize": equalize, "Invert": invert,
}

# --- the policies' spaces: op -> (magnitude per bin, or None; signed?) ---

Space = dict[str, tuple[torch.Tensor | None, bool]]


def _posterize_bits(bins: int, span: int) -> torch.Tensor:
    return 8 - (torch.arange(bins) / ((bins - 1) / span)).round().int()


def trivialaugment_space(bins: int = 31) -> Space:
    return {
        "Identity": (None, False),
        "ShearX": (torch.linspace(0.0, 0.99, bins), True), "ShearY": (torch.linspace(0.0, 0.99, bins), True),
        "TranslateX": (torch.linspace(0.0, 32.0, bins), True), "TranslateY": (torch.linspace(0.0, 32.0, bins), True),
        "Rotate": (torch.linspace(0.0, 135.0, bins), True),
        **{op: (torch.linspace(0.0, 0.99, bins), True) for op in ("Brightness", "Color", "Contrast", "Sharpness")},
        "Posterize": (_posterize_bits(bins, 6), False), "Solarize": (torch.linspace(255.0, 0.0, bins), False),
        "AutoContrast": (None, False), "Equalize": (None, False),
    }


def randaugment_space(bins: int, height: int, width: int, identity_op: bool = True) -> Space:
    """RandAugment's space; AutoAugment's is the same without Identity and with Invert."""
    space: Space = {"Identity": (None, False)} if identity_op else {}
    space |= {
        "ShearX": (torch.linspace(0.0, 0.3, bins), True), "ShearY": (torch.linspace(0.0, 0.3, bins), True),
        "TranslateX": (torch.linspace(0.0, 150.0 / 331.0 * width, bins), True),
        "TranslateY": (torch.linspace(0.0, 150.0 / 331.0 * height, bins), True),
        "Rotate": (torch.linspace(0.0, 30.0, bins), True),
        **{op: (torch.linspace(0.0, 0.9, bins), True) for op in ("Brightness", "Color", "Contrast", "Sharpness")},
        "Posterize": (_posterize_bits(bins, 4), False), "Solarize": (torch.linspace(255.0, 0.0, bins), False),
        "AutoContrast": (None, False), "Equalize": (None, False),
    }
    if not identity_op:
        space["Invert"] = (None, False)
    return space


# AutoAugment's CIFAR-10 policy (torchvision's `AutoAugmentPolicy.CIFAR10`): (op, probability, magnitude bin)
AUTOAUGMENT_CIFAR10: list[tuple[tuple[str, float, int | None], tuple[str, float, int | None]]] = [
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
]
RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE, RANDAUGMENT_BINS = 2, 9, 31  # torchvision's defaults
AUTOAUGMENT_BINS = 10


def apply_ops(x: torch.Tensor, ops: list[str], chosen: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Image i under op ops[chosen[i]] with magnitude magnitudes[i] (chosen -1: untouched); one call per op."""
    out = x.clone()
    for k, name in enumerate(ops):
        rows = (chosen == k).nonzero().squeeze(1)
        if len(rows):
            out[rows] = OPS[name](x[rows], magnitudes[rows.cpu()])
    return out


class Policy:
    """A batch augmentation policy: `policy(images, generator)` -> images, uint8 (N, C, H, W) both."""

    def __init__(self, name: str, height: int, width: int):
        if name not in AUGMENTS:
            raise ValueError(f"unknown augmentation policy {name!r}; choose one of {', '.join(AUGMENTS)}")
        self.name = name
        if name == "trivialaugment":
            self.space = trivialaugment_space()
        elif name == "randaugment":
            self.space = randaugment_space(RANDAUGMENT_BINS, height, width)
        else:
            self.space = randaugment_space(AUTOAUGMENT_BINS, height, width, identity_op=False)
        self.ops = list(self.space)

    def _magnitudes(self, chosen: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Per image: its op's magnitude at its bin (0 for ops without one), negated where drawn so and signed."""
        out = torch.zeros(len(chosen), dtype=torch.float64)
        for k, name in enumerate(self.ops):
            table, signed = self.space[name]
            rows = chosen == k
            if table is not None and rows.any():
                values = table.double()[bins[rows]]
                out[rows] = torch.where(negative[rows], -values, values) if signed else values
        return out

    def plan(self, n: int, generator: torch.Generator, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The draws for a batch of n images, one (op index per image, -1 = none; magnitude per image) pair
        per op applied in turn: one for TrivialAugment, two for RandAugment and AutoAugment."""
        if self.name == "crop_flip":
            return []

        def draw(high: int) -> torch.Tensor:  # on the batch's device (its generator), then to the CPU
            return torch.randint(high, (n,), device=device, generator=generator).cpu()

        if self.name == "trivialaugment":
            chosen, bins, negative = draw(len(self.ops)), draw(31), draw(2).bool()
            return [(chosen, self._magnitudes(chosen, bins, negative))]
        rounds = []
        if self.name == "randaugment":
            for _ in range(RANDAUGMENT_OPS):
                chosen, negative = draw(len(self.ops)), draw(2).bool()
                bins = torch.full((n,), RANDAUGMENT_MAGNITUDE)
                rounds.append((chosen, self._magnitudes(chosen, bins, negative)))
            return rounds
        sub_policy = draw(len(AUTOAUGMENT_CIFAR10))
        for step in range(2):
            applied = torch.rand(n, device=device, generator=generator).cpu()
            negative = draw(2).bool()
            steps = [AUTOAUGMENT_CIFAR10[i][step] for i in sub_policy.tolist()]
            chosen = torch.tensor([self.ops.index(op) if applied[i] <= p else -1 for i, (op, p, _) in enumerate(steps)])
            bins = torch.tensor([b if b is not None else 0 for _, _, b in steps])
            rounds.append((chosen, self._magnitudes(chosen, bins, negative)))
        return rounds

    def apply(self, x: torch.Tensor, plan: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        for chosen, magnitudes in plan:
            x = apply_ops(x, self.ops, chosen.to(x.device), magnitudes)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.plan(len(x), generator, x.device))


# --- after the policy, on normalised batches: random erasing; mixup and cutmix of images and labels ---

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


# --- SimCLR's view augmentation (Chen et al. 2020), for contrastive methods: on images in [0, 1] ---

CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # random resized crop
JITTER, JITTER_P, GREY_P = (0.4, 0.4, 0.4, 0.1), 0.8, 0.2  # colour jitter (brightness, contrast, saturation, hue)


def _uniform(low: float, high: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device, generator=generator)


def resized_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image: a random crop of 8-100 % of its area and aspect ratio 3/4-4/3, resized back to the
    image's size (bilinear), then flipped with probability 1/2."""
    n, device = len(x), x.device
    area = _uniform(*CROP_SCALE, n, generator, device)
    ratio = torch.exp(_uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), n, generator, device))
    width, height = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - width) * (2 * torch.rand(n, device=device, generator=generator) - 1)  # the box stays inside
    cy = (1 - height) * (2 * torch.rand(n, device=device, generator=generator) - 1)
    flip = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width * flip, cx, height, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """With probability 0.8 an image's brightness, contrast and saturation are scaled by factors drawn in
    [0.6, 1.4] and its hue turned by up to 0.1 of a circle (a rotation of the chroma plane in YIQ space, the
    batched stand-in for torchvision's HSV shift), in that order; then greyscale with probability 0.2."""
    n, device = len(x), x.device
    jitter = (torch.rand(n, device=device, generator=generator) < JITTER_P).view(-1, 1, 1, 1)
    b, c, s, h = JITTER

    def factor(spread: float) -> torch.Tensor:
        return _uniform(1 - spread, 1 + spread, n, generator, device).view(-1, 1, 1, 1)

    out = x * factor(b)
    grey = _grey(out)
    out = grey.mean(dim=(-2, -1), keepdim=True) + factor(c) * (out - grey.mean(dim=(-2, -1), keepdim=True))
    if x.shape[1] == 3:
        grey = _grey(out)
        out = grey + factor(s) * (out - grey)
        angle = _uniform(-h, h, n, generator, device) * 2 * math.pi
        out = _turn_hue(out, angle)
    out = torch.where(jitter, out.clamp(0, 1), x)
    to_grey = (torch.rand(n, device=device, generator=generator) < GREY_P).view(-1, 1, 1, 1)
    return torch.where(to_grey, _grey(out).expand_as(out), out)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _turn_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    to_yiq, from_yiq = YIQ.to(x.device), torch.linalg.inv(YIQ).to(x.device)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,njhw->nihw", from_yiq, yiq)


def simclr_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One SimCLR view of every image of a batch in [0, 1]: resized crop, flip, colour jitter, greyscale."""
    return colour_jitter(resized_crop_flip(x, generator), generator)
