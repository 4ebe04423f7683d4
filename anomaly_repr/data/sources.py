"""Data sources: every labelled image of a dataset, pooled; pixels handed out only for the indices asked.

The open-set protocol pools the dataset's own train and test parts and re-splits them
(see `split.py`), so a source lists everything it has: labels and class names first, pixels on request.
`ImageData.read(index)` returns the uint8 images of those indices alone. That is what seals the test
split from tuning: the tuner asks for train and validation indices only, so an image folder never even
opens a test file (CIFAR's pickles bundle images, so their test images are read from disk but never
handed out). CIFAR-size data fits in memory, so no source decodes images inside the training loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from anomaly_repr import registry
from anomaly_repr.errors import DataError
from anomaly_repr.registry import Registry

if TYPE_CHECKING:
    from anomaly_repr.config import ExperimentConfig


@dataclass(frozen=True)
class ImageData:
    labels: np.ndarray  # int64 class index into `classes`, (N,)
    classes: list[str]
    hflip: bool  # whether horizontal flips keep an image in its class (not so for digits)
    shape: tuple[int, int, int]  # (C, H, W) of every image
    reader: Callable[[np.ndarray], torch.Tensor]  # pooled indices -> their uint8 images (n, C, H, W)
    skipped: tuple[str, ...] = ()  # files passed over as not images (by extension), relative to the source's root
    left_out: tuple[str, ...] = ()  # unreadable images left out (bad_images=skip); recorded in the split manifest
    origin: str = ""  # where the images come from (a folder or file), for the runs' dataset inputs
    decoding: str = ""  # how files become pixels (decoder version and resize mode), recorded in the split manifest;
    #                     '' for sources that hold decoded arrays

    def read(self, index: np.ndarray) -> torch.Tensor:
        """The uint8 images (n, C, H, W) of pooled indices `index`, in that order."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= len(self.labels)):
            raise DataError(f"image index out of range 0..{len(self.labels) - 1}")
        return self.reader(index)


def in_memory(images: torch.Tensor, labels: np.ndarray, classes: list[str], hflip: bool, origin: str = "") -> ImageData:
    """An ImageData over images that are already decoded into one uint8 tensor (N, C, H, W)."""
    _, c, h, w = images.shape
    return ImageData(labels, classes, hflip, (c, h, w), lambda index: images[torch.from_numpy(index)],
                     origin=origin)


SOURCES: Registry[Callable[[ExperimentConfig], ImageData]] = registry.SOURCES
register_source = SOURCES.register


def load_source(cfg: ExperimentConfig) -> ImageData:
    return SOURCES[cfg.dataset](cfg)


@register_source("digits")
def load_digits(cfg: ExperimentConfig) -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): offline demos and tests."""
    import sklearn.datasets
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    # Pixel values are 0..16; scale to the 0..255 range every other source uses.
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return in_memory(torch.from_numpy(pixels[:, None, :, :]), bunch.target.astype(np.int64),
                     [str(d) for d in bunch.target_names], hflip=False,
                     origin=str(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"))


def _cifar(cfg: ExperimentConfig, cls: type, title: str) -> ImageData:
    root = Path(cfg.data_root or os.path.join("data", cfg.dataset))
    parts = []
    for train in (True, False):
        try:
            parts.append(cls(root=str(root), train=train, download=cfg.download))
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            hint = "" if cfg.download else " (download=false)"
            raise DataError(f"{title} not found under {root}{hint}: {exc}") from None
        except OSError as exc:  # the download itself failed: offline, DNS, proxy
            raise DataError(f"{title} not found under {root} and the download failed (offline?): {exc}") from None
    images = np.concatenate([p.data for p in parts]).transpose(0, 3, 1, 2)
    labels = np.concatenate([np.asarray(p.targets, dtype=np.int64) for p in parts])
    return in_memory(torch.from_numpy(np.ascontiguousarray(images)), labels, list(parts[0].classes), hflip=True,
                     origin=str(root.resolve()))


@register_source("cifar10")
def load_cifar10(cfg: ExperimentConfig) -> ImageData:
    """CIFAR-10 via torchvision (60,000 32x32 colour images, 10 classes)."""
    from torchvision.datasets import CIFAR10

    return _cifar(cfg, CIFAR10, "CIFAR-10")


@register_source("cifar100")
def load_cifar100(cfg: ExperimentConfig) -> ImageData:
    """CIFAR-100 via torchvision (60,000 32x32 colour images, 100 fine classes)."""
    from torchvision.datasets import CIFAR100

    return _cifar(cfg, CIFAR100, "CIFAR-100")


# What counts as an image, by extension (any case), as torchvision's ImageFolder has it; other files are skipped.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SHOWN = 10  # unreadable files named in an error message
# What PIL raises on a file it cannot decode (a decompression bomb is an image too large to trust).
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


@register_source("imagefolder")
def load_imagefolder(cfg: ExperimentConfig) -> ImageData:
    """A class-folder tree: root/<class>/*.jpg, or root/{train,test}/<class>/*.jpg (both parts pooled).

    Hidden class folders and hidden files are ignored (files in hidden sub-folders of a class are read, as
    they always were, so the split hash of an existing folder stays the same); files without an image
    extension are skipped (listed in `ImageData.skipped`). Every image is decoded once here, in parallel,
    so that all unreadable ones are found in one pass: `bad_images=error` names them in one error, `skip`
    leaves them out (`ImageData.left_out`). The pixels checked are dropped; `read` decodes again only the
    images asked for. Every mode PIL opens becomes 8-bit RGB (`_to_rgb`), upright by its EXIF orientation,
    then image_size x image_size by `resize` (`_fit`).
    """
    if not cfg.data_root:
        raise DataError("dataset imagefolder needs data_root, the folder that holds one sub-folder per class")
    root = Path(cfg.data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data_root {root} is not a folder")
    files, skipped = _class_files(root)
    size = (cfg.image_size, cfg.resize)
    bad = unreadable([p for found in files.values() for p in found], size)
    if bad and cfg.bad_images == "error":
        names = ", ".join(str(p.relative_to(root)) for p in list(bad)[:SHOWN])
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        first, why = next(iter(bad.items()))
        raise DataError(f"{len(bad)} unreadable image(s) under {root}: {names}{more} ({first.name}: {why}); "
                        "bad_images=skip leaves them out")
    for name in files:
        files[name] = [p for p in files[name] if p not in bad]
        if not files[name]:
            raise DataError(f"class folder {name!r} under {root} has no readable image")
    classes = sorted(files)
    paths = [p for c in classes for p in files[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in files[c]], dtype=np.int64)

    def read(index: np.ndarray) -> torch.Tensor:
        arrays = decode_all([paths[i] for i in index], size)
        if not arrays:
            return torch.empty((0, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def relative(found: list[Path]) -> tuple[str, ...]:
        return tuple(p.relative_to(root).as_posix() for p in found)  # the same in the manifest on every OS

    return ImageData(labels, classes, hflip=True, shape=(3, cfg.image_size, cfg.image_size), reader=read,
                     skipped=relative(skipped), left_out=relative(sorted(bad)), origin=str(root.resolve()),
                     decoding=f"{DECODER}/{cfg.resize}")


def _class_files(root: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """({class name: its image files}, the files skipped for their extension), hidden entries ignored."""
    parts = [root / p for p in ("train", "test") if (root / p).is_dir()] or [root]
    files: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for part in parts:
        for class_dir in sorted(d for d in part.iterdir() if d.is_dir() and not d.name.startswith(".")):
            found = sorted(f for f in class_dir.rglob("*") if f.is_file() and not f.name.startswith("."))
            files.setdefault(class_dir.name, []).extend(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES)
            skipped.extend(f for f in found if f.suffix.lower() not in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"data_root {root} has no class folders")
    for name, found in files.items():
        if not found:
            raise DataError(f"class folder {name!r} under {root} has no image file (extensions: "
                            f"{' '.join(sorted(IMAGE_SUFFIXES))})")
    return files, skipped


def decode_all(paths: list[Path], size: Size) -> list[np.ndarray]:
    # Decoding is I/O and C code that releases the GIL; threads keep all cores busy.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda p: _read_image(p, size), paths, chunksize=256))


def unreadable(paths: list[Path], size: Size) -> dict[Path, str]:
    """{path: why} for every file that does not decode, in `paths` order."""
    def check(path: Path) -> str:
        try:
            _decode(path, size)
            return ""
        except UNREADABLE as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        reasons = list(pool.map(check, paths, chunksize=256))
    return {p: why for p, why in zip(paths, reasons, strict=True) if why}


def _read_image(path: Path, size: Size) -> np.ndarray:
    try:
        return _decode(path, size)
    except UNREADABLE as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


# --- from a file to image_size x image_size 8-bit RGB --------------------------------------------------------

# The decoder's version, recorded in the split manifest: raise it whenever a file would decode to other pixels,
# so that a model trained on the old pixels is not silently evaluated on new ones. 1 (unrecorded): convert("RGB")
# and a squash; 2: every mode scaled, EXIF orientation, alpha composited, `resize`.
DECODER = "2"
BACKGROUND = (255, 255, 255)  # what transparent pixels show: white, as a browser or viewer shows them
WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # 16- and 32-bit integer and float single channels
Size = tuple[int, str]  # (image_size, resize)
ORIENTATION = ExifTags.Base.Orientation


def _decode(path: Path, size: Size) -> np.ndarray:
    with Image.open(path) as img:
        # Phone photos are stored sideways with an orientation tag; most files have none (no copy then).
        upright = ImageOps.exif_transpose(img) if img.getexif().get(ORIENTATION, 1) != 1 else img
        rgb = _to_rgb(upright)
    return np.asarray(_fit(rgb, *size), dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: wide single channels scaled from their own value range to 0..255 (convert
    would saturate them: a 16-bit microscope image came out all white), alpha composited onto BACKGROUND,
    the rest (palette, CMYK, greyscale, YCbCr, ...) by PIL's conversion."""
    if img.mode in WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) * (255 / (high - low)) \
            if high > low else np.zeros_like(values)
        return Image.fromarray(np.round(scaled).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _fit(rgb: Image.Image, size: int, resize: str) -> Image.Image:
    """`squash`: both sides to `size`. `crop`, as torchvision's Resize(size) + CenterCrop(size): the shorter
    side to `size` (the longer in proportion, truncated), then the centred square (offsets rounded)."""
    width, height = rgb.size
    if resize == "squash" or width == height:
        return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.BILINEAR)
    short, long = sorted((width, height))
    scaled = (size, int(size * long / short)) if width < height else (int(size * long / short), size)
    rgb = rgb.resize(scaled, Image.Resampling.BILINEAR)
    left, top = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
    return rgb.crop((left, top, left + size, top + size))
