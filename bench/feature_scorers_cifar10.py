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

from anomaly_repr.study.parent import load_cell
from anomaly_repr.study.report import TIERS, tier
from anomaly_repr.study.summary import best_deployable, summarise


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
    print("| tier | scorer | AUROC [95 % bootstrap] | AUPR-in | AUPR-out | FPR95 | fit s | score s |")
    print("|---|---|---|---|---|---|---|---|")
    names = sorted({k.split("/")[1] for k in e if k.endswith("/auroc")},
                   key=lambda n: (TIERS.index(tier(n)), -e[f"test/{n}/auroc"]))
    for s in names:
        interval = f" [{e[f'test/{s}/auroc_ci_low']:.3f}, {e[f'test/{s}/auroc_ci_high']:.3f}]" \
            if f"test/{s}/auroc_ci_low" in e else ""
        print(f"| {tier(s)} | {s} | {e[f'test/{s}/auroc']:.3f}{interval} | {e[f'test/{s}/aupr_in']:.3f} | "
              f"{e[f'test/{s}/aupr_out']:.3f} | {e[f'test/{s}/fpr95']:.3f} | {e[f'test/{s}/fit_seconds']:.2f} | "
              f"{e[f'test/{s}/score_seconds']:.2f} |")
    summary = summarise({"classifier": [load_cell(eval_id, split=0, seed=0)]}, n_resamples=1000)
    print(f"q1_gap {summary['test/q1_gap']:.4f}, best deployable {best_deployable(summary, 'classifier')} "
          f"{summary['test/q1_best_deployable']:.4f}, q1_closed {summary.get('test/q1_closed', float('nan')):.3f}")
    for gap in ("test/q1_gap", *(f"test/classifier/{s}/vs_max_logit" for s in names if tier(s) != "oracle")):
        if f"{gap}_ci_low" in summary:
            print(f"{gap} {summary[gap]:+.4f} [{summary[gap + '_ci_low']:+.4f}, {summary[gap + '_ci_high']:+.4f}] "
                  f"p {summary[gap + '_p']:.3f}")
    if "test/bootstrap_seconds" in e:
        print(f"bootstrap ({e.get('test/bootstrap_seconds'):.2f} s for every scorer's intervals in evaluate)")


if __name__ == "__main__":
    main()
