"""The single-model entry points as functions, `run_train` and `run_evaluate`, and the stages they share.

source -> OpenSetSplit -> train (known classes only) -> extract once per split -> scorers -> metrics,
everything logged to the active MLflow run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import AnomalyReprError, ConfigError, SealedError
from anomaly_repr.extract import Outputs, extract, perturbed_scores, select_epsilon
from anomaly_repr.metrics import anomaly_metrics, closed_set_accuracy
from anomaly_repr.models import OpenSetNet, create_model
from anomaly_repr.oracles import ORACLES
from anomaly_repr.pipeline import Normalizer
from anomaly_repr.report import histogram_figure, roc_figure
from anomaly_repr.scorers import SCORERS, applies, make_scorer
from anomaly_repr.sources import ImageData, load_source
from anomaly_repr.split import OpenSetSplit
from anomaly_repr.tracking import (
    load_config,
    load_weights,
    log_json,
    log_model,
    log_provenance,
    log_weights,
    setup_tracking,
)
from anomaly_repr.train import pick_device, train

log = logging.getLogger(__name__)


def checkpoint_path(run_id: str) -> Path:
    """Per-run checkpoint file; ANOMALY_REPR_CHECKPOINTS moves the folder (default ./checkpoints)."""
    return Path(os.environ.get("ANOMALY_REPR_CHECKPOINTS", "checkpoints")) / f"{run_id}.pt"


PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Prepared:
    """A source, its open-set split and the images of the parts loaded: what every stage reads.

    `prepare(cfg, parts=("train", "val"))` is the sealed view that tuning works on: the source is asked
    for train and validation images only, and `images()` refuses any index of another part.
    """

    cfg: ExperimentConfig
    data: ImageData
    split: OpenSetSplit
    open_labels: np.ndarray  # open-set label of every pooled image (-1 = anomaly)
    loaded: torch.Tensor  # uint8 images of the loaded parts, one row per loaded index
    rows: np.ndarray  # pooled index -> row of `loaded`; -1 for images of parts not loaded

    def images(self, index: np.ndarray) -> torch.Tensor:
        rows = self.rows[index]
        if (rows < 0).any():
            raise SealedError(f"{int((rows < 0).sum())} of the images asked for lie in a part this view does not "
                              "hold (the test split is sealed while tuning)")
        return self.loaded[torch.from_numpy(rows)]

    def training_view(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train indices, validation indices, labels of all pooled images) that `kind` trains on.

        A classifier sees the known classes only (anomalies removed from train and from the
        model-selection validation images); the oracle representation sees every class of the split.
        """
        if kind == "oracle_rep":
            return self.split.train, self.split.val, self.split.all_class_labels(self.data.labels)
        nominal = self.split.nominal
        return nominal(self.split.train, self.data.labels), nominal(self.split.val, self.data.labels), self.open_labels


def prepare(cfg: ExperimentConfig, parts: tuple[str, ...] = PARTS) -> Prepared:
    """Load the source, split it, and read the images of `parts` (a subset of train, val, test)."""
    if not set(parts) <= set(PARTS):
        raise ConfigError(f"unknown parts {sorted(set(parts) - set(PARTS))}; parts are {', '.join(PARTS)}")
    data = load_source(cfg)
    split = OpenSetSplit.make(cfg, data.labels, data.classes)
    index = np.sort(np.concatenate([getattr(split, part) for part in parts]))
    rows = np.full(len(data.labels), -1, dtype=np.int64)
    rows[index] = np.arange(len(index))
    log.info("%s: %d images (%s loaded: %d), known %s, unknown %s, split %s", cfg.dataset, len(data.labels),
             "+".join(parts), len(index), split.known, split.unknown, split.hash)
    return Prepared(cfg, data, split, split.open_labels(data.labels), data.read(index), rows)


def unseal(prep: Prepared) -> Prepared:
    """The same view with the test images read as well: for the one test that follows a search."""
    missing = prep.split.test[prep.rows[prep.split.test] < 0]
    rows = prep.rows.copy()
    rows[missing] = np.arange(len(prep.loaded), len(prep.loaded) + len(missing))
    return dataclasses.replace(prep, loaded=torch.cat([prep.loaded, prep.data.read(missing)]), rows=rows)


def new_model(prep: Prepared, kind: str = "classifier") -> OpenSetNet:
    """The model `prep.cfg` describes, initialised from its seed; `oracle_rep` models have a class for every
    class of the split."""
    cfg = prep.cfg
    n_classes = len(prep.split.known) + (len(prep.split.unknown) if kind == "oracle_rep" else 0)
    decoder_size = prep.data.shape[-1] if cfg.recon_weight > 0 else 0
    with torch.random.fork_rng(devices=[]):  # initial weights follow the seed, and nothing else's random state
        torch.manual_seed(cfg.seed)
        return create_model(cfg.arch, n_classes, prep.data.shape[0], head=cfg.head, godin_h=cfg.godin_h,
                            decoder_size=decoder_size)


EpochHook = Callable[[OpenSetNet, Normalizer, dict[str, float]], None]


def fit(prep: Prepared, run_id: str, kind: str = "classifier", resume: bool = False,
        epoch_hook: EpochHook | None = None, serve: bool = True) -> tuple[OpenSetNet, Normalizer]:
    """Train a model of `kind`; log per-epoch metrics, the model and its weights to the active run.

    `epoch_hook(model, normalizer, row)` runs after each epoch's metrics are logged, with the model in
    that epoch's state (tuning scores and prunes there). `serve=False` logs the weights alone, without
    the servable LoggedModel.
    """
    cfg, device = prep.cfg, pick_device(prep.cfg.device)
    train_index, val_index, all_labels = prep.training_view(kind)
    train_x = prep.images(train_index)
    normalizer = Normalizer.fit(train_x)  # statistics of the training split only
    labels = torch.as_tensor(all_labels, dtype=torch.long)
    model = new_model(prep, kind)

    def on_epoch(row: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        if epoch_hook:
            epoch_hook(model, normalizer, row)

    checkpoint = checkpoint_path(run_id)
    result = train(cfg, model, train_x, labels[train_index], prep.images(val_index), labels[val_index], normalizer,
                   prep.data.hflip, device, checkpoint, resume, on_epoch)
    mlflow.log_metrics({"val/best_acc": result.best_val_acc, "train/best_epoch": result.best_epoch,
                        "train/epochs_run": len(result.history), "train/seconds": result.train_seconds,
                        "train/images_per_second_mean": result.images_per_second})
    mlflow.set_tag("device", str(device))
    if serve:
        log_model(result.model, normalizer, train_x)
    else:
        log_weights(result.model, normalizer)
    checkpoint.unlink(missing_ok=True)  # the run finished: its model is logged, resuming is moot
    return result.model, normalizer


def choose_epsilon(prep: Prepared, model: OpenSetNet, normalizer: Normalizer) -> float:
    """G-ODIN's epsilon, searched on nominal validation images only (no anomaly, no test image); logged."""
    if len(prep.cfg.epsilons) == 1:  # a grid of one value (a tuned epsilon): nothing to search
        epsilon = prep.cfg.epsilons[0]
    else:
        nominal_val = prep.split.nominal(prep.split.val, prep.data.labels)
        epsilon, means = select_epsilon(model, prep.images(nominal_val), normalizer, pick_device(prep.cfg.device),
                                        prep.cfg.epsilons)
        log_json({str(k): v for k, v in means.items()}, "godin/epsilon_search.json")
    mlflow.log_metric("godin/epsilon", epsilon)
    return epsilon


def extract_parts(prep: Prepared, model: OpenSetNet, normalizer: Normalizer,
                  parts: dict[str, np.ndarray]) -> dict[str, Outputs]:
    """Outputs of `model` on each named index set, once each; G-ODIN models also get perturbed scores at
    the epsilon chosen on nominal validation images."""
    device = pick_device(prep.cfg.device)
    model.to(device=device, memory_format=torch.channels_last)
    outputs = {part: extract(model, prep.images(index), prep.open_labels[index], normalizer, device)
               for part, index in parts.items()}
    if any(out.godin_h is None for out in outputs.values()):  # not a G-ODIN model
        return outputs
    epsilon = choose_epsilon(prep, model, normalizer)
    return {part: dataclasses.replace(out, godin_h_perturbed=perturbed_scores(
        model, prep.images(parts[part]), normalizer, device, epsilon)) for part, out in outputs.items()}


def evaluate(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, kind: str = "classifier",
             val_index: np.ndarray | None = None, test_index: np.ndarray | None = None) -> dict[str, float]:
    """Extract outputs once per split, fit every applicable scorer on validation, score the test split.

    `val_index` and `test_index` default to the split's validation and test parts (tuning's class-holdout
    protocol narrows them). A model trained on the anomaly classes (`oracle_rep`) gets the oracles only:
    its logit scores mean nothing. Everything is logged to the active run; returns the metrics.
    """
    parts = {"val": prep.split.val if val_index is None else val_index,
             "test": prep.split.test if test_index is None else test_index}
    outputs = extract_parts(prep, model, normalizer, parts)
    test = outputs["test"]
    metrics = {} if kind == "oracle_rep" else {"test/acc": closed_set_accuracy(test.logits, test.labels)}
    scores = {}
    for name in ORACLES if kind == "oracle_rep" else SCORERS:
        scorer = make_scorer(name, prep.cfg)
        if applies(scorer, test):
            scores[name] = scorer.fit(outputs["val"]).score(test)
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
    log.info("%s test AUROC: %s", kind, "  ".join(f"{k} {v:.4f}" for k, v in aurocs.items()))
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
    kind = mlflow.get_run(train_run_id).data.tags.get("model", "classifier")  # study children carry their kind
    prep = prepare(cfg)
    model, normalizer, stored_split = load_weights(train_run_id, new_model(prep, kind))
    if stored_split.hash != prep.split.hash:
        raise AnomalyReprError(f"the data no longer match train run {train_run_id}: split hash "
                               f"{prep.split.hash} != {stored_split.hash}")
    with mlflow.start_run() as run:
        log_provenance(cfg, prep.split, stage="evaluate")
        mlflow.set_tags({"train_run_id": train_run_id, "model": kind})
        evaluate(prep, model, normalizer, kind)
        return run.info.run_id
