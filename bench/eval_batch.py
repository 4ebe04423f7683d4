"""How the evaluation batch size sets the speed of a forward pass on this device: the per-epoch validation
accuracy and the extraction of outputs, both in float32 (as the project runs them).

Usage:  python bench/eval_batch.py [--arch resnet20] [--images 7200] [--sizes 64,128,256,512,1024] [--rounds 3]

On the real CIFAR-10 images (the first `images` training JPEGs), a freshly initialised model (the cost does not
depend on the weights): seconds of `train.accuracy` and of `extract.extract` at each batch size, medians of
`rounds`, measured in turn in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import cifar10_folder, hardware
from throughput import real_images

from anomaly_repr.data.pipeline import Normalizer, eval_batch_size
from anomaly_repr.engine.device import accuracy
from anomaly_repr.models.backbones import create_model
from anomaly_repr.scoring.outputs import extract


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--images", type=int, default=7200)
    parser.add_argument("--sizes", default="64,128,256,512,1024")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images, labels = real_images(cifar10_folder(), args.images)
    device, norm = torch.device("cpu"), Normalizer.fit(images)
    torch.manual_seed(0)
    model = create_model(args.arch, 6, 3).to(memory_format=torch.channels_last).eval()
    accuracy(model, images[:512], labels[:512], norm, device)  # warm-up
    sizes = [int(s) for s in args.sizes.split(",")]
    times: dict[int, tuple[list[float], list[float]]] = {size: ([], []) for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            began = time.perf_counter()
            accuracy(model, images, labels, norm, device, batch_size=size)
            times[size][0].append(time.perf_counter() - began)
            began = time.perf_counter()
            extract(model, images, np.zeros(len(images)), norm, device, batch_size=size)
            times[size][1].append(time.perf_counter() - began)
    print(f"hardware: {hardware()}; {args.arch}, {len(images)} images, float32, medians of {args.rounds}; the "
          f"project's evaluation batch here: {eval_batch_size(device)}")
    print("| batch | validation accuracy, s | extraction, s | images/s (extraction) |")
    print("|---|---|---|---|")
    for size, (acc, ext) in times.items():
        print(f"| {size} | {statistics.median(acc):.2f} | {statistics.median(ext):.2f} | "
              f"{len(images) / statistics.median(ext):.0f} |")


if __name__ == "__main__":
    main()
