"""Augmentation policies for whole batches on the device: TrivialAugment, RandAugment, AutoAugment.

torchvision's policy transforms draw one operation and magnitude per call, so a batch through them gets
one draw, or costs a Python call per image. Here every image of a uint8 batch (N, C, H, W) draws its own
operation, magnitude bin and sign at once; the batch is grouped by operation and each operation runs once
on its group, as tensor ops on the batch's device (`image_ops.py`). The op set, the magnitude ranges and
the arithmetic (uint8 in and out, the same rounding and truncation) are torchvision 0.29's
(`torchvision/transforms/autoaugment.py`), so each op gives torchvision's own single-image result (the
tests compare them):

- `trivialaugment`: TrivialAugmentWide (Müller & Hutter 2021): one op per image of 14 (Identity, ShearX/Y
  up to 0.99, TranslateX/Y up to 32 px, Rotate up to 135°, Brightness/Color/Contrast/Sharpness up to
  ±0.99, Posterize 8..2 bits, Solarize 255..0, AutoContrast, Equalize), a magnitude bin of 31 drawn
  uniformly, a random sign for the signed ops;
- `randaugment`: RandAugment (Cubuk et al. 2020): `randaugment_ops` ops per image in turn (torchvision's
  default 2), of the same 14 with the narrower ranges (shear 0.3, translate 150/331 of the side, rotate
  30°, colour 0.9, posterize 8..4 bits), all at magnitude bin `randaugment_magnitude` of 31 (default 9);
- `autoaugment`: AutoAugment (Cubuk et al. 2019), torchvision's CIFAR-10 policy: one of 25 sub-policies
  per image, each two (op, probability, magnitude bin of 10) steps, Invert among the ops.

`crop_flip` adds no policy: the random crop and flip of `pipeline.py` run for every policy. Random erasing,
mixup and cutmix follow the policy (`mixing.py`).
"""

from __future__ import annotations

import torch

from anomaly_repr.config import AUGMENTS
from anomaly_repr.data.image_ops import OPS

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
RANDAUGMENT_BINS = 31  # torchvision's
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

    def __init__(self, name: str, height: int, width: int, ops: int = 2, magnitude: int = 9):
        """`ops` and `magnitude` (a bin of 31) are RandAugment's (torchvision's defaults)."""
        if name not in AUGMENTS:
            raise ValueError(f"unknown augmentation policy {name!r}; choose one of {', '.join(AUGMENTS)}")
        self.name, self.randaugment_ops, self.randaugment_magnitude = name, ops, magnitude
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
            for _ in range(self.randaugment_ops):
                chosen, negative = draw(len(self.ops)), draw(2).bool()
                bins = torch.full((n,), self.randaugment_magnitude)
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
