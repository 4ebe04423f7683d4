"""Named training recipes (`preset`): values for the fields of `PRESET_FIELDS`, under any field given explicitly
(`ExperimentConfig.create`).

Chosen on validation data of CIFAR-10 split 0 (bench/fast_recipe_search.py, BENCHMARKS.md "A strong classifier
in minutes"). `fast`: the wide, shallow fastcnn with patch whitening, batch 512, a short one-cycle schedule at a
high learning rate, after Jordan 2024 (airbench); the weights' moving average did not help on validation and
stays off, and so does label smoothing (it shrinks the logits' spread, and max-logit and energy scores lose
separation). Test-time augmentation (flip_translate) raised validation accuracy and max-logit AUROC.
"""

from __future__ import annotations

from typing import Any

PRESET_FIELDS = ("arch", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs",
                 "patience", "label_smoothing", "ema_decay", "augment", "tta")
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "fast": {"arch": "fastcnn", "epochs": 15, "batch_size": 512, "lr": 0.8, "momentum": 0.9, "weight_decay": 5e-4,
             "schedule": "onecycle", "warmup_epochs": 0.0, "patience": 0, "label_smoothing": 0.0, "ema_decay": 0.0,
             "augment": "crop_flip", "tta": "flip_translate"},
}
