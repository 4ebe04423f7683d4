"""torchvision 0.29's augmentation operations (`torchvision/transforms/autoaugment.py`'s `_apply_op`) on
uint8 batches (N, C, H, W), one signed magnitude per image (float64), as tensor ops on the batch's device: the
same arithmetic, rounding and truncation, so each op gives torchvision's own single-image result (the tests
compare them). Geometric ops use nearest interpolation and fill 0, as torchvision's defaults do; the policies
that draw them are in `augment.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

OpFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 images (n, C, H, W), magnitudes (n,)) -> uint8


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
