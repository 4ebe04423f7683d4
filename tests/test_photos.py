"""Real photos as lab and field cameras write them: every file kind decodes to the pixels it shows, checked by
value; the decoding is recorded in the split manifest, and a model trained on other pixels is refused."""

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from anomaly_repr.cli import main
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.sources import load_source
from anomaly_repr.data.split import OpenSetSplit
from anomaly_repr.errors import DataError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def decoded(path: Path, size: int = 32, resize: str = "crop") -> np.ndarray:
    """The one image of a one-file class folder, as the project reads it: (H, W, 3) uint8."""
    root = path.parent.parent
    data = load_source(ExperimentConfig(dataset="imagefolder", data_root=str(root), image_size=size, resize=resize))
    return data.read(np.array([data.classes.index(path.parent.name)]))[0].permute(1, 2, 0).numpy()


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tolerance))


def halves(first: tuple[int, ...], second: tuple[int, ...], size: tuple[int, int], mode: str = "RGB",
           vertical: bool = False) -> Image.Image:
    """`first` on the left (top) half, `second` on the right (bottom) half."""
    img = Image.new(mode, size, second)
    w, h = size
    img.paste(first, (0, 0, w, h // 2) if vertical else (0, 0, w // 2, h))
    return img


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def test_a_cmyk_jpeg_is_read_in_its_colours(tmp_path):
    path = save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), tmp_path / "cmyk" / "a.jpg", quality=95)
    assert near(decoded(path)[16, 16], RED)


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    stored = halves(RED, BLUE, (80, 40))  # stored sideways: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise: red on top, blue below
    path = save(stored, tmp_path / "phone" / "a.jpg", exif=exif, quality=95)
    pixels = decoded(path)
    assert near(pixels[2, 29], RED) and near(pixels[29, 2], BLUE)  # top right red, bottom left blue


def test_a_palette_png_is_read_in_its_palette_colours(tmp_path):
    img = Image.new("P", (32, 32), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert np.array_equal(decoded(save(img, tmp_path / "palette" / "a.png"))[5, 5], [10, 200, 30])


def test_transparent_pixels_show_the_white_background_not_the_colour_stored_under_them(tmp_path):
    img = halves((0, 0, 255, 0), (0, 255, 0, 255), (32, 32), mode="RGBA")  # invisible blue | opaque green
    pixels = decoded(save(img, tmp_path / "rgba" / "a.png"))
    assert near(pixels[16, 4], WHITE, 0) and near(pixels[16, 28], GREEN, 0)
    half = Image.new("LA", (32, 32), (0, 128))  # black at half opacity over white: mid grey
    assert near(decoded(save(half, tmp_path / "la" / "a.png"))[16, 16], (128, 128, 128), 2)


def ramp(dtype: str, low: float, high: float) -> np.ndarray:
    """A left-to-right ramp from `low` to `high`, 32 x 32."""
    return np.tile(np.linspace(low, high, 32), (32, 1)).astype(dtype)


@pytest.mark.parametrize("kind", ["png16", "tiff16", "tiff_float"])
def test_wide_greyscale_images_are_scaled_from_their_range_not_saturated(tmp_path, kind):
    values = {"png16": ramp("uint16", 1000, 3000), "tiff16": ramp("uint16", 1000, 3000),
              "tiff_float": ramp("float32", -1.0, 1.0)}[kind]
    path = save(Image.fromarray(values), tmp_path / kind / ("a.png" if kind == "png16" else "a.tif"))
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I", "F")  # a wide mode, which convert("RGB") saturates to 255
    pixels = decoded(path)
    expected = np.round(np.linspace(0, 255, 32)).astype(np.uint8)
    assert np.abs(pixels[10, :, 0].astype(int) - expected).max() <= 1  # the range spread over 0..255
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])


def test_a_webp_is_read(tmp_path):
    path = save(Image.new("RGB", (32, 32), (200, 100, 50)), tmp_path / "webp" / "a.webp", lossless=True)
    assert np.array_equal(decoded(path)[3, 3], [200, 100, 50])


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_a_large_wide_photo_is_cropped_to_its_centre_or_squashed(tmp_path, resize):
    photo = Image.new("RGB", (3000, 2000), GREEN)  # thirds: red | green | blue
    photo.paste(RED, (0, 0, 1000, 2000))
    photo.paste(BLUE, (2000, 0, 3000, 2000))
    pixels = decoded(save(photo, tmp_path / "field" / "a.jpg", quality=95), resize=resize)
    assert pixels.shape == (32, 32, 3)
    # crop: 48 x 32, columns 8..40 kept: red 0..8, green 8..24, blue 24..32; squash: thirds of 32
    expected = {"crop": (RED, GREEN, GREEN, BLUE), "squash": (RED, RED, BLUE, BLUE)}[resize]
    for column, colour in zip((2, 9, 22, 30), expected, strict=True):
        assert near(pixels[16, column], colour, 40), (column, pixels[16, column])


def test_the_decoding_is_in_the_split_manifest_and_its_hash(tmp_path):
    for c in range(3):
        for i in range(5):
            save(Image.new("RGB", (20, 30), (40 * c, 10 * i, 0)), tmp_path / f"class{c}" / f"{i}.png")

    def split(resize: str) -> OpenSetSplit:
        cfg = ExperimentConfig(dataset="imagefolder", data_root=str(tmp_path), num_known=2, resize=resize)
        data = load_source(cfg)
        return OpenSetSplit.make(cfg, data.labels, data.classes, data.left_out, data.decoding)

    crop, squash = split("crop"), split("squash")
    assert crop.to_dict()["decoding"] == "2/crop" and squash.decoding == "2/squash" and crop.hash != squash.hash
    assert np.array_equal(crop.test, squash.test)  # the same files; only the pixels differ
    earlier = dataclasses.replace(crop, decoding="")  # what the first decoder recorded: nothing
    with pytest.raises(DataError, match="train run x read its images with decoding an earlier, unrecorded one; "
                                        "this version decodes them as 2/crop"):
        crop.check_trained_on(earlier, "train run x")
    with pytest.raises(DataError, match="decoding 2/squash"):
        crop.check_trained_on(squash, "train run x")


def test_evaluating_a_run_trained_with_another_decoding_is_one_line(tracking, tmp_path, capsys):
    root = tmp_path / "photos"
    for c in range(3):
        for i in range(5):
            save(Image.new("RGB", (20, 30), (60 * c, 10 * i, 0)), root / f"class{c}" / f"{i}.png")
    common = ["--dataset", "imagefolder", "--data_root", str(root), "--num_known", "2", "--image_size", "8"]
    assert main(["train", *common, "--epochs", "1", "--device", "cpu"]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = mlflow.artifacts.load_dict(f"runs:/{run_id}/split/manifest.json")
    assert manifest["decoding"] == "2/crop"
    old = dataclasses.replace(OpenSetSplit.from_dict(manifest), decoding="").to_dict()  # as the first decoder
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(old, "split/manifest.json")
    assert main(["evaluate", "--train_run_id", run_id]) == 2
    err = capsys.readouterr().err  # MLflow's download progress, then the one line
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"anomaly-repr: error: train run {run_id} read its images "
                                                   "with decoding an earlier, unrecorded one")
