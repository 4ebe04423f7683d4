"""Open category against out-of-distribution on the same model (the talk's claim that the open-category
problem is the harder one): a classifier on the real CIFAR-10 images (split 0), evaluated with
`ood_sets=digits,gaussian,uniform`; every scorer's and oracle's AUROC on the held-out classes (near) and on
each far set, with intervals, near_harder (far minus near AUROC, joint bootstrap) and OSCR.

Usage:  python bench/ood_cifar10.py [--train_run_id ID] [config options of the train run]

Without --train_run_id it trains first with `--preset fast` and the options given (tracking in bench/out/).
"""

from __future__ import annotations

import sys

import mlflow
from common import HERE, SPLIT0_NAMES, cifar10_folder, hardware, run_cli

from anomaly_repr.study.report import TIERS, tier

SETS = ("digits", "gaussian", "uniform")


def interval(m: dict[str, float], key: str, signed: bool = False) -> str:
    fmt = "+.3f" if signed else ".3f"
    text = f"{m[key]:{fmt}}"
    if f"{key}_ci_low" in m:
        text += f" [{m[key + '_ci_low']:{fmt}}, {m[key + '_ci_high']:{fmt}}]"
    return text


def verdict(m: dict[str, float], scorer: str) -> str:
    """Per far set: 'near' where the near_harder interval lies above 0, 'far' below, '=' where it holds 0."""
    marks = []
    for name in SETS:
        key = f"test/ood/{name}/{scorer}/near_harder"
        low, high = m[key + "_ci_low"], m[key + "_ci_high"]
        marks.append("near" if low > 0 else "far" if high < 0 else "=")
    return "/".join(marks)


def main() -> None:
    argv = sys.argv[1:]
    if "--train_run_id" in argv:
        train_id = argv[argv.index("--train_run_id") + 1]
    else:
        args = ["--dataset", "imagefolder", "--data_root", str(cifar10_folder()), "--known_classes", SPLIT0_NAMES,
                "--preset", "fast", "--val_auroc_every", "0", *argv]
        train_id, train_wall, _ = run_cli(["train", *args], "bench-ood")
        print(f"train wall {train_wall:.0f} s")
    eval_id, eval_wall, env = run_cli(["evaluate", "--train_run_id", train_id, "--ood_sets", ",".join(SETS)],
                                      "bench-ood")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    run = mlflow.get_run(eval_id)
    m = run.data.metrics
    print(f"hardware: {hardware()}; train run {train_id}, evaluate run {eval_id} ({eval_wall:.0f} s wall); "
          f"method {run.data.params['method']}, arch {run.data.params['arch']}; tracking in {HERE / 'out'}")
    print(f"test/acc {m['test/acc']:.4f}; far set sizes: "
          + ", ".join(f"{s} {run.data.tags[f'ood/{s}/images']}" for s in SETS))
    print("| tier | scorer | near AUROC | " + " | ".join(f"{s} AUROC (near_harder, p)" for s in SETS)
          + " | OSCR | harder (digits/gaussian/uniform) |")
    print("|---|---|---|" + "---|" * len(SETS) + "---|---|")
    names = sorted({k.split("/")[1] for k in m if k.endswith("/auroc") and k.count("/") == 2},
                   key=lambda n: (TIERS.index(tier(n)), -m[f"test/{n}/auroc"]))
    for s in names:
        far = [f"{interval(m, f'test/ood/{name}/{s}/auroc')} ({m[f'test/ood/{name}/{s}/near_harder']:+.3f}, "
               f"p {m[f'test/ood/{name}/{s}/near_harder_p']:.3f})" for name in SETS]
        oscr = interval(m, f"test/{s}/oscr") if f"test/{s}/oscr" in m else ""
        print(f"| {tier(s)} | {s} | {interval(m, f'test/{s}/auroc')} | " + " | ".join(far)
              + f" | {oscr} | {verdict(m, s)} |")


if __name__ == "__main__":
    main()
