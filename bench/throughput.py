"""Training throughput side by side: the compute bound, the plain torchvision loop, and the project's loop.

Usage:  python bench/throughput.py [--archs resnet8,resnet20,resnet18] [--steps 20] [--precisions fp32,bf16]
                                  [--rounds 3] [--policies crop_flip,trivialaugment,randaugment,autoaugment]
                                  [--policies_only]

For each architecture and precision, in one process on the same machine:
- bound: forward/backward/SGD step on random in-memory tensors (batch 128, channels-last): what the
  model itself costs;
- peer: a plain torchvision ImageFolder + DataLoader loop (RandomCrop(32, 4), flip, ToTensor, Normalize;
  2 workers) on the real CIFAR-10 JPEGs, the same model and precision;
- project: `anomaly_repr.engine.train.train` for two epochs of `steps` batches of the real images (on-device
  uint8 batches, batched crop and flip), images/s of the second epoch's optimiser steps (the first one
  warms up, as the bound's and the peer's untimed steps do);
- augment: the project's batch pipeline alone (slice, normalise, crop, flip), as a share of a step.
The three are measured in turn, `rounds` times, and each figure is the median of its rounds: on a shared
machine single measurements drift by 20 % and more. Then the ratios project/bound and project/peer of
the medians. `bf16` means torch.autocast(bfloat16): native on CPUs
with AVX512-BF16 or AMX, emulated (slower) elsewhere; the first line says which this CPU has.

Then, for each augmentation policy of `--policies` (and trivialaugment with random erasing 0.25 and
mixup/cutmix 1.0 on top), the batch pipeline's seconds per batch of real images, against the bound's
seconds per step of the first architecture in each precision, measured in turn in the same rounds:
the share of a training step that augmentation costs. `--policies_only` prints that table alone.
"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import SPLIT0, cifar10_folder, hardware
from torchvision import datasets, transforms

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.augment import Policy
from anomaly_repr.data.mixing import Mixing
from anomaly_repr.data.pipeline import DeviceBatches, Normalizer
from anomaly_repr.engine.device import bf16_native
from anomaly_repr.engine.train import TrainData, train
from anomaly_repr.methods import method_for
from anomaly_repr.models.backbones import create_model

BATCH = 128


def autocast(bf16: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         bf16: bool) -> None:
    with autocast(bf16):
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def new_model(arch: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model(arch, 6, 3).to(memory_format=torch.channels_last).train()
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)


def timed(fn, steps: int, warmup: int = 3) -> float:
    """Seconds per call of fn() over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    began = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - began) / steps


def bound(arch: str, bf16: bool, steps: int) -> float:
    model, optimizer = new_model(arch)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 6, (BATCH,))
    return BATCH / timed(lambda: step(model, optimizer, x, y, bf16), steps)


def peer(arch: str, bf16: bool, steps: int, root: Path) -> float:
    model, optimizer = new_model(arch)
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    folder = datasets.ImageFolder(str(root / "train"), transform=tf)
    known = [i for i, (_, label) in enumerate(folder.samples) if label in SPLIT0]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(folder, known), batch_size=BATCH, shuffle=True,
                                         num_workers=2, drop_last=True, persistent_workers=True)
    batches = iter(loader)

    def one() -> None:
        x, y = next(batches)
        step(model, optimizer, x, y % 6, bf16)

    return BATCH / timed(one, steps)


def real_images(root: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    files = sorted((root / "train").glob("*/*.jpg"))[:: max(1, 50000 // n)][:n]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(pixels)), torch.randint(0, 6, (len(files),))


def project(arch: str, bf16: bool, steps: int, images: torch.Tensor, labels: torch.Tensor, tmp: Path) -> float:
    cfg = ExperimentConfig(arch=arch, epochs=2, batch_size=BATCH, amp="true" if bf16 else "false", device="cpu")
    torch.manual_seed(0)
    model = create_model(arch, 6, 3)
    n = BATCH * steps
    norm = Normalizer.fit(images[:n])
    data = TrainData(images[:n], labels[:n], images[:BATCH], labels[:BATCH], norm, True, torch.device("cpu"))
    result = train(method_for(cfg), model, data, tmp / f"{arch}.pt")
    return result.history[-1]["train/images_per_second"]


def augment_seconds(images: torch.Tensor, labels: torch.Tensor, steps: int, policy: str = "crop_flip",
                    erasing: float = 0.0, mixing: float = 0.0) -> float:
    generator = torch.Generator().manual_seed(0)
    batches = DeviceBatches(images, labels, Normalizer.fit(images), BATCH, True, generator,
                            Policy(policy, *images.shape[-2:]), erasing, Mixing(mixing, mixing, 6))
    stream = iter(batches)
    return timed(lambda: next(islice(stream, 1)), min(steps, len(batches) - 4), warmup=1)


def policy_table(arch: str, precisions: list[str], policies: list[str], images: torch.Tensor,
                 labels: torch.Tensor, steps: int, rounds: int) -> None:
    cases = [(p, 0.0, 0.0) for p in policies] + [("trivialaugment", 0.25, 1.0)]
    print("\n| policy | pipeline ms/batch | " + " | ".join(f"share of a {arch} {p} step" for p in precisions) + " |")
    print("|---|---|" + "---|" * len(precisions))
    step_seconds = {p: [] for p in precisions}
    pipeline: dict[tuple, list[float]] = {case: [] for case in cases}
    for _ in range(rounds):
        for p in precisions:
            step_seconds[p].append(BATCH / bound(arch, p == "bf16", steps))
        for case in cases:
            pipeline[case].append(augment_seconds(images, labels, steps, *case))
    steps_med = {p: float(np.median(v)) for p, v in step_seconds.items()}
    for (policy, erasing, mixing), values in pipeline.items():
        seconds = float(np.median(values))
        extra = f" + erasing {erasing} + mixup/cutmix {mixing}" if erasing or mixing else ""
        print(f"| {policy}{extra} | {seconds * 1000:.1f} | "
              + " | ".join(f"{seconds / steps_med[p]:.1%}" for p in precisions) + " |")
    print("step seconds (bound, median): " + ", ".join(f"{p} {v * 1000:.0f} ms" for p, v in steps_med.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="resnet8,resnet20,resnet18")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--policies", default="crop_flip,trivialaugment,randaugment,autoaugment")
    parser.add_argument("--policies_only", action="store_true")
    args = parser.parse_args()
    root, tmp = cifar10_folder(), Path(__file__).resolve().parent / "out" / "throughput"
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"hardware: {hardware()}; native bf16: {bf16_native()}; cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    images, labels = real_images(root, BATCH * (args.steps + 4))
    if args.policies_only:
        policy_table(args.archs.split(",")[0], args.precisions.split(","), args.policies.split(","), images, labels,
                     args.steps, args.rounds)
        return
    aug = augment_seconds(images, labels, args.steps)
    bound(args.archs.split(",")[0], False, args.steps)  # the process's first steps run cold: not measured
    print("| arch | precision | bound img/s | peer img/s | project img/s | project/bound | project/peer | "
          "augmentation share of a step |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for precision in args.precisions.split(","):
            bf16 = precision == "bf16"
            rounds = [(bound(arch, bf16, args.steps), peer(arch, bf16, args.steps, root),
                       project(arch, bf16, args.steps, images, labels, tmp)) for _ in range(args.rounds)]
            b, p, own = (float(np.median(column)) for column in zip(*rounds, strict=True))
            print(f"| {arch} | {precision} | {b:.0f} | {p:.0f} | {own:.0f} | {own / b:.2f} | {own / p:.2f} | "
                  f"{aug * own / BATCH:.1%} |", flush=True)
    policy_table(args.archs.split(",")[0], args.precisions.split(","), args.policies.split(","), images, labels,
                 args.steps, args.rounds)


if __name__ == "__main__":
    main()
