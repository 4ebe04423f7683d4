"""Time to accuracy: the CPU-tier recipe (ResNet-20) against `preset=fast` on CIFAR-10 split 0, in one sequence.

Usage:
  python bench/time_to_accuracy.py [--recipes cpu_tier,fast] [--seeds 0,1,2] [--parity] [--extra ARGS]

For each recipe and seed, one after another on the same machine: `train` then `evaluate` of the classifier
through the CLI (tracking in bench/out/), then one table row: the training command's wall time (loading
the JPEGs, training, logging) and its optimiser-step seconds, training images/s, the achieved TFLOP/s of a
training step (the FLOPs of one forward and backward pass counted by torch's FlopCounterMode, times
images/s), test accuracy, max-logit AUROC and oracle_rf with their bootstrap intervals. Before the runs,
the machine's bound in the same process: a bfloat16 (or, without native bfloat16, float32) 2048x2048
matmul and a 3x3 convolution with 256 channels at 16x16, each in TFLOP/s. Then the mean ± sd over seeds
per recipe.

`--tta_too`: each model whose recipe evaluates without them (cpu_tier; `fast` has them) evaluated once more
with `--tta flip_translate` (a line under its row).
`--parity`: one more run of `fast`, seed 0, in float32 (`--amp false`), beside the bfloat16 run of the same
seed: the test accuracy, max-logit AUROC and oracle_rf differences.

Recipes:
- cpu_tier: ResNet-20, RandAugment, one-cycle SGD at lr 0.1, batch 128, 62 epochs (BENCHMARKS.md, "The
  CPU-tier target"), no per-epoch AUROC;
- fast: `--preset fast`.
On a CUDA device (`--device cuda` in --extra, or found by `device=auto`) the same commands run there; the
bound is then measured on the GPU. The fast recipe's training already runs channels-last and bfloat16 there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlflow
import torch
import torch.nn.functional as F
from common import SPLIT0_NAMES, cifar10_folder, hardware, run_cli
from torch.utils.flop_counter import FlopCounterMode

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.engine.device import autocast_dtype, pick_device
from anomaly_repr.models.backbones import create_model

RECIPES = {
    "cpu_tier": ["--arch", "resnet20", "--augment", "randaugment", "--epochs", "62", "--batch_size", "128",
                 "--lr", "0.1"],
    "fast": ["--preset", "fast"],
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / repeats


def bounds(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """TFLOP/s of a square matmul and of a wide 3x3 convolution in `dtype` on `device`."""
    a, b = (torch.randn(2048, 2048, device=device, dtype=dtype) for _ in range(2))
    matmul = 2 * 2048 ** 3 / timed(lambda: a @ b, 20) / 1e12
    x = torch.randn(64, 256, 16, 16, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = 2 * 64 * 256 * 256 * 9 * 16 * 16 / timed(lambda: F.conv2d(x, w, padding=1), 10) / 1e12
    return {"matmul": matmul, "conv": conv}


def step_flops(arch: str, classes: int = 6, batch: int = 32) -> float:
    """FLOPs of one training step's forward and backward pass, per image."""
    model = create_model(arch, classes, 3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x).logits, y).backward()
    return counter.get_total_flops() / batch


def tta_reading(train_id: str) -> str:
    """A second `evaluate` of the same model with tta=flip_translate: test accuracy, max-logit AUROC, wall."""
    eval_id, wall, _ = run_cli(["evaluate", "--train_run_id", train_id, "--tta", "flip_translate"],
                               "bench-time-to-accuracy")
    m = mlflow.get_run(eval_id).data.metrics
    return (f"with tta=flip_translate: test acc {m['test/acc']:.4f}, max_logit {m['test/max_logit/auroc']:.4f} "
            f"[{m['test/max_logit/auroc_ci_low']:.4f}, {m['test/max_logit/auroc_ci_high']:.4f}], oracle_rf "
            f"{m['test/oracle_rf/auroc']:.4f}, evaluate wall {wall:.0f} s "
            f"(extraction {m['test/extract_seconds']:.0f} s)")


def run(recipe: str, seed: int, extra: list[str]) -> dict[str, float | str]:
    args = ["--dataset", "imagefolder", "--data_root", str(cifar10_folder()), "--known_classes", SPLIT0_NAMES,
            "--method", "classifier", "--val_auroc_every", "0", "--seed", str(seed), *RECIPES[recipe], *extra]
    train_id, train_wall, env = run_cli(["train", *args], "bench-time-to-accuracy")
    eval_id, eval_wall, _ = run_cli(["evaluate", "--train_run_id", train_id], "bench-time-to-accuracy")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    train_run = mlflow.get_run(train_id)
    tm, em = train_run.data.metrics, mlflow.get_run(eval_id).data.metrics
    return {"recipe": recipe, "seed": seed, "arch": train_run.data.params["arch"], "train_id": train_id,
            "precision": train_run.data.tags.get("precision", ""), "epochs": tm["train/epochs_run"],
            "train_wall": train_wall, "eval_wall": eval_wall, "step_seconds": tm["train/seconds"],
            "images_per_second": tm["train/images_per_second_mean"], "acc": em["test/acc"],
            **{f"{s}{k}": em[f"test/{s}/auroc{k}"] for s in ("max_logit", "oracle_rf")
               for k in ("", "_ci_low", "_ci_high")}}


def row(r: dict, flops: float) -> str:
    def auroc(s: str) -> str:
        return f"{r[s]:.4f} [{r[s + '_ci_low']:.4f}, {r[s + '_ci_high']:.4f}]"

    tflops = flops * r["images_per_second"] / 1e12
    return (f"| {r['recipe']} ({r['arch']}, {r['precision']}) | {r['seed']} | {r['epochs']:.0f} | "
            f"{r['train_wall']:.0f} s ({r['train_wall'] / 60:.1f} min) | {r['step_seconds']:.0f} s | "
            f"{r['images_per_second']:.0f} | {tflops:.3f} | {r['acc']:.4f} | {auroc('max_logit')} | "
            f"{auroc('oracle_rf')} | {r['eval_wall']:.0f} s |")


def summary(rows: list[dict]) -> None:
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        if len(mine) < 2:
            continue
        parts = []
        for key in ("train_wall", "step_seconds", "acc", "max_logit", "oracle_rf"):
            values = [float(r[key]) for r in mine]
            parts.append(f"{key} {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
        print(f"{recipe}, mean ± sd over {len(mine)} seeds: " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="cpu_tier,fast")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--parity", action="store_true")
    parser.add_argument("--tta_too", action="store_true", help="evaluate each model once more with "
                                                                "tta=flip_translate and print that line too")
    parser.add_argument("--extra", default="", help="more CLI options for every run, e.g. '--device cuda'")
    args = parser.parse_args()
    extra = args.extra.split()
    device = pick_device("auto")
    dtype = autocast_dtype("auto", device) or torch.float32
    print(f"hardware: {hardware()}; device {device}; bound precision {dtype}")
    bound = bounds(device, dtype)
    print(f"bound: matmul {bound['matmul']:.3f} TFLOP/s, 3x3 conv 256 ch {bound['conv']:.3f} TFLOP/s")
    flops = {arch: step_flops(arch) for arch in ("resnet20", "fastcnn")}
    print("training-step FLOPs per image: " + ", ".join(f"{a} {f / 1e9:.3f} G" for a, f in flops.items()))
    print("\n| recipe | seed | epochs | train wall | optimiser steps | images/s | TFLOP/s | test acc | "
          "max_logit AUROC | oracle_rf AUROC | evaluate wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for recipe in args.recipes.split(","):
        resolved = ExperimentConfig.create(**({"preset": "fast"} if recipe == "fast" else {"arch": "resnet20"}))
        arch = resolved.arch
        for seed in map(int, args.seeds.split(",")):
            rows.append(run(recipe, seed, extra))
            print(row(rows[-1], flops[arch]), flush=True)
            if args.tta_too and resolved.tta != "flip_translate":  # else its own evaluation already was
                print(f"  seed {seed}, {tta_reading(str(rows[-1]['train_id']))}", flush=True)
    if args.parity:
        parity = run("fast", 0, [*extra, "--amp", "false"])
        print(row(parity, flops["fastcnn"]), flush=True)
        base = next((r for r in rows if r["recipe"] == "fast" and r["seed"] == 0), None)
        if base is not None:
            print("float32 - bfloat16, seed 0: " + ", ".join(
                f"{k} {float(parity[k]) - float(base[k]):+.4f}" for k in ("acc", "max_logit", "oracle_rf")))
    summary(rows)
    for name, value in bound.items():
        print(f"fraction of the {name} bound: " + ", ".join(
            f"{r['recipe']} seed {r['seed']} {flops[str(r['arch'])] * float(r['images_per_second']) / 1e12 / value:.2f}"
            for r in rows))


if __name__ == "__main__":
    main()
