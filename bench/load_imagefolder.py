"""What opening an image folder costs: listing the class folders, the load-time check that decodes every
file once (so that all unreadable images are reported in one pass), and reading every image for training.

Runs on the real CIFAR-10 JPEGs (60,000 files, 32x32) and prints the median of each stage over --rounds,
and the check's cost as a fraction of reading the images.

    python bench/load_imagefolder.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import cifar10_folder, hardware

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.sources import _class_files, load_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = cifar10_folder()
    cfg = ExperimentConfig(dataset="imagefolder", data_root=str(root))
    times: dict[str, list[float]] = {"list": [], "list + check (load_source)": [], "read all": []}
    for _ in range(args.rounds):
        began = time.perf_counter()
        _class_files(root)
        times["list"].append(time.perf_counter() - began)
        began = time.perf_counter()
        data = load_source(cfg)
        times["list + check (load_source)"].append(time.perf_counter() - began)
        began = time.perf_counter()
        data.read(np.arange(len(data.labels)))
        times["read all"].append(time.perf_counter() - began)
    print(f"{len(data.labels)} images, {hardware()}, medians of {args.rounds} rounds")
    medians = {k: statistics.median(v) for k, v in times.items()}
    for stage, seconds in medians.items():
        print(f"  {stage:28s} {seconds:7.2f} s")
    check = medians["list + check (load_source)"] - medians["list"]
    print(f"  check / read all: {check / medians['read all']:.2f}")


if __name__ == "__main__":
    main()
