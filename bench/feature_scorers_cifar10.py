"""Q1 with today's detectors on the real CIFAR-10 images (split 0): the baseline classifier of
baseline_cifar10.py (ResNet-20, 30 epochs), evaluated once; every scorer's AUROC, AUPR-in/out, FPR95, fit and
score time, by tier, and the fraction of the Q1 gap (oracle_rf - best classic) that the best deployable
scorer closes.

Usage:  python bench/feature_scorers_cifar10.py [--train_run_id ID] [config options for a new train run]

Without --train_run_id it trains first (tracking in bench/out/, like the baseline).
"""

from __future__ import annotations

import sys

import mlflow
from common import HERE, SPLIT0_NAMES, cifar10_folder, hardware, run_cli

from anomaly_repr.report import TIERS, best_deployable, summarise, tier


def main() -> None:
    argv = sys.argv[1:]
    if "--train_run_id" in argv:
        train_id = argv[argv.index("--train_run_id") + 1]
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{HERE / 'out' / 'mlflow.db'}"}
    else:
        args = ["--dataset", "imagefolder", "--data_root", str(cifar10_folder()), "--known_classes", SPLIT0_NAMES,
                "--arch", "resnet20", "--epochs", "30", *argv]
        train_id, _, env = run_cli(["train", *args], "bench-baseline")
    eval_id, eval_wall, _ = run_cli(["evaluate", "--train_run_id", train_id], "bench-baseline")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    e = mlflow.get_run(eval_id).data.metrics
    print(f"hardware: {hardware()}; train run {train_id}, evaluate run {eval_id} ({eval_wall:.0f} s wall)")
    print(f"test/acc {e['test/acc']:.4f}")
    print("| tier | scorer | AUROC | AUPR-in | AUPR-out | FPR95 | fit s | score s |")
    print("|---|---|---|---|---|---|---|---|")
    names = sorted({k.split("/")[1] for k in e if k.endswith("/auroc")},
                   key=lambda n: (TIERS.index(tier(n)), -e[f"test/{n}/auroc"]))
    for s in names:
        print(f"| {tier(s)} | {s} | {e[f'test/{s}/auroc']:.3f} | {e[f'test/{s}/aupr_in']:.3f} | "
              f"{e[f'test/{s}/aupr_out']:.3f} | {e[f'test/{s}/fpr95']:.3f} | {e[f'test/{s}/fit_seconds']:.2f} | "
              f"{e[f'test/{s}/score_seconds']:.2f} |")
    summary = summarise({"classifier": [e]})
    print(f"q1_gap {summary['test/q1_gap']:.4f}, best deployable {best_deployable(summary, 'classifier')} "
          f"{summary['test/q1_best_deployable']:.4f}, q1_closed {summary.get('test/q1_closed', float('nan')):.3f}")


if __name__ == "__main__":
    main()
