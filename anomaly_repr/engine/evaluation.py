"""Evaluation as a plain computation: extract once per split, calibrate the method, fit every applicable
scorer on nominal references, score, and measure. `evaluate` returns an `Evaluation`; `tracking/runs.py` logs it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure

from anomaly_repr.config import parse_ood_sets
from anomaly_repr.data.ood import OodSet, build_set
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.data.split import UNKNOWN
from anomaly_repr.engine.device import autocast_dtype, pick_device, predict
from anomaly_repr.engine.figures import histogram_figure, roc_figure
from anomaly_repr.engine.workflow import Prepared
from anomaly_repr.errors import SealedError
from anomaly_repr.methods import Calibration
from anomaly_repr.models.backbones import OpenSetNet
from anomaly_repr.scoring.intervals import evaluation_intervals, far_key
from anomaly_repr.scoring.metrics import anomaly_metrics, closed_set_accuracy, oscr
from anomaly_repr.scoring.outputs import Outputs, extract, tta_views
from anomaly_repr.scoring.scorers import SCORERS, applies, is_oracle, make_scorer, scorers_of, tier

log = logging.getLogger(__name__)
SELECT = "select"  # `select/<scorer>/auroc`: validation AUROCs that choose a study's best scorers


def classic_val_aurocs(prep: Prepared, model: OpenSetNet, normalizer: Normalizer,
                       nominal_logits: torch.Tensor | None = None) -> dict[str, float]:
    """`val/<scorer>/auroc` of the classic scorers on the validation images, nominal and anomaly: logged per
    epoch for analysis (does accuracy track detection?), never read by early stopping or selection.
    `nominal_logits` are those of the nominal validation images in the split's order (training's accuracy
    pass has them): then only the anomaly images take a pass. The passes run in training's precision."""
    device, val = pick_device(prep.cfg.device), prep.split.val
    precision = autocast_dtype(prep.cfg.amp, device)
    nominal_index = prep.split.nominal(val, prep.data.labels)
    anomaly_index = val[prep.open_labels[val] == UNKNOWN]
    if nominal_logits is None or len(nominal_logits) != len(nominal_index):
        nominal_logits = predict(model, prep.images(nominal_index), normalizer, device, precision=precision)
    logits = torch.cat([nominal_logits, predict(model, prep.images(anomaly_index), normalizer, device,
                                                precision=precision)])
    labels = prep.open_labels[np.concatenate([nominal_index, anomaly_index])]
    val_outputs = Outputs(np.empty((len(labels), 0), np.float32), logits.float().numpy(), labels)
    nominal = val_outputs.rows(~val_outputs.is_anomaly)  # fixed functions learn nothing; the fit follows the protocol
    aurocs = {}
    for name in scorers_of("classic"):
        scores = make_scorer(name, prep.cfg).fit(nominal).score(val_outputs)
        if np.isfinite(scores).all():  # an analysis curve must not stop a training whose loss is still finite
            aurocs[f"val/{name}/auroc"] = anomaly_metrics(scores, val_outputs.is_anomaly)["auroc"]
        else:
            log.warning("val/%s/auroc not logged: %d validation score(s) are not finite", name,
                        int((~np.isfinite(scores)).sum()))
    return aurocs


def extract_parts(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, parts: dict[str, np.ndarray],
                  tta: bool = True) -> tuple[dict[str, Outputs], Calibration]:
    """Outputs of `model` on each named index set, once each, with its method's extras; a method that
    calibrates does so on nominal images only (validation for G-ODIN's ε, training for GEOM's
    Dirichlets), before its extra passes. The `train` part (the nominal reference of the feature
    scorers) gets no extra passes: no scorer of a method's own extras learns from a reference. Every part
    gets the config's test-time augmentation (`tta`; with `tta=False` the images themselves, as the
    per-epoch validation reads them): references and test images read alike. The forward passes run in
    training's precision (`amp`: bfloat16 where the device has it natively, every scorer's AUROC within
    0.0007 of float32 in BENCHMARKS.md); a method's calibration and extra passes stay float32."""
    method, device = prep.method, pick_device(prep.cfg.device)
    model.to(device).to(memory_format=torch.channels_last)
    outputs = {part: _extract(prep, model, normalizer, prep.images(index), prep.open_labels[index], tta)
               for part, index in parts.items()}
    nominal = {part: prep.images(prep.split.nominal(getattr(prep.split, part), prep.data.labels))
               for part in ("val", "train")}
    calibration = method.calibrate(model, nominal["val"], normalizer, device, nominal["train"])
    extras = {part: method.extra_passes(model, prep.images(parts[part]), normalizer, device, calibration)
              for part in parts if part != "train"}
    return {part: out.with_extras(**extras.get(part, {})) for part, out in outputs.items()}, calibration


def _extract(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, images: torch.Tensor, labels: np.ndarray,
             tta: bool = True) -> Outputs:
    device = pick_device(prep.cfg.device)
    views = tta_views(prep.cfg.tta if tta else "none", prep.data.hflip)
    return extract(model, images, labels, normalizer, device, prep.method.batch_extras, views=views,
                   precision=autocast_dtype(prep.cfg.amp, device))


def read_far_sets(prep: Prepared) -> list[OodSet]:
    """The one reader of `ood_sets`, guarded: the sets are test data, so a view without the test split
    (tuning's sealed view) is refused. A built-in set holds `ood_count` images, or as many as the test
    split's anomalies; the noise sets take the statistics of the nominal training images."""
    test = prep.split.test
    if (prep.rows[test] < 0).any():
        raise SealedError("ood_sets are test data: a view without the test split (tuning's) never reads them")
    count = prep.cfg.ood_count or int((prep.open_labels[test] == UNKNOWN).sum())
    nominal = prep.images(prep.split.nominal(prep.split.train, prep.data.labels))
    return [build_set(spec, nominal, count, prep.cfg.resize, prep.cfg.bad_images)
            for spec in parse_ood_sets(prep.cfg.ood_sets, prep.cfg.dataset)]


def extract_far(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, sets: list[OodSet],
                calibration: Calibration) -> dict[str, Outputs]:
    """Each far set's outputs, read as the test images are (views, the method's extra passes)."""
    device = pick_device(prep.cfg.device)
    return {s.name: _extract(prep, model, normalizer, s.images, np.full(len(s.images), UNKNOWN))
            .with_extras(**prep.method.extra_passes(model, s.images, normalizer, device, calibration))
            for s in sets}


def evaluated_parts(prep: Prepared) -> tuple[str, ...]:
    """The split parts `evaluate` reads: the nominal training images too where feature scorers learn."""
    return ("train", "val", "test") if prep.method.scores_logits else ("val", "test")


def nominal_reference(prep: Prepared, outputs: dict[str, Outputs]) -> Outputs:
    """What deployable scorers learn from (`scorer_reference`): the outputs of the nominal training images,
    or the nominal rows of the validation outputs. Never an anomaly."""
    if prep.cfg.scorer_reference == "train":
        return outputs["train"]
    val = outputs["val"]
    return val.rows(~val.is_anomaly)


def score_outputs(prep: Prepared, outputs: dict[str, Outputs], scores_logits: bool = True,
                  far: dict[str, Outputs] | None = None) -> tuple[dict[str, np.ndarray], dict[str, float],
                                                                  dict[str, dict[str, np.ndarray]]]:
    """Every applicable scorer fitted once (deployable ones on the nominal reference, oracles on the
    validation outputs with their anomaly labels) and scored on the test outputs and on each far set's:
    (test scores, metrics, far set -> scorer -> its images' scores). Metrics: `test/<scorer>/<metric>`,
    `test/ood/<set>/<scorer>/<metric>` of the set's images against the nominal test images, and
    `select/<scorer>/auroc`: a deployable scorer's AUROC on the validation outputs, nominal and anomaly
    (the images and labels the oracles fit on), which is what a study reads to choose its "best" scorers
    without looking at test data (not for a feature scorer whose reference is the nominal validation
    images: it would score its own reference). Without `scores_logits` (logits over the anomaly classes too), the
    oracles alone."""
    test, val = outputs["test"], outputs["val"]
    nominal = nominal_reference(prep, outputs) if scores_logits else None
    scores, metrics, far_scores = {}, {}, dict[str, dict[str, np.ndarray]]()
    for name in SCORERS:
        scorer = make_scorer(name, prep.cfg)
        if applies(scorer, test) and (scores_logits or is_oracle(name)):
            reference = outputs["val"] if is_oracle(name) or nominal is None else nominal
            began = time.perf_counter()
            scorer.fit(reference)
            fitted = time.perf_counter()
            scores[name] = scorer.score(test)
            metrics.update({f"test/{name}/{k}": v for k, v in anomaly_metrics(scores[name], test.is_anomaly).items()})
            metrics.update({f"test/{name}/fit_seconds": fitted - began,
                            f"test/{name}/score_seconds": time.perf_counter() - fitted})
            # a feature scorer fitted on the nominal validation images would score them in-sample
            in_sample = tier(name) == "feature" and prep.cfg.scorer_reference != "train"
            if not is_oracle(name) and not in_sample and val.is_anomaly.any() and not val.is_anomaly.all():
                metrics[f"{SELECT}/{name}/auroc"] = anomaly_metrics(scorer.score(val), val.is_anomaly)["auroc"]
            for set_name, out in (far or {}).items():
                mine = far_scores.setdefault(set_name, {})[name] = scorer.score(out)
                both = np.r_[scores[name][~test.is_anomaly], mine]
                labels = np.r_[np.zeros(int((~test.is_anomaly).sum()), bool), np.ones(len(mine), bool)]
                metrics.update({far_key(set_name, name, k): v for k, v in anomaly_metrics(both, labels).items()})
    return scores, metrics, far_scores


def view_means(prep: Prepared, views: list[dict[str, Outputs]]) -> dict[str, float]:
    """`test/member_mean/<scorer>/auroc`: each scorer's test AUROC on every view (an ensemble's members, one
    at a time), averaged over the views."""
    aurocs: dict[str, list[float]] = {}
    for view in views:
        for key, value in score_outputs(prep, view)[1].items():
            if key.startswith("test/") and key.endswith("/auroc"):
                aurocs.setdefault(key.split("/")[1], []).append(value)
    return {f"test/member_mean/{name}/auroc": float(np.mean(values)) for name, values in aurocs.items()}


@dataclass
class Evaluation:
    """What `evaluate` found: the outputs, every applicable scorer's test scores, the metrics, the
    calibration and the figures (for the tracking layer to log, and close)."""

    outputs: dict[str, Outputs]
    scores: dict[str, np.ndarray]
    metrics: dict[str, float]  # test/acc and test/<scorer>/<metric>
    calibration: Calibration
    figures: dict[str, Figure] = field(default_factory=dict)  # artifact path -> figure
    precision: str = "float32"  # of the extraction's forward passes
    far_sets: list[OodSet] = field(default_factory=list)  # the `ood_sets` read
    far_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # set -> scorer -> scores
    correct: np.ndarray | None = None  # per test image, classified right (OSCR); None: no known-class logits


def evaluate(prep: Prepared, model: OpenSetNet, normalizer: Normalizer, val_index: np.ndarray | None = None,
             test_index: np.ndarray | None = None) -> Evaluation:
    """Extract outputs once per split, fit every applicable scorer, score the test split.

    Deployable scorers fit on the nominal reference (`nominal_reference`: the nominal training images by
    default), the oracles on the validation outputs with their anomaly labels. `val_index` and
    `test_index` default to the split's validation and test parts (tuning's class-holdout protocol
    narrows them). A method whose logits cover the anomaly classes (the oracle representation) gets the
    oracles only: its logit and feature scores mean nothing.
    """
    method = prep.method
    parts = {"val": prep.split.val if val_index is None else val_index,
             "test": prep.split.test if test_index is None else test_index}
    if method.scores_logits:
        parts["train"] = prep.split.nominal(prep.split.train, prep.data.labels)
    sets = read_far_sets(prep) if prep.cfg.ood_sets else []
    began = time.perf_counter()
    outputs, calibration = extract_parts(prep, model, normalizer, parts)
    far = extract_far(prep, model, normalizer, sets, calibration)
    test = outputs["test"]
    # what extraction cost (with calibration and the method's extra passes), with its views: test-time
    # augmentation multiplies the passes
    metrics = {"test/extract_seconds": time.perf_counter() - began,
               "test/tta_views": len(tta_views(prep.cfg.tta, prep.data.hflip))}
    scores, scorer_metrics, far_scores = score_outputs(prep, outputs, method.scores_logits, far)
    metrics |= scorer_metrics
    correct = None
    if method.scores_logits:
        metrics["test/acc"] = closed_set_accuracy(test.logits, test.labels)
        correct = ~test.is_anomaly & (test.logits.argmax(axis=1) == test.labels)
        metrics |= {f"test/{name}/oscr": oscr(s, test.is_anomaly, correct) for name, s in scores.items()}
    if views := method.views(outputs):
        metrics |= view_means(prep, views)
    if prep.cfg.bootstrap:
        began = time.perf_counter()
        metrics |= evaluation_intervals(scores, test.is_anomaly, metrics, prep.cfg.bootstrap, prep.cfg.seed,
                                        far_scores, correct)
        metrics["test/bootstrap_seconds"] = time.perf_counter() - began
    aurocs = {name: metrics[f"test/{name}/auroc"] for name in scores}
    log.info("%s test AUROC: %s", method.name, "  ".join(f"{k} {v:.4f}" for k, v in aurocs.items()))
    figures = {"figures/roc.png": roc_figure(scores, test.is_anomaly, aurocs),
               "figures/score_histograms.png": histogram_figure(scores, test.is_anomaly)}
    precision = autocast_dtype(prep.cfg.amp, pick_device(prep.cfg.device)) or torch.float32
    return Evaluation(outputs, scores, metrics, calibration, figures, str(precision).removeprefix("torch."), sets,
                      far_scores, correct)
