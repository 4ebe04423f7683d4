"""The entry points as functions: `run_train`, `run_evaluate` and `run_reproduce`, in the order they run.

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
from anomaly_repr.oracles import ORACLES
from anomaly_repr.pipeline import Normalizer
from anomaly_repr.report import auroc_bar_chart, auroc_table, histogram_figure, roc_figure, summarise, to_markdown
from anomaly_repr.scorers import CLASSIC_SCORERS, make_scorer
from anomaly_repr.sources import ImageData, load_source
from anomaly_repr.split import OpenSetSplit
from anomaly_repr.tracking import git_commit, load_config, load_weights, log_model, log_provenance, setup_tracking
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

    def training_view(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train indices, validation indices, labels of all pooled images) that `kind` trains on.

        A classifier sees the known classes only (anomalies removed from train and from the
        model-selection validation images); the oracle representation sees every class of the split.
        """
        if kind == "oracle_rep":
            return self.split.train, self.split.val, self.split.all_class_labels(self.data.labels)
        nominal = self.split.nominal
        return nominal(self.split.train, self.data.labels), nominal(self.split.val, self.data.labels), self.open_labels


def prepare(cfg: ExperimentConfig) -> Prepared:
    data = load_source(cfg)
    split = OpenSetSplit.make(cfg, data.labels, data.classes)
    log.info("%s: %d images, known %s, unknown %s, split %s", cfg.dataset, len(data.labels), split.known,
             split.unknown, split.hash)
    return Prepared(cfg, data, split, split.open_labels(data.labels))


# What each model of a study is, in the order `reproduce` trains them.
MODEL_KINDS = {
    "classifier": "trained on the known classes: the detector under study",
    "oracle_rep": "trained on all classes of the split: the oracle representation (Q2)",
}


def new_model(prep: Prepared, kind: str = "classifier") -> OpenSetNet:
    n_classes = len(prep.split.known) + (len(prep.split.unknown) if kind == "oracle_rep" else 0)
    return create_model(prep.cfg.arch, n_classes, prep.data.images.shape[1])


def fit(prep: Prepared, run_id: str, kind: str = "classifier", resume: bool = False) -> tuple[OpenSetNet, Normalizer]:
    """Train a model of `kind`; log per-epoch metrics, the model and its weights to the active run."""
    cfg, device = prep.cfg, pick_device(prep.cfg.device)
    train_index, val_index, all_labels = prep.training_view(kind)
    train_x = prep.images(train_index)
    normalizer = Normalizer.fit(train_x)  # statistics of the training split only
    labels = torch.as_tensor(all_labels, dtype=torch.long)

    def on_epoch(row: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    checkpoint = checkpoint_path(run_id)
    result = train(cfg, new_model(prep, kind), train_x, labels[train_index], prep.images(val_index),
                   labels[val_index], normalizer, prep.data.hflip, device, checkpoint, resume, on_epoch)
    mlflow.log_metrics({"val/best_acc": result.best_val_acc, "train/best_epoch": result.best_epoch,
                        "train/epochs_run": len(result.history), "train/seconds": result.train_seconds,
                        "train/images_per_second_mean": result.images_per_second})
    mlflow.set_tag("device", str(device))
    log_model(result.model, normalizer, train_x)
    checkpoint.unlink(missing_ok=True)  # the run finished: its model is logged, resuming is moot
    return result.model, normalizer


def scorers_for(kind: str) -> tuple[str, ...]:
    """Logit scores mean nothing for a model that was trained on the anomaly classes: oracles only."""
    return ORACLES if kind == "oracle_rep" else CLASSIC_SCORERS + ORACLES


def evaluate(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, kind: str = "classifier") -> dict[str, float]:
    """Extract outputs once per split, fit every scorer on validation and score the test split; log it all."""
    device = pick_device(prep.cfg.device)
    model.to(device=device, memory_format=torch.channels_last)
    outputs = {part: extract(model, prep.images(index), prep.open_labels[index], normalizer, device)
               for part, index in (("val", prep.split.val), ("test", prep.split.test))}
    test = outputs["test"]
    metrics = {} if kind == "oracle_rep" else {"test/acc": closed_set_accuracy(test.logits, test.labels)}
    scores = {}
    for name in scorers_for(kind):
        scores[name] = make_scorer(name, prep.cfg).fit(outputs["val"]).score(test)
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


def run_reproduce(cfg: ExperimentConfig, seeds: list[int], splits: list[int]) -> str:
    """`reproduce` (and `main`): a parent run with a nested child run per model, seed and split.

    Each child trains and evaluates one model of MODEL_KINDS; the parent gathers
    `test/<model>/<scorer>/<metric>` (mean, and `_std` over repeats when there are several), the gaps
    `test/q1_gap` and `test/q2_gap`, the AUROC table (CSV, Markdown) and the AUROC bar chart.
    """
    setup_tracking()
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in MODEL_KINDS}
    with mlflow.start_run(run_name="reproduce") as parent:
        params = cfg.to_params() | {"seed": ",".join(map(str, seeds)), "split": ",".join(map(str, splits))}
        existing = mlflow.get_run(parent.info.run_id).data.params
        mlflow.log_params({k: v for k, v in params.items() if k not in existing})
        mlflow.set_tags({"stage": "reproduce", "dataset": cfg.dataset, "arch": cfg.arch, "git_commit": git_commit(),
                         "seeds": params["seed"], "splits": params["split"]})
        for split_index in splits:
            for seed in seeds:
                one = cfg.replace(split=split_index, seed=seed)
                prep = prepare(one)
                for kind in MODEL_KINDS:
                    with mlflow.start_run(run_name=f"{kind} split={split_index} seed={seed}", nested=True) as child:
                        log_provenance(one, prep.split, stage=kind)
                        mlflow.set_tag("model", kind)
                        model, normalizer = fit(prep, child.info.run_id, kind)
                        results[kind].append(evaluate(prep, model, normalizer, kind))
        summary = summarise(results)
        mlflow.log_metrics(summary)
        table = auroc_table(results)
        mlflow.log_text(table.to_csv(), "results/auroc_table.csv")
        mlflow.log_text(to_markdown(table), "results/auroc_table.md")
        mlflow.log_figure(auroc_bar_chart(results, title=f"{cfg.dataset} AUROC"), "figures/auroc_by_method.png")
        log.info("q1_gap %.4f  q2_gap %.4f\n%s", summary["test/q1_gap"], summary["test/q2_gap"], to_markdown(table))
        return parent.info.run_id
