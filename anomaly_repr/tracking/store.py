"""MLflow plumbing, the one layer that logs (where runs go is `setup.py`'s): how runs end, what every run
records about its origin, and the results that the computing stages return (training summaries,
evaluations, figures, models)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import torch
from matplotlib.figure import Figure
from mlflow.models import infer_signature

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.data.split import OpenSetSplit
from anomaly_repr.engine.device import pick_device
from anomaly_repr.engine.evaluation import Evaluation
from anomaly_repr.engine.workflow import Prepared
from anomaly_repr.errors import AnomalyReprError
from anomaly_repr.models.backbones import OpenSetNet
from anomaly_repr.models.served import PixelsToLogits
from anomaly_repr.tracking.hardware import machine
from anomaly_repr.tracking.lineage import log_dataset_inputs, log_far_inputs
from anomaly_repr.tracking.setup import TrackingError

log = logging.getLogger(__name__)
EPOCH_LOG_ATTEMPTS = 4  # sends of one epoch's metrics when the server's answer breaks off (1, 2, 4 s apart)
END_ATTEMPTS = 4  # writes of a run's final status while another process holds a SQLite store's lock


def end_run(status: str) -> None:
    """`mlflow.end_run(status)`, the status write retried (1, 2, 4 s apart) while a SQLite store answers
    "database is locked": local workers share one file, and when a stopped driver and its workers end their
    runs together one of them can wait past SQLite's timeout, which would leave its run RUNNING."""
    active = mlflow.active_run()
    try:
        mlflow.end_run(status)
        return
    except mlflow.exceptions.MlflowException as exc:
        if active is None or exc.error_code != "TEMPORARILY_UNAVAILABLE":
            raise
        error = exc
    for attempt in range(1, END_ATTEMPTS):  # mlflow.end_run has already taken the run off its stack
        time.sleep(2 ** (attempt - 1))
        try:
            mlflow.MlflowClient().set_terminated(active.info.run_id, status)
            return
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "TEMPORARILY_UNAVAILABLE":
                raise
            error = exc
    raise error


@contextlib.contextmanager
def ending_run(**start: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run(**start)` whose run ends FINISHED, FAILED on an error, and KILLED on Ctrl-C or
    SIGTERM (which the CLI raises as KeyboardInterrupt), where MLflow's own context would say FAILED."""
    run = mlflow.start_run(**start)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        end_run(status)


def run_name(cfg: ExperimentConfig, model: str = "") -> str:
    """Short, and distinct where the UI's name column cuts it: the model (method) first, then split/seed."""
    return f"{model or cfg.method} {cfg.split}/{cfg.seed}"


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def package_versions() -> dict[str, str]:
    names = ["anomaly-repr", "torch", "torchvision", "mlflow", "optuna", "scikit-learn", "numpy"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def log_json(obj: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=1), artifact_file)


def log_new_params(params: dict[str, str]) -> None:
    """Log the params the active run does not have yet: `mlflow run` logs its own, shell-quoted."""
    run = mlflow.active_run()
    if run is None:
        raise AnomalyReprError("log_new_params needs an active MLflow run")
    existing = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def log_provenance(prep: Prepared, stage: str, parts: Sequence[str] = ("train", "val", "test")) -> None:
    """Config as params and as `config.json`, split manifest and versions as artifacts, compare-view tags,
    the split `parts` the run reads as dataset inputs, and the files the source passed over.

    `mlflow run` logs the entry point's parameters itself, shell-quoted (an empty string becomes "''"),
    so params it already logged are left as they are; `config.json` is the exact config.
    """
    cfg, split = prep.cfg, prep.split
    log_new_params(cfg.to_params())
    log_json(dataclasses.asdict(cfg), "config.json")
    mlflow.set_tags({
        "stage": stage, "dataset": cfg.dataset, "split": str(cfg.split), "arch": cfg.arch, "seed": str(cfg.seed),
        "method": cfg.method, "model": cfg.method,
        "git_commit": git_commit(), "machine": machine(str(pick_device(cfg.device))), "split_hash": split.hash,
        "known_classes": ",".join(split.known),
        "unknown_classes": ",".join(split.unknown),
    })
    log_json(split.to_dict(), "split/manifest.json")
    log_json(package_versions(), "environment/versions.json")
    log_dataset_inputs(prep, parts)
    # Counts that never change within a run: tags, not one-point metric charts in the UI's "Model metrics".
    mlflow.set_tags({"data/skipped_files": str(len(prep.data.skipped)),
                     "data/bad_images": str(len(prep.data.left_out))})
    if prep.data.skipped:
        mlflow.log_text("\n".join(prep.data.skipped) + "\n", "split/skipped_files.txt")
    if prep.data.left_out:
        mlflow.log_text("\n".join(prep.data.left_out) + "\n", "split/bad_images.txt")


def log_weights(model: OpenSetNet, normalizer: Normalizer) -> None:
    """`model/weights.pt` (a plain state dict) and `model/normalizer.json`: what `load_weights` reads back
    with `weights_only=True`."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "weights.pt")
        mlflow.log_artifact(str(Path(tmp) / "weights.pt"), "model")
    log_json(normalizer.to_dict(), "model/normalizer.json")


def log_model(model: OpenSetNet, normalizer: Normalizer, example: torch.Tensor) -> str:
    """Log the model twice over: weights for our own reloads (`log_weights`), and an MLflow LoggedModel
    for serving, in MLflow's pt2 format (torch.export, no pickle) with a signature built from numpy
    arrays. Returns the LoggedModel's id.
    """
    # A copy: the caller's model stays as it is. Contiguous (not channels-last) weights: the pt2 writer
    # takes a non-contiguous weight for a slice of a larger tensor and warns ("No complete tensor found").
    cpu_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
    log_weights(cpu_model, normalizer)
    served = PixelsToLogits(cpu_model, normalizer).eval()
    pixels = example[:4].float().numpy()
    with torch.no_grad():
        logits = served(torch.from_numpy(pixels)).numpy()
        columns = served.columns(torch.from_numpy(pixels))
    info = mlflow.pytorch.log_model(served, name="model", signature=infer_signature(pixels, logits),
                                    input_example=pixels, serialization_format="pt2", metadata={"outputs": columns},
                                    # pt2 needs torch alone; naming it skips MLflow's slow inference step
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_id


def log_figures(figures: dict[str, Figure]) -> None:
    """Log each figure at its artifact path, then close it: a long study must not hold them all."""
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plt.close(figure)


def log_epoch(row: dict[str, float]) -> None:
    """One epoch's curves. MLflow's client retries a request the server never answered, but not one whose
    answer broke off (a server killed while replying: "Connection broken: IncompleteRead"); an epoch's
    metrics are sent again then, which the store takes as the same values (metrics are keyed by name,
    step, timestamp and value)."""
    metrics = {k: v for k, v in row.items() if k != "epoch"}
    timestamp = int(time.time() * 1000)  # one timestamp for every try: a resent value is the same row
    for attempt in range(EPOCH_LOG_ATTEMPTS):
        try:
            mlflow.log_metrics(metrics, step=int(row["epoch"]), timestamp=timestamp)
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == EPOCH_LOG_ATTEMPTS - 1 or "Connection broken" not in str(exc):
                raise
            log.warning("logging epoch %d again: the tracking server's answer broke off", int(row["epoch"]))
            time.sleep(2.0 ** attempt)


def logged_epochs(run_id: str) -> set[int]:
    """The epochs whose row `log_epoch` has logged to the run (every row holds the learning rate)."""
    return {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "train/lr")}


# outputs/test_scores.npz: besides `is_anomaly` and one array per scorer, `correct` (OSCR's known images
# classified right) and `ood:<set>:<scorer>`, a far set's images' scores.
CORRECT, FAR_PREFIX = "correct", "ood:"


def log_evaluation(evaluation: Evaluation) -> None:
    """An evaluation's metrics (calibration's included), calibration records, outputs of every
    split and the test scores as npz artifacts, and the figures."""
    mlflow.log_metrics(evaluation.metrics | evaluation.calibration.metrics)
    mlflow.set_tag("extract_precision", evaluation.precision)
    for path, record in evaluation.calibration.records.items():
        log_json(record, path)
    test = evaluation.outputs["test"]
    log_far_inputs(evaluation.far_sets)
    for found in evaluation.far_sets:
        mlflow.set_tags({f"ood/{found.name}/images": str(len(found.images)),
                         f"ood/{found.name}/skipped_files": str(len(found.skipped)),
                         f"ood/{found.name}/bad_images": str(len(found.left_out))})
        if found.left_out:
            mlflow.log_text("\n".join(found.left_out) + "\n", f"ood/{found.name}/bad_images.txt")
    far = {f"{FAR_PREFIX}{name}:{scorer}": s for name, by in evaluation.far_scores.items() for scorer, s in by.items()}
    known = {} if evaluation.correct is None else {CORRECT: evaluation.correct}
    with tempfile.TemporaryDirectory() as tmp:
        for part, out in evaluation.outputs.items():
            out.save(Path(tmp) / f"{part}.npz")
        arrays = {"is_anomaly": test.is_anomaly, **known, **far, **evaluation.scores}
        np.savez_compressed(Path(tmp) / "test_scores.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub
        mlflow.log_artifacts(tmp, "outputs")
    log_figures(evaluation.figures)


def load_config(run_id: str) -> ExperimentConfig:
    """The exact config of a run, from its `config.json` artifact. Runs logged before `method` was a field
    name their method in the `model` tag, which is read instead."""
    try:
        fields = mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json")
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot read the config of run {run_id!r}: {exc.message}") from None
    if "method" not in fields:
        fields["method"] = mlflow.get_run(run_id).data.tags.get("model", "")
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ExperimentConfig)})
    if unknown:
        raise TrackingError(f"the config of run {run_id} has fields this version does not know: {', '.join(unknown)} "
                            "(it was logged by a newer anomaly-repr, or edited)")
    return ExperimentConfig(**fields)


def load_weights(run_id: str, model: OpenSetNet, split: OpenSetSplit,
                 who: str = "train run") -> tuple[OpenSetNet, Normalizer]:
    """Weights and normaliser of a run trained on `split`, loaded without unpickling anything. A run trained
    on other data (split manifest first, so a class count that differs is named as such), or one without
    weights (it crashed or is still running), is refused in one line."""
    who = f"{who} {run_id}"
    try:
        manifest = mlflow.artifacts.load_dict(f"runs:/{run_id}/split/manifest.json")
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"{who} has no split manifest: it is not a train run of this project") from None
    split.check_trained_on(OpenSetSplit.from_dict(manifest), who)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            weights = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/weights.pt",
                                                          dst_path=tmp)
            norm = mlflow.artifacts.load_dict(f"runs:/{run_id}/model/normalizer.json")
        except mlflow.exceptions.MlflowException:
            status = mlflow.get_run(run_id).info.status
            raise TrackingError(f"{who} has no model weights (status {status}): it crashed or is still running; "
                                f"`train --resume {run_id}` finishes it") from None
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except RuntimeError as exc:  # another architecture or head than its config says
            detail = [line.strip() for line in str(exc).splitlines() if line.strip()][-1]
            raise TrackingError(f"the weights of {who} do not fit its model: {detail}") from None
    return model, Normalizer(torch.tensor(norm["mean"]), torch.tensor(norm["std"]))
