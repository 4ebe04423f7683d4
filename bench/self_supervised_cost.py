"""What a self-supervised task costs: optimiser steps and test-time scoring of each method, side by side.

Usage:  python bench/self_supervised_cost.py [--arch resnet20] [--steps 10] [--images 1024] [--rounds 3] [--geom72]

On random 32x32 RGB images (CIFAR-10's shape; cost does not depend on the pixels), for the classifier and
each auxiliary-task method: seconds per training step of `batch_size` 128 images (each method's own
`train_step`, all its views), training images per second, and the seconds per image of scoring: one
extraction pass plus the method's extra passes (every transform of every image) and, for geom, the
Dirichlet fit on nominal training images. Medians over `rounds`; ratios against the classifier of the
same round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import hardware

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.methods import method_for
from anomaly_repr.scoring.outputs import extract

CASES = [("classifier", {}), ("rotation", {}), ("recolor", {}), ("sobel", {}),
         ("geom", {"geom_transforms": 8}), ("geom", {"geom_transforms": 72, "aux_samples": 3})]
GEOM_ALL = ("geom", {"geom_transforms": 72})  # 72 views of each of 128 images per step: minutes on 2 CPU cores


def label(name: str, extra: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in extra.items())


def step_seconds(name: str, extra: dict, arch: str, steps: int) -> float:
    method = method_for(ExperimentConfig(method=name, arch=arch, amp="false", **extra))
    torch.manual_seed(0)
    model = method.build(6, 3, 32).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.01, momentum=0.9)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (128,))
    off = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    method.train_step(model, optimizer, x, y, off)  # warm-up
    began = time.perf_counter()
    for _ in range(steps):
        method.train_step(model, optimizer, x, y, off)
    return (time.perf_counter() - began) / steps


def scoring_seconds(name: str, extra: dict, arch: str, n: int) -> float:
    """Per image: extraction + calibration (geom's Dirichlet fit on n nominal training images) + extra passes."""
    method = method_for(ExperimentConfig(method=name, arch=arch, **extra))
    torch.manual_seed(0)
    model = method.build(6, 3, 32).eval()
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    norm, cpu = Normalizer.fit(images), torch.device("cpu")
    began = time.perf_counter()
    extract(model, images, torch.zeros(n).numpy(), norm, cpu, method.batch_extras)
    calibration = method.calibrate(model, images, norm, cpu, images) if name == "geom" else None
    if calibration is not None or name in ("rotation", "recolor"):
        method.extra_passes(model, images, norm, cpu, calibration)
    return (time.perf_counter() - began) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--geom72", action="store_true", help="also geom with all 72 views per image and step")
    args = parser.parse_args()
    cases = CASES + [GEOM_ALL] if args.geom72 else CASES
    print(f"hardware: {hardware()}; {args.arch}, batch 128, float32, {args.steps} steps, {args.images} images scored")
    steps: dict[str, list[float]] = {label(*c): [] for c in cases}
    scoring: dict[str, list[float]] = {label(*c): [] for c in cases}
    for r in range(args.rounds):  # every case once per round: drifts in machine load hit all of them alike
        for name, extra in cases:
            key = label(name, extra)
            steps[key].append(step_seconds(name, extra, args.arch, args.steps))
            scoring[key].append(scoring_seconds(name, extra, args.arch, args.images))
            print(f"round {r}: {key}: {steps[key][-1]:.3f} s per step, {1000 * scoring[key][-1]:.2f} ms per image",
                  flush=True)
    base_step, base_score = statistics.median(steps["classifier"]), statistics.median(scoring["classifier"])
    print("| method | s per step | training images/s | x classifier | ms per scored image | x classifier |")
    print("|---|---|---|---|---|---|")
    for key in steps:
        step, score = statistics.median(steps[key]), statistics.median(scoring[key])
        print(f"| {key} | {step:.3f} | {128 / step:.0f} | {step / base_step:.1f} | {1000 * score:.2f} | "
              f"{score / base_score:.1f} |")


if __name__ == "__main__":
    main()
