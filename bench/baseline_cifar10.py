"""CPU-sized open-set baseline on the real CIFAR-10 images (split 0): `train`, then `evaluate`.

Usage:  python bench/baseline_cifar10.py [--arch resnet20] [--epochs 30] [other config options]

Unpacks ../shared/data/cifar10-jpeg.tar.gz into data/ when needed, trains on it as an image folder
(split 0: known airplane, automobile, deer, frog, horse, truck), evaluates the classic scorers, and
prints the numbers that BENCHMARKS.md records (tracking in bench/out/).
"""

from __future__ import annotations

import sys

import mlflow
from common import SPLIT0_NAMES, cifar10_folder, hardware, run_cli


def main() -> None:
    args = ["--dataset", "imagefolder", "--data_root", str(cifar10_folder()), "--known_classes", SPLIT0_NAMES,
            "--arch", "resnet20", "--epochs", "30", *sys.argv[1:]]
    train_id, train_wall, env = run_cli(["train", *args], "bench-baseline")
    eval_id, eval_wall, _ = run_cli(["evaluate", "--train_run_id", train_id], "bench-baseline")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    t, e = mlflow.get_run(train_id).data.metrics, mlflow.get_run(eval_id).data.metrics
    print(f"hardware: {hardware()}, device {mlflow.get_run(train_id).data.tags.get('device')}")
    print(f"train run {train_id}: epochs run {t['train/epochs_run']:.0f} (best {t['train/best_epoch']:.0f}), "
          f"wall {train_wall:.0f} s (optimiser steps {t['train/seconds']:.0f} s), "
          f"{t['train/images_per_second_mean']:.0f} training images/s; evaluate wall {eval_wall:.0f} s")
    print(f"val/best_acc {t['val/best_acc']:.4f}  test/acc {e['test/acc']:.4f}")
    print("| scorer | AUROC | AUPR-in | AUPR-out | FPR95 |")
    print("|---|---|---|---|---|")
    for s in ("msp", "entropy", "max_logit", "energy", "oracle_rf", "oracle_linear", "oracle_knn"):
        print(f"| {s} | {e[f'test/{s}/auroc']:.3f} | {e[f'test/{s}/aupr_in']:.3f} | "
              f"{e[f'test/{s}/aupr_out']:.3f} | {e[f'test/{s}/fpr95']:.3f} |")


if __name__ == "__main__":
    main()
