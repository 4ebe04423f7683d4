"""Extraction in bfloat16 against float32 on the same trained model: every scorer's test AUROC and the time.

Usage:
  MLFLOW_TRACKING_URI=sqlite:///bench/out/mlflow.db python bench/eval_precision.py TRAIN_RUN_ID [--rounds 2]

Loads the train run's model and data, then extracts the nominal training reference, validation and test
images (the config's test-time augmentation included) once per precision and round, float32 and bfloat16
autocast in turn, fits and scores every applicable scorer on each, and prints per scorer both AUROCs and
their difference, the largest difference, the validation accuracy both ways, and the median extraction time
per precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
from common import hardware

from anomaly_repr.engine.evaluation import extract_parts, score_outputs
from anomaly_repr.engine.workflow import new_model, prepare
from anomaly_repr.scoring.metrics import closed_set_accuracy
from anomaly_repr.tracking.store import load_config, load_weights

PRECISIONS = {"float32": "false", "bfloat16": "true"}  # the `amp` that extraction follows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("train_run_id")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.train_run_id)
    prep = prepare(cfg)
    model, normalizer = load_weights(args.train_run_id, new_model(prep), prep.split)
    split = prep.split
    parts = {"val": split.val, "test": split.test, "train": split.nominal(split.train, prep.data.labels)}
    seconds: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    metrics: dict[str, dict[str, float]] = {}
    accuracy: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, amp in PRECISIONS.items():
            began = time.perf_counter()
            outputs, _ = extract_parts(dataclasses.replace(prep, cfg=prep.cfg.replace(amp=amp)), model, normalizer,
                                       parts)
            seconds[name].append(time.perf_counter() - began)
            metrics[name] = score_outputs(prep, outputs)[1]
            val = outputs["val"]
            accuracy[name] = closed_set_accuracy(val.logits, val.labels)
    print(f"hardware: {hardware()}; run {args.train_run_id} ({cfg.arch}, tta {cfg.tta})")
    print("| scorer | float32 AUROC | bfloat16 AUROC | difference |")
    print("|---|---|---|---|")
    diffs = {}
    for key in sorted(k for k in metrics["float32"] if k.endswith("/auroc")):
        a, b = metrics["float32"][key], metrics["bfloat16"][key]
        diffs[key] = b - a
        print(f"| {key.split('/')[1]} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    worst = max(diffs, key=lambda k: abs(diffs[k]))
    print(f"largest |difference|: {abs(diffs[worst]):.4f} ({worst}); validation accuracy float32 "
          f"{accuracy['float32']:.4f}, bfloat16 {accuracy['bfloat16']:.4f}")
    print("extraction seconds (median of rounds): " + ", ".join(
        f"{name} {statistics.median(values):.1f}" for name, values in seconds.items()))
    print(f"all within 0.002: {bool(np.all(np.abs(list(diffs.values())) < 0.002))}")


if __name__ == "__main__":
    main()
