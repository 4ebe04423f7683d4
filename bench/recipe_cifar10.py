"""A better closed-set classifier within the CPU budget, on the real CIFAR-10 images (split 0).

Usage:
  python bench/recipe_cifar10.py study [--epochs 15] [--augment crop_flip,trivialaugment,randaugment] [options]
  python bench/recipe_cifar10.py target --augment POLICY [--arch resnet20] [--epochs 50] [options]

`study`: `reproduce` of the classifier under each augmentation policy (the talk's question: do augmentations
that help classification help detection?). Prints, per policy, what a choice may read (validation accuracy
of the kept model, validation max-logit AUROC at its epoch), then the test side: accuracy, every classic
score, the oracle, the gains against crop and flip with paired intervals, and the accuracy-AUROC
correlation; and the policy that validation picks (best validation max-logit AUROC, ties by accuracy).

`target`: one `train` and one `evaluate` of the classifier with the given recipe, timed as a whole command
(loading the images, training, extraction, every scorer, the oracles, logging), against the CPU-tier
target: test accuracy >= 0.94 and max-logit AUROC >= 0.88 within 30 minutes of wall time.
Options after the mode go to the CLI as they are (`--ema_decay 0.999`, `--seed 1`, ...). Tracking in bench/out/.
"""

from __future__ import annotations

import sys

import mlflow
from common import SPLIT0_NAMES, cifar10_folder, hardware, run_cli

TARGET_ACCURACY, TARGET_AUROC, TARGET_SECONDS = 0.94, 0.88, 30 * 60
CLASSIC = ("msp", "entropy", "max_logit", "energy")


def split0(argv: list[str]) -> list[str]:
    return ["--dataset", "imagefolder", "--data_root", str(cifar10_folder()), "--known_classes", SPLIT0_NAMES,
            "--arch", "resnet20", *argv]


def at_best_epoch(client: mlflow.MlflowClient, run: mlflow.entities.Run, key: str) -> float:
    """A per-epoch metric at the epoch the run kept (its best validation accuracy)."""
    best = int(run.data.metrics["train/best_epoch"])
    values = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
    return values.get(best, float("nan"))


def study(argv: list[str]) -> None:
    parent_id, wall, env = run_cli(["reproduce", *split0(["--methods", "classifier", "--epochs", "15", *argv])],
                                   "bench-recipe-study")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    m = client.get_run(parent_id).data.metrics
    print(f"hardware: {hardware()}; parent run {parent_id}, wall {wall:.0f} s")
    kids = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_id}'")
    print("\n| policy | epochs (best) | val acc | val max-logit AUROC | training images/s | wall |")
    print("|---|---|---|---|---|---|")
    chosen = []
    for kid in sorted(kids, key=lambda r: r.info.start_time):
        km, policy = kid.data.metrics, kid.data.params["augment"]
        val_auroc = at_best_epoch(client, kid, "val/max_logit/auroc")
        chosen.append((val_auroc, km["val/best_acc"], policy))
        print(f"| {policy} | {km['train/epochs_run']:.0f} ({km['train/best_epoch']:.0f}) | {km['val/best_acc']:.4f} | "
              f"{val_auroc:.4f} | {km['train/images_per_second_mean']:.0f} | "
              f"{(kid.info.end_time - kid.info.start_time) / 1000:.0f} s |")
    print(f"\nvalidation picks: {max(chosen)[2]} (best validation max-logit AUROC at the kept epoch)\n")
    print(mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md"))
    for key in sorted(k for k in m if k.startswith("test/gain/") and k.count("/") == 3
                      and not k.endswith(("_ci_low", "_ci_high", "_p", "_std", "_mean", "_ci95"))):
        print(f"{key} {m[key]:+.4f} [{m.get(key + '_ci_low', float('nan')):+.4f}, "
              f"{m.get(key + '_ci_high', float('nan')):+.4f}] p {m.get(key + '_p', float('nan')):.3f}")
    print("   ".join(f"{k} {v:.3f}" for k, v in sorted(m.items()) if k.startswith("accuracy_vs_auroc/")))


def target(argv: list[str]) -> None:
    args = split0(["--method", "classifier", "--val_auroc_every", "0", *argv])
    train_id, train_wall, env = run_cli(["train", *args], "bench-recipe-target")
    eval_id, eval_wall, _ = run_cli(["evaluate", "--train_run_id", train_id], "bench-recipe-target")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    tm, em = mlflow.get_run(train_id).data.metrics, mlflow.get_run(eval_id).data.metrics
    wall = train_wall + eval_wall
    acc, auroc = em["test/acc"], em["test/max_logit/auroc"]
    print(f"hardware: {hardware()}; train run {train_id}, evaluate run {eval_id}")
    print(f"recipe: {' '.join(argv)}; precision {mlflow.get_run(train_id).data.tags.get('precision')}")
    print(f"epochs run {tm['train/epochs_run']:.0f} (kept {tm['train/best_epoch']:.0f}), val/best_acc "
          f"{tm['val/best_acc']:.4f}, {tm['train/images_per_second_mean']:.0f} training images/s, "
          f"{tm['train/seconds']:.0f} s of optimiser steps")
    print(f"wall: train {train_wall:.0f} s + evaluate {eval_wall:.0f} s = {wall:.0f} s ({wall / 60:.1f} min)")
    print("test AUROC: " + "  ".join(f"{s} {em[f'test/{s}/auroc']:.4f}" for s in (*CLASSIC, "oracle_rf")))
    print(f"max_logit AUROC 95 % interval [{em['test/max_logit/auroc_ci_low']:.4f}, "
          f"{em['test/max_logit/auroc_ci_high']:.4f}]")
    verdict = acc >= TARGET_ACCURACY and auroc >= TARGET_AUROC and wall <= TARGET_SECONDS
    print(f"target (acc >= {TARGET_ACCURACY}, max-logit AUROC >= {TARGET_AUROC}, wall <= 30 min): "
          f"acc {acc:.4f}, AUROC {auroc:.4f}, {wall / 60:.1f} min -> {'reached' if verdict else 'NOT reached'}")


if __name__ == "__main__":
    mode, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if mode not in ("study", "target"):
        sys.exit(__doc__)
    study(rest) if mode == "study" else target(rest)
