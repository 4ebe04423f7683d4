"""Shared by the bench scripts: the real CIFAR-10 images as an image folder, and running the CLI."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TARBALL = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DATA = HERE.parent / "data" / "cifar10-jpeg"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLIT0 = [0, 6, 4, 9, 1, 7]  # Vaze et al. split 0, CIFAR-10 class indices
SPLIT0_NAMES = ",".join(CIFAR10_CLASSES[i] for i in SPLIT0)


def cifar10_folder() -> Path:
    if not DATA.exists():
        with tarfile.open(TARBALL) as tar:
            tar.extractall(DATA.parent, filter="data")
    return DATA


def cifar10_subset(per_class: int) -> Path:
    """The first `per_class` training images of each class, linked into bench/out/cifar10-<per_class>/<class>/:
    a CPU-sized slice of the real data (the open-set split then re-splits it 60/20/20)."""
    root = HERE / "out" / f"cifar10-{per_class}"
    if not root.exists():
        for class_dir in sorted((cifar10_folder() / "train").iterdir()):
            target = root / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                (target / image.name).symlink_to(image)
    return root


def run_cli(args: list[str], experiment: str) -> tuple[str, float, dict[str, str]]:
    """Run `python -m anomaly_repr ARGS` with tracking in bench/out; (printed run id, wall seconds, env)."""
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{out}/mlflow.db", MLFLOW_EXPERIMENT_NAME=experiment)
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "anomaly_repr", *args], env=env, check=True,
                          stdout=subprocess.PIPE, text=True)
    print(f"command: python -m anomaly_repr {' '.join(args)}")
    return proc.stdout.strip().splitlines()[-1], time.perf_counter() - began, env


def hardware() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
