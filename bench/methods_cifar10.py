"""Methods against the classifier on the real CIFAR-10 images (split 0): scores, oracles, gains and costs.

Usage:  python bench/methods_cifar10.py --methods classifier,rotation,geom [--epochs 10] [--per_class N] [options]

`reproduce` of the listed methods (the classifier first: the reference) with the same architecture and
epochs (tracking in bench/out/). Prints the parent's AUROC table and gap table, then per child: wall time
and its ratio to the classifier's, training images/s (per stage for methods with stages), epochs, accuracy,
the seconds a forward pass and the method's extra passes take on `--cost_images` test images (each
transform of GEOM, the input gradients of JEM, the views of CSI), and, for JEM, the
per-epoch energies of data and samples (is training stable?) and the sampler's time per step.
Options after the script's own go to the CLI as they are (`--csi_epochs 5`, `--jem_sgld_steps 10`, ...).
"""

from __future__ import annotations

import argparse
import time

import mlflow
import numpy as np
import torch
from common import SPLIT0_NAMES, cifar10_folder, cifar10_subset, hardware, run_cli

from anomaly_repr.engine.workflow import new_model, prepare
from anomaly_repr.methods import method_for
from anomaly_repr.scoring.outputs import extract
from anomaly_repr.tracking.store import load_config, load_weights


def history(client: mlflow.MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def scoring_cost(run_id: str, n: int) -> tuple[float, float]:
    """Seconds to extract n test images with a child's model, and for its method's extra passes (every
    transform, SGLD-free input gradients, augmented views...), after its calibration."""
    cfg = load_config(run_id)
    prep = prepare(cfg, parts=("train", "val", "test"))
    model, normalizer = load_weights(run_id, new_model(prep), prep.split)
    method, device = method_for(cfg), torch.device("cpu")
    images = prep.images(prep.split.test[:n])
    nominal = {part: prep.images(prep.split.nominal(getattr(prep.split, part), prep.data.labels)[:2000])
               for part in ("val", "train")}
    calibration = method.calibrate(model, nominal["val"], normalizer, device, nominal["train"])
    began = time.perf_counter()
    extract(model, images, np.zeros(len(images)), normalizer, device, method.batch_extras)
    forward = time.perf_counter() - began
    began = time.perf_counter()
    method.extra_passes(model, images, normalizer, device, calibration)
    return forward, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="classifier,rotation")
    parser.add_argument("--epochs", default="10")
    parser.add_argument("--per_class", type=int, default=0)
    parser.add_argument("--cost_images", type=int, default=1000)
    args, rest = parser.parse_known_args()
    root = cifar10_subset(args.per_class) if args.per_class else cifar10_folder()
    cli = ["reproduce", "--dataset", "imagefolder", "--data_root", str(root), "--known_classes", SPLIT0_NAMES,
           "--arch", "resnet20", "--epochs", args.epochs, "--methods", args.methods, *rest]
    parent_id, wall, env = run_cli(cli, "bench-methods")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    print(f"hardware: {hardware()}; parent run {parent_id}, wall {wall:.0f} s")
    print(mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md"))
    kids = sorted(client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"),
                  key=lambda r: r.info.start_time)
    walls = {k.data.params["method"]: (k.info.end_time - k.info.start_time) / 1000 for k in kids}
    reference = walls.get("classifier")
    for kid in kids:
        m, method, run_id = kid.data.metrics, kid.data.params["method"], kid.info.run_id
        ratio = f" ({walls[method] / reference:.1f}x the classifier's)" if reference else ""
        print(f"\n{method}: wall {walls[method]:.0f} s{ratio}; {m['train/seconds']:.0f} s of optimiser steps, "
              f"{m['train/images_per_second_mean']:.0f} training images/s over {m['train/epochs_run']:.0f} epochs "
              f"(best {m['train/best_epoch']:.0f}); val/best_acc {m['val/best_acc']:.4f}, test/acc {m['test/acc']:.4f}")
        speed = history(client, run_id, "train/images_per_second")
        contrastive = history(client, run_id, "train/contrastive_loss")
        if contrastive:
            first = [v for step, v in speed.items() if step in contrastive]
            second = [v for step, v in speed.items() if step not in contrastive]
            print(f"  images/s per stage: contrastive {sum(first) / len(first):.0f}, heads "
                  f"{sum(second) / max(1, len(second)):.0f}")
        forward, extra = scoring_cost(run_id, args.cost_images)
        print(f"  scoring {args.cost_images} test images: one forward pass {forward:.2f} s, the method's extra "
              f"passes {extra:.2f} s ({(forward + extra) / forward:.1f}x a forward pass)")
        data, samples = history(client, run_id, "train/energy_data"), history(client, run_id, "train/energy_samples")
        if data:
            sgld = history(client, run_id, "train/sgld_seconds")
            print("  epoch: mean energy of data / of samples: "
                  + "; ".join(f"{e}: {data[e]:.2f} / {samples[e]:.2f}" for e in sorted(data)))
            print(f"  sampler seconds per training step (mean over epochs): {sum(sgld.values()) / len(sgld):.3f}")
    gains = sorted(k for k in parent.data.metrics if k.startswith("test/gain/") and k.count("/") == 3
                   and not k.endswith(("_ci_low", "_ci_high", "_p", "_std", "_mean", "_ci95")))
    print("\n" + "\n".join(f"{k} {parent.data.metrics[k]:+.4f} [{parent.data.metrics.get(k + '_ci_low', 0):+.4f}, "
                           f"{parent.data.metrics.get(k + '_ci_high', 0):+.4f}] p "
                           f"{parent.data.metrics.get(k + '_p', float('nan')):.3f}" for k in gains))


if __name__ == "__main__":
    main()
