"""The entry points as functions: `run_train`, `run_evaluate` and `run_main`, in the order they run.

source -> OpenSetSplit -> train (known classes only) -> extract once per split -> scorers -> metrics,
everything logged to the active MLflow run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import AnomalyReprError
from anomaly_repr.extract import extract
from anomaly_repr.metrics import anomaly_metrics, closed_set_accuracy
from anomaly_repr.models import OpenSetNet, create_model
from anomaly_repr.pipeline import Normalizer
from anomaly_repr.report import histogram_figure, roc_figure
from anomaly_repr.scorers import CLASSIC_SCORERS, make_scorer
from anomaly_repr.sources import ImageData, load_source
from anomaly_repr.split import OpenSetSplit
from anomaly_repr.tracking import load_config, load_weights, log_model, log_provenance, setup_tracking
from anomaly_repr.train import pick_device, train

log = logging.getLogger(__name__)


def checkpoint_path(run_id: str) -> Path:
    """Per-run checkpoint file; ANOMALY_REPR_CHECKPOINTS moves the folder (default ./checkpoints)."""
    return Path(os.environ.get("ANOMALY_REPR_CHECKPOINTS", "checkpoints")) / f"{run_id}.pt"


@dataclass(frozen=True)
class Prepared:
    """A loaded source and its open-set split: what every stage reads."""

    cfg: ExperimentConfig
    data: ImageData
    split: OpenSetSplit
    open_labels: np.ndarray  # open-set label of every pooled image (-1 = anomaly)

    def images(self, index: np.ndarray) -> torch.Tensor:
        return self.data.images[torch.from_numpy(index)]

    @property
    def train_index(self) -> np.ndarray:  # known-class training images
        return self.split.nominal(self.split.train, self.data.labels)

    @property
    def val_index(self) -> np.ndarray:  # known-class validation images: the model-selection set
        return self.split.nominal(self.split.val, self.data.labels)


def prepare(cfg: ExperimentConfig) -> Prepared:
    data = load_source(cfg)
    split = OpenSetSplit.make(cfg, data.labels, data.classes)
    log.info("%s: %d images, known %s, unknown %s, split %s", cfg.dataset, len(data.labels), split.known,
             split.unknown, split.hash)
    return Prepared(cfg, data, split, split.open_labels(data.labels))


def new_model(prep: Prepared) -> OpenSetNet:
    return create_model(prep.cfg.arch, len(prep.split.known), prep.data.images.shape[1])


def fit(prep: Prepared, run_id: str, resume: bool = False) -> tuple[OpenSetNet, Normalizer]:
    """Train on the known-class training images; log per-epoch metrics, the model and its weights."""
    cfg, device = prep.cfg, pick_device(prep.cfg.device)
    train_x = prep.images(prep.train_index)
    normalizer = Normalizer.fit(train_x)  # statistics of the training split only
    labels = torch.as_tensor(prep.open_labels, dtype=torch.long)

    def on_epoch(row: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    checkpoint = checkpoint_path(run_id)
    result = train(cfg, new_model(prep), train_x, labels[prep.train_index], prep.images(prep.val_index),
                   labels[prep.val_index], normalizer, prep.data.hflip, device, checkpoint, resume, on_epoch)
    mlflow.log_metrics({"val/best_acc": result.best_val_acc, "train/best_epoch": result.best_epoch,
                        "train/epochs_run": len(result.history), "train/seconds": result.train_seconds,
                        "train/images_per_second_mean": result.images_per_second})
    mlflow.set_tag("device", str(device))
    log_model(result.model, normalizer, train_x)
    checkpoint.unlink(missing_ok=True)  # the run finished: its model is logged, resuming is moot
    return result.model, normalizer


def evaluate(prep: Prepared, model: OpenSetNet, normalizer: Normalizer) -> dict[str, float]:
    """Extract outputs once per split, score the test split with every classic scorer, log it all."""
    device = pick_device(prep.cfg.device)
    model.to(device=device, memory_format=torch.channels_last)
    outputs = {part: extract(model, prep.images(index), prep.open_labels[index], normalizer, device)
               for part, index in (("val", prep.split.val), ("test", prep.split.test))}
    test = outputs["test"]
    metrics = {"test/acc": closed_set_accuracy(test.logits, test.labels)}
    scores = {}
    for name in CLASSIC_SCORERS:
        scores[name] = make_scorer(name).fit(outputs["val"]).score(test)
        metrics.update({f"test/{name}/{k}": v for k, v in anomaly_metrics(scores[name], test.is_anomaly).items()})
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for part, out in outputs.items():
            out.save(Path(tmp) / f"{part}.npz")
        np.savez_compressed(Path(tmp) / "test_scores.npz", is_anomaly=test.is_anomaly, **scores)
        mlflow.log_artifacts(tmp, "outputs")
    aurocs = {name: metrics[f"test/{name}/auroc"] for name in scores}
    mlflow.log_figure(roc_figure(scores, test.is_anomaly, aurocs), "figures/roc.png")
    mlflow.log_figure(histogram_figure(scores, test.is_anomaly), "figures/score_histograms.png")
    log.info("test/acc %.4f  %s", metrics["test/acc"],
             "  ".join(f"{k} {v:.4f}" for k, v in aurocs.items()))
    return metrics


def run_train(cfg: ExperimentConfig, resume_run_id: str = "") -> str:
    """`train`: train and log a model. With resume_run_id, continue that run from its checkpoint."""
    setup_tracking()
    if resume_run_id:
        cfg = load_config(resume_run_id)
        if not checkpoint_path(resume_run_id).exists():
            raise AnomalyReprError(f"no checkpoint for run {resume_run_id} at {checkpoint_path(resume_run_id)}")
    prep = prepare(cfg)
    with mlflow.start_run(run_id=resume_run_id or None) as run:
        if not resume_run_id:
            log_provenance(cfg, prep.split, stage="train")
        fit(prep, run.info.run_id, resume=bool(resume_run_id))
        return run.info.run_id


def run_evaluate(train_run_id: str) -> str:
    """`evaluate`: extract, score and log a trained model in a new run that points to its train run."""
    setup_tracking()
    cfg = load_config(train_run_id)
    prep = prepare(cfg)
    model, normalizer, stored_split = load_weights(train_run_id, new_model(prep))
    if stored_split.hash != prep.split.hash:
        raise AnomalyReprError(f"the data no longer match train run {train_run_id}: split hash "
                               f"{prep.split.hash} != {stored_split.hash}")
    with mlflow.start_run() as run:
        log_provenance(cfg, prep.split, stage="evaluate")
        mlflow.set_tag("train_run_id", train_run_id)
        evaluate(prep, model, normalizer)
        return run.info.run_id


def run_main(cfg: ExperimentConfig) -> str:
    """`main`: train, then evaluate, in one run."""
    setup_tracking()
    prep = prepare(cfg)
    with mlflow.start_run() as run:
        log_provenance(cfg, prep.split, stage="main")
        model, normalizer = fit(prep, run.info.run_id)
        evaluate(prep, model, normalizer)
        return run.info.run_id
