"""Where a training step's time goes: torch.profiler over a few steps of one architecture on random images.

Usage:  python bench/step_profile.py [--arch fastcnn] [--batch 512] [--steps 5] [--precision bf16|fp32]
                                     [--compile]

Prints the step's images/s and the share of the self CPU time per kind of op (convolutions forward and
backward, batch norm, activations, pooling, the optimiser, other), then the ten ops with the most self time.
`--compile` first times the same steps without the profiler, eager and with the model under torch.compile
(inductor, its default mode), side by side: whether compiling pays on this machine.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from common import hardware
from torch.profiler import ProfilerActivity, profile

from anomaly_repr.models.backbones import create_model

KINDS = {"conv": ("conv", "mkldnn_convolution"), "batch norm": ("batch_norm",), "activation": ("gelu", "relu"),
         "pooling": ("max_pool", "amax", "max"), "optimiser": ("sgd", "_foreach", "add_", "mul_", "lerp")}


def kind(name: str) -> str:
    lowered = name.lower()
    return next((k for k, needles in KINDS.items() if any(n in lowered for n in needles)), "other")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="fastcnn")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    model = create_model(args.arch, 6, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (args.batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(model(x).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if args.compile:
        compare_compiled(model, optimizer, x, y, args)
    began = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    seconds = time.perf_counter() - began
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = defaultdict(float)
    for e in events:
        shares[kind(e.key)] += e.self_cpu_time_total / total
    print(f"hardware: {hardware()}; {args.arch}, batch {args.batch}, {args.precision}: "
          f"{args.batch * args.steps / seconds:.0f} images/s under the profiler")
    print("share of self CPU time: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(shares.items(),
                                                                                  key=lambda kv: -kv[1])))
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"  {e.key}: {e.self_cpu_time_total / total:.3f}")


def compare_compiled(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                     args: argparse.Namespace) -> None:
    for name, forward in (("eager", model), ("torch.compile", torch.compile(model))):
        def step(forward: torch.nn.Module = forward) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss = F.cross_entropy(forward(x).logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        began = time.perf_counter()
        for _ in range(3):  # warm-up (compilation, for the compiled model)
            step()
        warm = time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(args.steps * 2):
            step()
        print(f"{name}: {args.batch * args.steps * 2 / (time.perf_counter() - began):.0f} images/s "
              f"(warm-up {warm:.0f} s)")


if __name__ == "__main__":
    main()
