"""What an SVGD ensemble's step costs as the particles grow: time per step and the process's peak memory.

Usage:  python bench/ensemble_cost.py [--arch resnet20] [--sizes 2,3,5] [--steps 10] [--rounds 3]

A fresh process per measurement builds the model and times `steps` training steps (batch 128 of random 32x32
RGB images, 6 classes, SGD with Nesterov momentum, the precision that `amp=auto` picks on this CPU) after 3
untimed ones, then reports its own peak resident memory (the interpreter and torch included: compare the
growth between sizes). First one network with the classifier's step (a deep ensemble trains M of these one
after another), then the SVGD ensemble of each size M in each kernel space. Medians over `rounds` processes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from common import hardware

CHILD = """
import resource, time, torch
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.methods import method_for
from anomaly_repr.engine.device import autocast_dtype
cfg = ExperimentConfig(method="{method}", arch="{arch}", ensemble_size={size}, svgd_space="{space}")
method = method_for(cfg)
torch.manual_seed(0)
model = method.build(6, 3, 32).to(memory_format=torch.channels_last).train()
optimizer = torch.optim.SGD(method.param_groups(model), lr=0.05, momentum=0.9, nesterov=True)
x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 6, (128,))
dtype = autocast_dtype("auto", torch.device("cpu"))
autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None)
for _ in range(3):
    method.train_step(model, optimizer, x, y, autocast)
began = time.perf_counter()
for _ in range({steps}):
    method.train_step(model, optimizer, x, y, autocast)
seconds = (time.perf_counter() - began) / {steps}
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, dtype or torch.float32)
"""


def measure(method: str, arch: str, size: int, space: str, steps: int, rounds: int) -> tuple[float, float, str]:
    """(median seconds per step, median peak resident MiB, precision) over `rounds` fresh processes."""
    results = []
    for _ in range(rounds):
        code = CHILD.format(method=method, arch=arch, size=max(size, 2), space=space, steps=steps)
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
        results.append((float(out[0]), float(out[1]), out[2]))
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results), results[0][2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--sizes", default="2,3,5")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    one, one_peak, precision = measure("classifier", args.arch, 1, "function", args.steps, args.rounds)
    print(f"hardware: {hardware()}; {args.arch}, batch 128, {args.steps} timed steps, median of {args.rounds} "
          f"processes, precision {precision}")
    print("| model | M | seconds per step | x one network | peak resident MiB |")
    print("|---|---|---|---|---|")
    print(f"| one network (classifier step) | 1 | {one:.3f} | 1.00 | {one_peak:.0f} |", flush=True)
    for space in ("function", "weights"):
        for size in (int(s) for s in args.sizes.split(",")):
            seconds, peak, _ = measure("svgd", args.arch, size, space, args.steps, args.rounds)
            print(f"| svgd, {space} space | {size} | {seconds:.3f} | {seconds / one:.2f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
