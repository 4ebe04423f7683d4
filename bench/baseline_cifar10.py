"""CPU-sized open-set baseline on the real CIFAR-10 images (split 0), through the `main` entry point.

Usage:  python bench/baseline_cifar10.py [--arch resnet20] [--epochs 30] [other config options]

Unpacks ../shared/data/cifar10-jpeg.tar.gz into data/ when needed, runs `anomaly-repr main` on it as an
image folder (split 0: known airplane, automobile, deer, frog, horse, truck) with MLflow tracking in
bench/out/, and prints the numbers that BENCHMARKS.md records.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import mlflow
import torch

HERE = Path(__file__).resolve().parent
TARBALL = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DATA = HERE.parent / "data" / "cifar10-jpeg"
SPLIT0 = "0,6,4,9,1,7"  # Vaze et al. split 0 in CIFAR-10 class indices
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main() -> None:
    if not DATA.exists():
        with tarfile.open(TARBALL) as tar:
            tar.extractall(DATA.parent, filter="data")
    known = ",".join(CIFAR10_CLASSES[int(i)] for i in SPLIT0.split(","))
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{out}/mlflow.db", MLFLOW_EXPERIMENT_NAME="bench-baseline")
    cmd = [sys.executable, "-m", "anomaly_repr", "main", "--dataset", "imagefolder", "--data_root", str(DATA),
           "--known_classes", known, "--arch", "resnet20", "--epochs", "30", *sys.argv[1:]]
    began = time.perf_counter()
    run_id = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    wall = time.perf_counter() - began
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    run = mlflow.get_run(run_id)
    m, p = run.data.metrics, run.data.params
    print(f"command: {' '.join(cmd[1:])}")
    print(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {run.data.tags.get('device')}")
    print(f"run {run_id}: arch {p['arch']}, epochs run {m['train/epochs_run']:.0f} (best {m['train/best_epoch']:.0f})")
    print(f"wall time {wall:.0f} s (training {m['train/seconds']:.0f} s), "
          f"{m['train/images_per_second_mean']:.0f} training images/s")
    print(f"val/best_acc {m['val/best_acc']:.4f}  test/acc {m['test/acc']:.4f}")
    print("| scorer | AUROC | AUPR-in | AUPR-out | FPR95 |")
    print("|---|---|---|---|---|")
    for s in ("msp", "entropy", "max_logit", "energy"):
        print(f"| {s} | {m[f'test/{s}/auroc']:.3f} | {m[f'test/{s}/aupr_in']:.3f} | "
              f"{m[f'test/{s}/aupr_out']:.3f} | {m[f'test/{s}/fpr95']:.3f} |")


if __name__ == "__main__":
    main()
