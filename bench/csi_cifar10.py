"""CSI against the classifier at about equal wall time, on the real CIFAR-10 images (split 0).

Usage:  python bench/csi_cifar10.py [--classifier_epochs 15] [--csi_epochs 2] [--head_epochs 4] [options]

Two `train` + `evaluate` pairs of ResNet-20 (tracking in bench/out/): the classifier for `classifier_epochs`
epochs, and CSI with `csi_epochs` contrastive epochs and `head_epochs` epochs of its heads, chosen so that the
two take about the same time. Prints each one's wall time (train, evaluate), epochs, training images/s per
stage, accuracy, and the AUROC of every scorer that matters here (the classifier's max logit; CSI's csi,
csi_ens, csi_unlabeled and both models' oracles). Options after these go to both trainings.
"""

from __future__ import annotations

import argparse

import mlflow
from common import SPLIT0_NAMES, cifar10_folder, hardware, run_cli

SCORERS = ("msp", "max_logit", "energy", "csi", "csi_ens", "csi_unlabeled", "knn", "oracle_rf", "oracle_linear")


def pair(args: list[str]) -> tuple[str, str, float, float]:
    train_id, train_wall, env = run_cli(["train", *args], "bench-csi")
    eval_id, eval_wall, _ = run_cli(["evaluate", "--train_run_id", train_id], "bench-csi")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return train_id, eval_id, train_wall, eval_wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classifier_epochs", default="15")
    parser.add_argument("--csi_epochs", default="2")
    parser.add_argument("--head_epochs", default="4")
    args, rest = parser.parse_known_args()
    data = ["--dataset", "imagefolder", "--data_root", str(cifar10_folder()), "--known_classes", SPLIT0_NAMES,
            "--arch", "resnet20", "--val_auroc_every", "0", *rest]
    runs = {"classifier": pair([*data, "--method", "classifier", "--epochs", args.classifier_epochs]),
            "csi": pair([*data, "--method", "csi", "--csi_epochs", args.csi_epochs, "--epochs", args.head_epochs])}
    client = mlflow.MlflowClient()
    print(f"hardware: {hardware()}")
    print("\n| model | epochs | wall train + evaluate | images/s per stage | val acc | test acc | "
          + " | ".join(SCORERS) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(SCORERS))
    for name, (train_id, eval_id, train_wall, eval_wall) in runs.items():
        tm, em = client.get_run(train_id).data.metrics, client.get_run(eval_id).data.metrics
        speed = {m.step: m.value for m in client.get_metric_history(train_id, "train/images_per_second")}
        contrastive = {m.step for m in client.get_metric_history(train_id, "train/contrastive_loss")}
        stages = [("contrastive", [v for s, v in speed.items() if s in contrastive]),
                  ("heads" if contrastive else "train", [v for s, v in speed.items() if s not in contrastive])]
        per_stage = ", ".join(f"{stage} {sum(v) / len(v):.0f}" for stage, v in stages if v)
        epochs = f"{len(contrastive)} + {len(speed) - len(contrastive)}" if contrastive else str(len(speed))
        cells = " | ".join(f"{em[f'test/{s}/auroc']:.3f}" if f"test/{s}/auroc" in em else "" for s in SCORERS)
        print(f"| {name} | {epochs} | {train_wall:.0f} + {eval_wall:.0f} s | {per_stage} | {tm['val/best_acc']:.4f} | "
              f"{em['test/acc']:.4f} | {cells} |")


if __name__ == "__main__":
    main()
