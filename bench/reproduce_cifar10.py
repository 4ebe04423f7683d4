"""The `reproduce` study on the real CIFAR-10 images (split 0), CPU-sized, with wall time per stage.

Usage:  python bench/reproduce_cifar10.py [--per_class N] [--arch resnet20] [--epochs 15] [--seeds 0,1] [options]

`--per_class N` uses the first N images of each class (a CPU-sized slice, `common.cifar10_subset`).
Prints the parent run's Markdown report (AUROC table with intervals, gap table with paired intervals and
p-values), each child's wall time, epochs and training images per second, and the correlation of
accuracy and AUROC, next to the talk's ResNet34 numbers (tracking in bench/out/).
"""

from __future__ import annotations

import sys

import mlflow
from common import SPLIT0_NAMES, cifar10_folder, cifar10_subset, hardware, run_cli

TALK = {"max logit": 0.776, "oracle detector (RF on z)": 0.905, "oracle representation": 0.987}


def main() -> None:
    argv = sys.argv[1:]
    root = cifar10_folder()
    if "--per_class" in argv:
        at = argv.index("--per_class")
        root = cifar10_subset(int(argv[at + 1]))
        del argv[at:at + 2]
    args = ["reproduce", "--dataset", "imagefolder", "--data_root", str(root),
            "--known_classes", SPLIT0_NAMES, "--arch", "resnet20", "--epochs", "15", *argv]
    parent_id, wall, env = run_cli(args, "bench-reproduce")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    m = mlflow.get_run(parent_id).data.metrics
    print(f"hardware: {hardware()}; parent run {parent_id}, wall {wall:.0f} s")
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    for c in sorted(children, key=lambda r: r.info.start_time):
        cm = c.data.metrics
        if c.info.status != "FINISHED":  # a cell that failed and ran again after a resume
            print(f"  {c.info.run_name}: {c.info.status}")
            continue
        seconds = (c.info.end_time - c.info.start_time) / 1000
        print(f"  {c.info.run_name}: wall {seconds:.0f} s, epochs run {cm['train/epochs_run']:.0f} "
              f"(best {cm['train/best_epoch']:.0f}), val/best_acc {cm['val/best_acc']:.4f}, "
              f"{cm['train/images_per_second_mean']:.0f} training images/s"
              + (f", test/acc {cm['test/acc']:.4f}" if "test/acc" in cm else "")
              + (f", G-ODIN epsilon {cm['godin/epsilon']}" if "godin/epsilon" in cm else ""))
    print(mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md"))
    print("   ".join(f"{k} {v:.3f}" for k, v in sorted(m.items()) if k.startswith("accuracy_vs_auroc/")))
    if "test/oracle_rep/oracle_rf/auroc" not in m:
        return
    print("this run:  max logit {:.3f} -> oracle detector {:.3f} -> oracle representation {:.3f}".format(
        m["test/classifier/max_logit/auroc"], m["test/classifier/oracle_rf/auroc"],
        m["test/oracle_rep/oracle_rf/auroc"]))
    print("the talk (ResNet34): " + " -> ".join(f"{k} {v:.3f}" for k, v in TALK.items()))


if __name__ == "__main__":
    main()
