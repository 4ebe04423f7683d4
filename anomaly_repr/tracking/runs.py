"""The single-model entry points as MLflow runs: `train` and `evaluate`, and the logged stages that
studies and tuning share (`train_logged`, `evaluate_logged`).

The computing stages (`workflow.fit`, `evaluation.evaluate`) return values; here they are logged to the
active run through `tracking`.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch

from anomaly_repr.config import ExperimentConfig, parse_ood_sets
from anomaly_repr.data.ood import check_folders
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.engine.evaluation import Evaluation, classic_val_aurocs, evaluate, evaluated_parts
from anomaly_repr.engine.workflow import (
    DEFAULT_CHECKPOINTS,
    EpochHook,
    Fitted,
    Prepared,
    checkpoint_path,
    fit,
    fit_member,
    new_model,
    prepare,
    training_data,
)
from anomaly_repr.errors import AnomalyReprError, ConfigError
from anomaly_repr.methods import method_for
from anomaly_repr.models.backbones import OpenSetNet
from anomaly_repr.tracking.setup import setup_tracking
from anomaly_repr.tracking.store import (
    ending_run,
    load_config,
    load_weights,
    log_epoch,
    log_evaluation,
    log_figures,
    log_json,
    log_model,
    log_new_params,
    log_provenance,
    log_weights,
    logged_epochs,
    run_name,
)

log = logging.getLogger(__name__)


def epoch_logger(prep: Prepared, analyse: bool = True, then: EpochHook | None = None) -> EpochHook:
    """Log each epoch's row to the active run, with every `val_auroc_every` epochs (when `analyse`) the
    classic scorers' validation AUROC; then `then`."""
    every = prep.cfg.val_auroc_every if analyse and prep.method.scores_logits else 0
    logged: dict[str, set[int]] = {}  # per run (a member's epochs go to the member's run)

    def on_epoch(model: OpenSetNet, normalizer: Normalizer, row: dict[str, float],
                 val_logits: torch.Tensor | None) -> None:
        run_id, epoch = mlflow.active_run().info.run_id, int(row["epoch"])  # type: ignore[union-attr]
        if run_id not in logged:
            logged[run_id] = logged_epochs(run_id)
        # A process killed after logging an epoch but before its checkpoint repeats that epoch when resumed
        # (the same values, up to GPU nondeterminism): its row is in the run already, and a second one would
        # double the curve's point.
        if epoch in logged[run_id]:
            log.info("epoch %d is logged already in run %s: not logged again", epoch, run_id)
        else:
            if every and epoch % every == 0 and val_logits is not None:  # not in stages that do not select
                row = row | classic_val_aurocs(prep, model, normalizer, val_logits)
            log_epoch(row)
            logged[run_id].add(epoch)
        if then:
            then(model, normalizer, row, val_logits)

    return on_epoch


def train_logged(prep: Prepared, run_id: str, checkpoints: Path, resume: bool = False,
                 epoch_hook: EpochHook | None = None, serve: bool = True, analyse: bool = True) -> Fitted:
    """Train the config's method in the active run: per-epoch metrics as they come, then the summary, and the
    model (the servable LoggedModel, or with `serve=False` the weights alone). `epoch_hook` runs after each
    epoch's metrics are logged. With `analyse`, every `val_auroc_every` epochs the classic scorers'
    validation AUROC is logged beside them (analysis only; a tuning trial logs its own objective instead).
    The checkpoint, `checkpoints`/<run_id>.pt, is removed once the model is logged."""
    on_epoch = epoch_logger(prep, analyse, epoch_hook)
    checkpoint = checkpoint_path(checkpoints, run_id)
    members = MemberRuns(run_id, on_epoch) if prep.method.member_configs() else None
    fitted = fit(prep, checkpoint, resume, on_epoch, members, on_figures=log_figures)
    mlflow.log_metrics(fitted.summary())
    mlflow.set_tags({"device": str(fitted.device), "precision": fitted.result.precision.removeprefix("torch.")})
    if serve:
        log_model(fitted.model, fitted.normalizer, fitted.example)
    else:
        log_weights(fitted.model, fitted.normalizer)
    checkpoint.unlink(missing_ok=True)  # the run finished: its model is logged, resuming is moot
    return fitted


class MemberRuns:
    """Each member of a method that trains members one by one as a nested run of the method's run: its
    config, per-epoch curves, summary and weights. A member interrupted earlier reopens its own run."""

    def __init__(self, run_id: str, on_epoch: EpochHook):
        self.run_id, self.on_epoch = run_id, on_epoch

    @contextmanager
    def member(self, index: int, cfg: ExperimentConfig) -> Iterator[EpochHook]:
        client = mlflow.MlflowClient()
        experiment = client.get_run(self.run_id).info.experiment_id
        earlier = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{self.run_id}' and "
                                                   f"tags.member = '{index}'")
        # The tags go in with the run's creation: a run found without its member tag would be trained again.
        tags = None if earlier else {"stage": "member", "member": str(index), "method": cfg.method,
                                     "seed": str(cfg.seed)}
        with ending_run(run_id=earlier[0].info.run_id if earlier else None, run_name=f"{cfg.method} member {index}",
                        parent_run_id=self.run_id, experiment_id=experiment, nested=mlflow.active_run() is not None,
                        tags=tags):
            if not earlier:
                log_new_params(cfg.to_params())
            mlflow.set_tag("worker", f"{socket.gethostname()}:{os.getpid()}")
            yield self.on_epoch

    def finished(self, index: int, fitted: Fitted) -> None:
        mlflow.log_metrics(fitted.summary())
        log_weights(fitted.model, fitted.normalizer)

    def elsewhere(self, prep: Prepared, indices: list[int], checkpoint: Path,
                  workers: int) -> Iterator[tuple[int, dict, dict]]:
        """Members in `workers` processes (spawned: each loads the data itself), logging to their own runs."""
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_member_process, prep.cfg, self.run_id, index, str(checkpoint),
                                   mlflow.get_tracking_uri()) for index in indices]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BrokenProcessPool:  # a member's process died (killed, out of memory)
                # The pool stops the other members' processes on some paths only (seen: one trained on and
                # kept this process from exiting); stop them, then end the runs they leave RUNNING.
                for child in multiprocessing.active_children():
                    child.terminate()
                for child in multiprocessing.active_children():
                    child.join(timeout=30)
                self.fail_running("its process died")
                raise AnomalyReprError(f"an ensemble member's process died (killed, or out of memory); the members "
                                       f"that finished are kept: `train --resume {self.run_id}` trains the rest") \
                    from None
            except BaseException:
                pool.shutdown(cancel_futures=True)  # a member failed: the queued ones do not start
                raise

    def fail_running(self, why: str) -> None:
        """End the member runs that their processes left RUNNING (a process that died cannot end its own)."""
        client = mlflow.MlflowClient()
        experiment = client.get_run(self.run_id).info.experiment_id
        for run in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{self.run_id}' and "
                                                    "attributes.status = 'RUNNING'"):
            client.set_tag(run.info.run_id, "failure", why)
            client.set_terminated(run.info.run_id, "FAILED")


def _member_process(cfg: ExperimentConfig, run_id: str, index: int, checkpoint: str,
                    tracking_uri: str) -> tuple[int, dict, dict]:
    """A worker process's member: its own data, training and nested run; (index, weights, result fields)."""
    mlflow.set_tracking_uri(tracking_uri)
    prep = prepare(cfg)
    result = fit_member(prep, training_data(prep), index, Path(checkpoint), MemberRuns(run_id, epoch_logger(prep)))
    return index, {k: v.cpu() for k, v in result.model.state_dict().items()}, result.summary_fields()


def evaluate_logged(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, val_index: np.ndarray | None = None,
                    test_index: np.ndarray | None = None) -> Evaluation:
    """`evaluation.evaluate`, logged to the active run."""
    evaluation = evaluate(prep, model, normalizer, val_index, test_index)
    log_evaluation(evaluation)
    return evaluation


def run_train(cfg: ExperimentConfig | None, resume_run_id: str = "", changes: dict | None = None,
              checkpoints: Path = DEFAULT_CHECKPOINTS) -> str:
    """`train`: train and log a model, checkpointing to `checkpoints`/<run_id>.pt. With resume_run_id,
    continue that run from its checkpoint with its logged config, where `changes` may set the fields its
    method lets a resumed run change."""
    setup_tracking()
    if resume_run_id:
        cfg = load_config(resume_run_id)
        if not checkpoint_path(checkpoints, resume_run_id).exists():
            raise AnomalyReprError(f"no checkpoint for run {resume_run_id} at "
                                   f"{checkpoint_path(checkpoints, resume_run_id)}")
        allowed = method_for(cfg).resume_fields
        refused = [f"--{name}" for name in changes or {} if name not in allowed]
        if refused:
            raise ConfigError(f"--resume continues a run with its logged config; {cfg.method} runs may change "
                              f"{', '.join(allowed) or 'nothing'}: leave out {', '.join(refused)}")
        cfg = cfg.replace(**(changes or {}))
    assert cfg is not None
    prep = prepare(cfg)
    with ending_run(run_id=resume_run_id or None, run_name=run_name(cfg)) as run:
        if not resume_run_id:
            log_provenance(prep, stage="train", parts=("train", "val"))
        elif changes:  # params keep their first values (MLflow's are immutable); config.json holds the new ones
            log_json(dataclasses.asdict(cfg), "config.json")
            mlflow.set_tags({f"resumed_with.{name}": str(value) for name, value in changes.items()})
        train_logged(prep, run.info.run_id, checkpoints, resume=bool(resume_run_id))
        return run.info.run_id


def run_evaluate(train_run_id: str, tta: str = "", **ood: str | int) -> str:
    """`evaluate`: extract, score and log a trained model in a new run that points to its train run; the
    method comes from the train run's config, and so do the test-time augmentation and the far anomaly sets
    (`ood_sets`, `ood_count`) unless given."""
    setup_tracking()
    cfg = load_config(train_run_id).replace(**({"tta": tta} if tta else {}), **ood)
    check_folders(parse_ood_sets(cfg.ood_sets, cfg.dataset))
    prep = prepare(cfg)
    model, normalizer = load_weights(train_run_id, new_model(prep), prep.split)
    with ending_run(run_name=f"{run_name(cfg)} evaluate") as run:
        log_provenance(prep, stage="evaluate", parts=evaluated_parts(prep))
        mlflow.set_tag("train_run_id", train_run_id)
        evaluate_logged(prep, model, normalizer)
        return run.info.run_id
