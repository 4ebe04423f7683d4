"""Dataset lineage: each run's split parts as MLflow dataset inputs, so that the runs table's Dataset column
and its dataset filter say which data a run used."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    from anomaly_repr.data.ood import OodSet
    from anomaly_repr.engine.workflow import Prepared

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # split part -> MLflow dataset context
FAR_CONTEXT = "ood"  # the context of a far anomaly set (`ood_sets`)
INPUT_ATTEMPTS = 3  # tries to log a run's dataset inputs when another process creates the same dataset at once


def log_dataset_inputs(prep: Prepared, parts: Sequence[str]) -> None:
    """One MLflow dataset input per split part, `<dataset or folder>-split<k>-<part>`, digest the split hash.

    One input per part, not one dataset with three contexts: MLflow keeps a single input for each
    (name, digest) of a run, so a second context of the same dataset would be dropped.
    """
    cfg = prep.cfg
    base = Path(prep.data.origin).name if cfg.dataset == "imagefolder" else cfg.dataset  # resolved: never "."
    source = _source(prep.data.origin or cfg.dataset)
    # MetaDataset leaves `profile` abstract in MLflow's base class but defines it; mypy reads the base.
    datasets: list[Dataset | None] = [MetaDataset(source, name=f"{base}-split{cfg.split}-{part}",  # type: ignore[abstract]
                                                  digest=prep.split.hash) for part in parts]
    _log_inputs(datasets, [CONTEXTS[part] for part in parts])


def log_far_inputs(sets: Sequence[OodSet]) -> None:
    """One MLflow dataset input per far set, context `ood`: its name, its source (a folder, or what made the
    images) and the digest of its pixels."""
    if not sets:
        return
    datasets: list[Dataset | None] = [MetaDataset(_source(s.origin), name=s.name,  # type: ignore[abstract]
                                                  digest=s.digest) for s in sets]
    _log_inputs(datasets, [FAR_CONTEXT for _ in sets])


def _source(origin: str) -> DatasetSource:
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and then warns that a path "can be interpreted in multiple
        # ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource": the same class, nothing to choose.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return resolve_dataset_source(origin)


def _log_inputs(datasets: list[Dataset | None], contexts: list[str | None]) -> None:
    for attempt in range(INPUT_ATTEMPTS):
        try:
            mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=[None] * len(contexts))
            return
        except MlflowException as exc:
            # Workers of one study log the same split at the same moment: both find no dataset row, both insert
            # it, and the store refuses the second (a unique-key violation). The row exists then, so the next
            # attempt links this run to it; logging inputs is idempotent.
            if attempt == INPUT_ATTEMPTS - 1 or not re.search("unique|duplicate", str(exc), re.IGNORECASE):
                raise
            time.sleep(0.5)
