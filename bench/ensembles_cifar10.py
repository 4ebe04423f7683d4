"""Deep ensembles and SVGD ensembles against one classifier, on the real CIFAR-10 images (split 0).

Usage:  python bench/ensembles_cifar10.py [--per_class N] [--epochs 10] [--ensemble_size 5] [--seeds 0] [options]

`reproduce` of classifier, ensemble and svgd with the same architecture and epochs (tracking in bench/out/).
Prints every scorer's AUROC for each model with the member means (one member's scorers, averaged over the
members: the single-member column), the oracle on one member's z against the concatenation, the gains with
paired intervals, the mean disagreement on the test images, and each child's wall time and training
images/s (summed over its members for the deep ensemble).
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
from common import SPLIT0_NAMES, cifar10_folder, cifar10_subset, hardware, run_cli

SCORERS = ("msp", "entropy", "max_logit", "energy", "ens_msp", "ens_entropy", "mutual_info", "ens_energy",
           "disagreement", "knn", "oracle_rf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_class", type=int, default=0, help="a CPU-sized slice: this many images per class")
    own, rest = parser.parse_known_args()
    root = cifar10_subset(own.per_class) if own.per_class else cifar10_folder()
    args = ["reproduce", "--dataset", "imagefolder", "--data_root", str(root), "--known_classes",
            SPLIT0_NAMES, "--arch", "resnet20", "--epochs", "10", "--methods", "classifier,ensemble,svgd", *rest]
    parent_id, wall, env = run_cli(args, "bench-ensembles")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    m = parent.data.metrics
    print(f"hardware: {hardware()}; parent run {parent_id}, wall {wall:.0f} s")
    print("\n| model | " + " | ".join(SCORERS) + " |")
    print("|---|" + "---|" * len(SCORERS))
    for model in ("classifier", "ensemble", "svgd"):
        for prefix, label in ((f"test/{model}", model), (f"test/{model}/member_mean", f"{model}, member mean")):
            cells = [m.get(f"{prefix}/{s}/auroc") for s in SCORERS]
            if any(c is not None for c in cells):
                print(f"| {label} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    print()
    for key in sorted(k for k in m if k.startswith("test/gain/") and k.count("/") == 3
                   and not k.endswith(("_ci_low", "_ci_high", "_p", "_std", "_mean", "_ci95"))):
        print(f"{key} {m[key]:+.4f} [{m.get(key + '_ci_low', np.nan):+.4f}, {m.get(key + '_ci_high', np.nan):+.4f}] "
              f"p {m.get(key + '_p', np.nan):.3f}")
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    print()
    for kid in sorted(kids, key=lambda r: r.info.start_time):
        km = kid.data.metrics
        with np.load(mlflow.artifacts.download_artifacts(run_id=kid.info.run_id,
                                                         artifact_path="outputs/test_scores.npz")) as scores:
            shown = f", mean test disagreement {scores['disagreement'].mean():.3f}" if "disagreement" in scores else ""
        print(f"{kid.data.params['method']}: wall {(kid.info.end_time - kid.info.start_time) / 1000:.0f} s, "
              f"{km['train/images_per_second_mean']:.0f} training images/s, {km['train/seconds']:.0f} s of steps, "
              f"epochs run {km['train/epochs_run']:.0f}, val/best_acc {km['val/best_acc']:.4f}, test/acc "
              f"{km['test/acc']:.4f}{shown}")


if __name__ == "__main__":
    main()
