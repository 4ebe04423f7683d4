"""A λ study on real CIFAR-10 images (split 0), CPU-sized: both protocols, and pruning against none.

Usage:  python bench/tune_cifar10.py [--per_class 1000] [--arch resnet8] [--epochs 6] [other tune options]

CPU-sized: the first `per_class` training images of each CIFAR-10 class (default 1,000 of 5,000), split
60/20/20 like any source, ResNet-8, 6 epochs, 8 trials.

Runs three `tune` studies one after another with the same seed and settings:
  1. protocol val-anomalies, median pruning;
  2. protocol val-anomalies, no pruning (the compute pruning saved: epochs trained and wall time);
  3. protocol class-holdout, median pruning.
Prints, per study: trials (complete / pruned), wall time, epochs trained, best λ, its validation
AUROC, the test AUROC of the same model and their gap (tracking in bench/out/).
"""

from __future__ import annotations

import sys

import mlflow
from common import HERE, SPLIT0_NAMES, cifar10_subset, hardware, run_cli

STUDIES = [("val-anomalies", "median"), ("val-anomalies", "none"), ("class-holdout", "median")]


def main() -> None:
    args = sys.argv[1:]
    per_class = 1000
    if "--per_class" in args:
        at = args.index("--per_class")
        per_class = int(args[at + 1])
        del args[at:at + 2]
    base = ["tune", "--dataset", "imagefolder", "--data_root", str(cifar10_subset(per_class)),
            "--known_classes", SPLIT0_NAMES, "--arch", "resnet8", "--epochs", "6", "--n_trials", "8",
            "--startup_trials", "3",
            "--target", "recon_weight", "--storage", f"sqlite:///{HERE / 'out' / 'optuna.db'}"]
    rows = {}
    for protocol, pruner in STUDIES:
        name = f"bench-lambda-{protocol}-{pruner}"
        parent_id, wall, env = run_cli([*base, "--protocol", protocol, "--pruner", pruner, "--study_name", name,
                                        *args], "bench-tune")
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        run = mlflow.get_run(parent_id)
        m, tags = run.data.metrics, run.data.tags
        rows[(protocol, pruner)] = m | {"wall": wall}
        print(f"{protocol:14s} pruner {pruner:6s}: {m['tune/trials_complete']:.0f} complete, "
              f"{m['tune/trials_pruned']:.0f} pruned, {m['tune/epochs_trained']:.0f} epochs, wall {wall:.0f} s; "
              f"best λ {float(tags['best_params.recon_weight']):.4g} (trial {tags['best_trial']}): "
              f"val max_logit AUROC {m['val/max_logit/auroc']:.4f}, test {m['test/max_logit/auroc']:.4f}, "
              f"gap {m['tune/val_test_gap']:+.4f}; test anomaly classes {tags['test_anomaly_classes']}")
    pruned, unpruned = rows[("val-anomalies", "median")], rows[("val-anomalies", "none")]
    print(f"pruning saved: {pruned['tune/epochs_trained']:.0f} / {unpruned['tune/epochs_trained']:.0f} epochs "
          f"({pruned['tune/epochs_trained'] / unpruned['tune/epochs_trained']:.2f}x), wall {pruned['wall']:.0f} s / "
          f"{unpruned['wall']:.0f} s ({pruned['wall'] / unpruned['wall']:.2f}x)")
    print(f"data: {per_class} images per class; hardware: {hardware()}")


if __name__ == "__main__":
    main()
