"""The objective: train one trial's model on the sealed view, score its validation images, log a child run.

Protocols decide which anomaly images the objective may see:
- `val-anomalies`: the validation images of every anomaly class;
- `class-holdout`: the anomaly classes are divided (seeded) into tuning classes, whose validation
  images the objective sees, and test classes, kept for the final test alone: anomalies never seen.
The objective reads training and validation images only: it runs on `prepare(cfg, ("train", "val"))`,
which cannot hand out a test image.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.data.split import OpenSetSplit
from anomaly_repr.engine.evaluation import extract_parts
from anomaly_repr.engine.workflow import Prepared, checkpoint_path
from anomaly_repr.errors import ConfigError
from anomaly_repr.models.backbones import OpenSetNet
from anomaly_repr.scoring.metrics import anomaly_metrics
from anomaly_repr.scoring.scorers import make_scorer
from anomaly_repr.tracking.runs import train_logged
from anomaly_repr.tracking.setup import run_url
from anomaly_repr.tracking.store import end_run, log_new_params, log_provenance
from tuning.config import TuneConfig
from tuning.space import method_of, suggest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtocolView:
    """Index sets of a protocol: the objective's validation images and the final test's images."""

    protocol: str
    tuning_classes: list[str]  # anomaly classes whose validation images the objective sees
    test_classes: list[str]  # anomaly classes of the final test
    val: np.ndarray  # nominal validation images + validation images of the tuning classes
    test: np.ndarray  # nominal test images + test images of the test classes

    @classmethod
    def make(cls, split: OpenSetSplit, labels: np.ndarray, protocol: str, holdout_fraction: float,
             seed: int) -> ProtocolView:
        unknown = list(split.unknown)
        if protocol == "val-anomalies":
            tuning, testing = unknown, unknown
        else:
            if len(unknown) < 2:
                raise ConfigError(f"protocol class-holdout needs at least two anomaly classes, the split has "
                                  f"{len(unknown)}")
            n_tune = min(len(unknown) - 1, max(1, round(holdout_fraction * len(unknown))))
            order = np.random.default_rng(seed).permutation(len(unknown))
            tuning = [unknown[i] for i in sorted(order[:n_tune])]
            testing = [unknown[i] for i in sorted(order[n_tune:])]

        def keep(part: np.ndarray, anomaly_classes: list[str]) -> np.ndarray:
            wanted = {split.classes.index(c) for c in split.known + anomaly_classes}
            return part[np.isin(labels[part], sorted(wanted))]

        return cls(protocol, tuning, testing, keep(split.val, tuning), keep(split.test, testing))

    def tags(self) -> dict[str, str]:
        return {"protocol": self.protocol, "tuning_anomaly_classes": ",".join(self.tuning_classes),
                "test_anomaly_classes": ",".join(self.test_classes)}


def validation_auroc(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, scorer_name: str,
                     val_index: np.ndarray) -> float:
    """AUROC of `scorer_name` on the protocol's validation images. The objective's scorers are deployable:
    one that learns does so from the nominal training images, whatever `scorer_reference` says, because
    fitted on the nominal validation images it would score the very rows it learnt (a k-NN finds each
    one at distance 0) and flatter the objective. Test-time augmentation is left out: the objective is read
    every epoch, and it selects among trials, so one reading of every trial serves."""
    scorer = make_scorer(scorer_name, prep.cfg)
    parts = {"val": val_index}
    if scorer.fits_reference:
        parts["train"] = prep.split.nominal(prep.split.train, prep.data.labels)
    outputs = extract_parts(prep, model, normalizer, parts, tta=False)[0]  # per epoch: no views, as for val/acc
    val = outputs["val"]
    reference = outputs["train"] if scorer.fits_reference else val.rows(~val.is_anomaly)
    scores = scorer.fit(reference).score(val)
    return anomaly_metrics(scores, val.is_anomaly)["auroc"]


SURPLUS = "surplus"  # user attribute of a trial asked for after the study held n_trials: pruned, not counted


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards n_trials: queued, running or finished, and not a surplus one."""
    return trial.state != TrialState.FAIL and not trial.user_attrs.get(SURPLUS)


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Workers count the trials and then ask for one, so two of them may both ask for the last: the trial
    with n_trials counted trials numbered before it is the extra one (trial numbers are unique and ordered)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and counted(t)) >= n_trials


class Objective:
    """Optuna objective: one nested MLflow run per trial under the study's parent run."""

    def __init__(self, prep: Prepared, tcfg: TuneConfig, view: ProtocolView, parent: mlflow.entities.Run,
                 study_name: str, checkpoints: Path):
        self.prep, self.tcfg, self.view = prep, tcfg, view
        self.parent, self.study_name, self.checkpoints = parent, study_name, checkpoints

    def __call__(self, trial: optuna.Trial) -> float:
        tcfg = self.tcfg
        if is_surplus(trial.study, trial.number, tcfg.n_trials):
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned(f"the study held {tcfg.n_trials} trials when this one started")
        cfg, scorer = suggest(trial, method_of(tcfg.target, self.prep.cfg), tcfg.scorers, tcfg)
        prep = dataclasses.replace(self.prep, cfg=cfg)
        run = mlflow.start_run(run_name=f"{cfg.method} trial {trial.number}", parent_run_id=self.parent.info.run_id,
                               experiment_id=self.parent.info.experiment_id, nested=mlflow.active_run() is not None)
        status = "FAILED"
        try:  # from the start: a failure in between would leave the run to MLflow's exit hook, which says FINISHED
            # A trial queued again after its worker died inherits that trial's user attributes.
            retry_of = {"retried_trial": str(trial.user_attrs.get("trial_number", "")),
                        "retried_run_id": trial.user_attrs.get("mlflow_run_id", "")}
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            trial.set_user_attr("trial_number", trial.number)
            # one click from the trial in optuna-dashboard to its run in the MLflow UI (`mlflow ui` for a local store)
            trial.set_user_attr("mlflow_run_url", run_url(run.info.experiment_id, run.info.run_id))
            log_provenance(prep, stage="trial", parts=("train", "val"))
            log_new_params({"objective_scorer": scorer, "target": tcfg.target})
            mlflow.set_tags({"trial_number": str(trial.number), "optuna_study": self.study_name,
                             "worker": f"{socket.gethostname()}:{os.getpid()}", **retry_of, **self.view.tags()})
            metric = f"val/{scorer}/auroc"

            def score_and_prune(model: OpenSetNet, normalizer: Normalizer, row: dict[str, float],
                                _val_logits: torch.Tensor | None) -> None:  # the method's own pass scores
                if "val/acc" not in row:  # a stage that does not select (CSI's contrastive one): heads untrained
                    return
                value = validation_auroc(prep, model, normalizer, scorer, self.view.val)
                mlflow.log_metric(metric, value, step=int(row["epoch"]))
                trial.report(value, int(row["epoch"]))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation AUROC {value:.4f} at epoch {int(row['epoch'])}")

            fitted = train_logged(prep, run.info.run_id, self.checkpoints, epoch_hook=score_and_prune, serve=False,
                                  analyse=False)
            # the kept (best-accuracy) model
            value = validation_auroc(prep, fitted.model, fitted.normalizer, scorer, self.view.val)
            mlflow.log_metric("trial/value", value)
            mlflow.set_tag("trial_state", "COMPLETE")
            status = "FINISHED"
            return value
        except optuna.TrialPruned:
            mlflow.set_tag("trial_state", "PRUNED")
            status = "KILLED"  # stopped early on purpose: not a finished training
            raise
        except Exception:
            mlflow.set_tag("trial_state", "FAIL")
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Optuna fails the trial
            mlflow.set_tag("trial_state", "FAIL")
            status = "KILLED"
            raise
        finally:
            checkpoint_path(self.checkpoints, run.info.run_id).unlink(missing_ok=True)
            end_run(status)
