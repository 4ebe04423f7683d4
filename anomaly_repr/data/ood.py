"""Far anomaly sets (`ood_sets`): images of another kind than the dataset's, each scored beside the split's
held-out classes (the near anomalies) against the same nominal test images.

- `digits`: scikit-learn's 8x8 handwritten digits (MNIST-like, the kind of OpenOOD's far-OOD sets for
  CIFAR), scaled bilinearly to the data's size, their one channel repeated for RGB data.
- `gaussian` and `uniform`: noise images, per channel with the nominal training images' mean and standard
  deviation (rounded and clipped to 0..255), or uniform over their range: the sanity sets of the ODIN and
  Outlier Exposure papers.
- `NAME=PATH`: a folder of the user's images (at any depth; hidden files and folders are ignored, files
  without an image extension skipped), decoded as `imagefolder` decodes (8-bit RGB, upright by EXIF, the
  data's size by `resize`, unreadable files by `bad_images`), then, for single-channel data, to one channel
  by ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, as PIL's "L").

The built-in sets draw `count` images with a seed fixed by the set's name, so every model, seed and run
scores the same images; a folder gives all of its images.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_repr.config import OodSpec
from anomaly_repr.data.sources import IMAGE_SUFFIXES, SHOWN, decode_all, unreadable
from anomaly_repr.errors import DataError

LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class OodSet:
    name: str
    images: torch.Tensor  # uint8 (n, C, H, W), the data's shape
    origin: str  # where the images come from, for the run's dataset input
    skipped: tuple[str, ...] = ()  # files of a folder passed over as not images
    left_out: tuple[str, ...] = ()  # unreadable images of a folder left out (bad_images=skip)

    @property
    def digest(self) -> str:
        """The pixels' hash: the same images give the same dataset digest in MLflow."""
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()[:16]


def check_folders(specs: tuple[OodSpec, ...]) -> None:
    """Each user folder exists and holds an image file: what the entry points check before training."""
    for spec in specs:
        if spec.folder:
            image_files(spec.name, Path(spec.folder).expanduser())


def image_files(name: str, root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under a set's folder, hidden entries ignored; a missing or image-less
    folder is a one-line error."""
    if not root.is_dir():
        raise DataError(f"ood_sets: the folder of set {name!r}, {root}, does not exist")
    found = sorted(f for f in root.rglob("*") if f.is_file()
                   and not any(p.startswith(".") for p in f.relative_to(root).parts))
    images = [f for f in found if f.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"ood_sets: the folder of set {name!r}, {root}, holds no image file (extensions: "
                        f"{' '.join(sorted(IMAGE_SUFFIXES))})")
    return images, [f for f in found if f.suffix.lower() not in IMAGE_SUFFIXES]


def build_set(spec: OodSpec, nominal: torch.Tensor, count: int, resize: str, bad_images: str) -> OodSet:
    """The set's images in the shape of `nominal`, the nominal training images (uint8 (N, C, H, W)), whose
    channel statistics the noise sets take."""
    _, channels, height, width = nominal.shape
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    if spec.folder:
        return _folder(spec, channels, height, width, resize, bad_images)
    if spec.name == "digits":
        from sklearn.datasets import load_digits

        pixels = load_digits().images  # (1797, 8, 8), values 0..16
        chosen = np.sort(rng.choice(len(pixels), size=min(count, len(pixels)), replace=False))
        small = torch.from_numpy(pixels[chosen] * (255.0 / 16.0)).float()[:, None]
        images = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
        return OodSet("digits", _pixels(images.repeat(1, channels, 1, 1)), "sklearn.datasets.load_digits")
    shape = (count, channels, height, width)
    if spec.name == "gaussian":
        # one channel at a time: the whole set in float64 would take eight times the images' memory
        moments = [torch.std_mean(nominal[:, c].to(torch.float64)) for c in range(channels)]
        std, mean = (np.array([float(m[i]) for m in moments]) for i in (0, 1))
        noise = rng.normal(mean[None, :, None, None], std[None, :, None, None], size=shape)
        return OodSet("gaussian", _pixels(torch.from_numpy(noise)), f"gaussian noise, mean {np.round(mean, 1)}, "
                      f"sd {np.round(std, 1)}")
    low = nominal.amin(dim=(0, 2, 3)).double().numpy()  # on the uint8 images: no float copy
    high = nominal.amax(dim=(0, 2, 3)).double().numpy()
    noise = rng.uniform(low[None, :, None, None], high[None, :, None, None] + 1, size=shape)
    return OodSet("uniform", _pixels(torch.from_numpy(np.floor(noise))),
                  f"uniform noise over {low.astype(int).tolist()}..{high.astype(int).tolist()}")


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8).contiguous()


def _folder(spec: OodSpec, channels: int, height: int, width: int, resize: str, bad_images: str) -> OodSet:
    if height != width:
        raise DataError(f"ood_sets: set {spec.name!r} needs square data images, not {height}x{width}")
    root = Path(spec.folder).expanduser()
    paths, others = image_files(spec.name, root)
    size = (height, resize)
    bad = unreadable(paths, size)
    if bad and bad_images == "error":
        names = ", ".join(str(p.relative_to(root)) for p in list(bad)[:SHOWN])
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise DataError(f"ood_sets: {len(bad)} unreadable image(s) in set {spec.name!r} under {root}: "
                        f"{names}{more}; bad_images=skip leaves them out")
    good = [p for p in paths if p not in bad]
    if not good:
        raise DataError(f"ood_sets: set {spec.name!r} under {root} has no readable image")
    rgb = np.stack(decode_all(good, size)).astype(np.float64)  # (n, H, W, 3)
    pixels = rgb if channels == 3 else (rgb @ LUMA)[..., None]
    relative = lambda found: tuple(p.relative_to(root).as_posix() for p in found)  # noqa: E731
    return OodSet(spec.name, _pixels(torch.from_numpy(pixels).permute(0, 3, 1, 2)), str(root.resolve()),
                  relative(others), relative(sorted(bad)))
