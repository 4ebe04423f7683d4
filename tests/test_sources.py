"""Sources on small files in their real formats: torchvision's CIFAR pickles, class-folder image trees."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.sources import load_source
from anomaly_repr.errors import DataError

from conftest import messy_folder, write_image


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar(root: Path, hundred: bool, per_file: int = 6) -> np.ndarray:
    """Tiny CIFAR files in torchvision's layout; returns the labels in load order (train files, then test)."""
    n_classes, key = (100, "fine_labels") if hundred else (10, "labels")
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    rng = np.random.default_rng(0)
    all_labels = []
    for name in names:
        labels = rng.integers(0, n_classes, per_file).tolist()
        data = (np.array(labels, dtype=np.uint8)[:, None] * np.ones((1, 3072), dtype=np.uint8))
        _dump(folder / name, {"data": data, key: labels})
        all_labels += labels
    meta_name, meta_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    _dump(folder / meta_name, {meta_key: [f"class{i}" for i in range(n_classes)]})
    return np.array(all_labels)


@pytest.fixture
def skip_md5(monkeypatch):
    # The generated files cannot carry the real archives' checksums; everything else is torchvision's code.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("dataset, hundred", [("cifar10", False), ("cifar100", True)])
def test_cifar_loaders_read_torchvision_files(tmp_path, skip_md5, dataset, hundred):
    labels = write_cifar(tmp_path, hundred)
    data = load_source(ExperimentConfig(dataset=dataset, data_root=str(tmp_path), download=False))
    images = data.read(np.arange(len(labels)))
    assert images.shape == (len(labels), 3, 32, 32) and images.dtype == torch.uint8 and data.shape == (3, 32, 32)
    np.testing.assert_array_equal(data.labels, labels)
    # Each image was filled with its label value: pixels and labels must stay paired through the transpose.
    assert (images[:, :, 5, 7].numpy() == labels[:, None]).all()
    assert len(data.classes) == (100 if hundred else 10) and data.classes[3] == "class3"


def test_missing_cifar_root_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found under .*nowhere \(download=false\)"):
        load_source(ExperimentConfig(dataset="cifar10", data_root=str(tmp_path / "nowhere"), download=False))


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="download failed"):
        load_source(ExperimentConfig(dataset="cifar100", data_root=str(tmp_path), download=True))


def test_digits_are_bundled():
    data = load_source(ExperimentConfig())
    images = data.read(np.arange(len(data.labels)))
    assert images.shape == (1797, 1, 8, 8) and int(images.max()) == 255
    assert data.classes == [str(i) for i in range(10)] and not data.hflip


def test_imagefolder_pools_parts_and_resizes(image_folder):
    data = load_source(ExperimentConfig(dataset="imagefolder", data_root=str(image_folder), image_size=16))
    assert data.classes == ["beetle", "leaf", "moth", "rock"]
    images = data.read(np.arange(20))
    assert images.shape == (20, 3, 16, 16)
    assert np.bincount(data.labels).tolist() == [5, 5, 5, 5]
    means = [images[data.labels == c].float().mean().item() for c in range(4)]
    assert means == sorted(means)  # class c was drawn around pixel value 40 + 50 c


def test_imagefolder_without_parts(tmp_path):
    for c in ("a", "b"):
        for i in range(2):
            write_image(tmp_path / c / f"{i}.png", (8, 8), 100)
    data = load_source(ExperimentConfig(dataset="imagefolder", data_root=str(tmp_path), image_size=8))
    assert data.classes == ["a", "b"] and len(data.labels) == 4


def test_imagefolder_errors(tmp_path, image_folder):
    cfg = ExperimentConfig(dataset="imagefolder", data_root=str(image_folder))
    with pytest.raises(DataError, match="needs data_root"):
        load_source(cfg.replace(data_root=""))
    with pytest.raises(DataError, match="is not a folder"):
        load_source(cfg.replace(data_root=str(tmp_path / "missing")))
    (image_folder / "train" / "empty").mkdir()
    (image_folder / "train" / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match="class folder 'empty' .* has no image file"):
        load_source(cfg)


def test_a_messy_folder_loads_with_its_non_images_skipped(tmp_path):
    data = load_source(ExperimentConfig(dataset="imagefolder", data_root=str(messy_folder(tmp_path, 0))))
    assert data.classes == ["Beetle", "Rock", "green leaf", "moth"]
    assert np.bincount(data.labels).tolist() == [5, 5, 5, 5]
    assert data.skipped == ("Rock/notes.txt",) and data.left_out == ()
    assert data.read(np.arange(20)).shape == (20, 3, 32, 32)


def test_every_unreadable_image_is_named_in_one_error(tmp_path):
    cfg = ExperimentConfig(dataset="imagefolder", data_root=str(messy_folder(tmp_path, 12)))
    with pytest.raises(DataError) as error:
        load_source(cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"12 unreadable image(s) under {tmp_path}: ")
    listed, rest = message.split(": ", 1)[1].split(" and 2 more ")
    assert len(listed.split(", ")) == 10 and "broken" in rest and rest.endswith("; bad_images=skip leaves them out")


def test_bad_images_skip_leaves_them_out(tmp_path):
    cfg = ExperimentConfig(dataset="imagefolder", data_root=str(messy_folder(tmp_path, 3)), bad_images="skip")
    data = load_source(cfg)
    assert data.left_out == ("Rock/broken1.jpg", "moth/broken0.jpg", "moth/broken2.jpg")
    assert np.bincount(data.labels).tolist() == [5, 5, 5, 5]
    assert data.read(np.arange(20)).shape == (20, 3, 32, 32)


def test_imagefolder_opens_only_the_files_asked_for(image_folder, monkeypatch):
    import anomaly_repr.data.sources as sources

    opened: list[str] = []
    real = sources._read_image
    monkeypatch.setattr(sources, "_read_image", lambda path, size: opened.append(path.name) or real(path, size))
    data = load_source(ExperimentConfig(dataset="imagefolder", data_root=str(image_folder)))
    assert opened == []  # the load-time check decodes every file but hands out no pixels
    images = data.read(np.array([3, 0]))
    assert images.shape == (2, 3, 32, 32) and len(opened) == 2
    np.testing.assert_array_equal(images[1].numpy(), data.read(np.array([0]))[0].numpy())
