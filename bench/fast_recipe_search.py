"""Candidate recipes for `preset=fast`, compared on validation data only (the test split stays sealed).

Usage:
  python bench/fast_recipe_search.py "arch=fastcnn,batch_size=512,lr=0.4,epochs=10" "...,label_smoothing=0.1" ...

Each candidate is a comma-separated list of config fields (on top of the defaults, no preset). The images of
CIFAR-10 split 0 (train and validation parts only: `prepare(..., parts=("train", "val"))` refuses a test
image) are loaded once; every candidate then trains in this process, one after another, and the script
prints per candidate: the best validation accuracy and its epoch, the validation max-logit and energy AUROC
of the kept model (nominal against anomaly validation images: accuracy and detection together: a recipe
is chosen for detection, not accuracy alone), both again with test-time augmentation (flip_translate), the
training seconds and images/s.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from common import SPLIT0_NAMES, cifar10_folder, hardware

from anomaly_repr.config import FIELDS, ExperimentConfig, parse_value
from anomaly_repr.engine.evaluation import classic_val_aurocs
from anomaly_repr.engine.workflow import Fitted, Prepared, fit, prepare
from anomaly_repr.scoring.metrics import anomaly_metrics, closed_set_accuracy
from anomaly_repr.scoring.outputs import extract, tta_views
from anomaly_repr.scoring.scorers import max_logit


def candidate(text: str) -> dict:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {name.strip(): parse_value(FIELDS[name.strip()], value.strip()) for name, value in pairs}


def main(argv: list[str]) -> None:
    base = ExperimentConfig(dataset="imagefolder", data_root=str(cifar10_folder()), known_classes=SPLIT0_NAMES,
                            patience=0, val_auroc_every=0)
    prep = prepare(base, parts=("train", "val"))
    print(f"hardware: {hardware()}")
    print("| candidate | val acc (epoch) | val max_logit AUROC | val energy AUROC | with tta=flip_translate: val acc "
          "/ max_logit AUROC | train s | images/s |")
    print("|---|---|---|---|---|---|---|")
    for text in argv:
        cfg = base.replace(**candidate(text))
        with tempfile.TemporaryDirectory() as tmp:
            fitted = fit(dataclasses.replace(prep, cfg=cfg), Path(tmp) / "ckpt.pt")
        aurocs = classic_val_aurocs(prep, fitted.model, fitted.normalizer)
        with_tta = tta_reading(prep, fitted)
        r = fitted.result
        print(f"| {text} | {r.best_val_acc:.4f} ({r.best_epoch}) | {aurocs['val/max_logit/auroc']:.4f} | "
              f"{aurocs['val/energy/auroc']:.4f} | {with_tta} | {r.train_seconds:.0f} | {r.images_per_second:.0f} |",
              flush=True)


def tta_reading(prep: Prepared, fitted: Fitted) -> str:
    """Validation accuracy and max-logit AUROC of the kept model under tta=flip_translate."""
    val = prep.split.val
    outputs = extract(fitted.model, prep.images(val), prep.open_labels[val], fitted.normalizer, fitted.device,
                      views=tta_views("flip_translate", prep.data.hflip))
    nominal = outputs.rows(~outputs.is_anomaly)
    acc = closed_set_accuracy(nominal.logits, nominal.labels)
    auroc = anomaly_metrics(max_logit(outputs.logits), outputs.is_anomaly)["auroc"]
    return f"{acc:.4f} / {auroc:.4f}"


if __name__ == "__main__":
    main(sys.argv[1:])
