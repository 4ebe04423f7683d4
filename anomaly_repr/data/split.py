"""The open-set split: which classes are known, and a seeded, stratified 60/20/20 partition.

Known classes are relabelled 0..K-1 in the order they were given; unknown (anomaly) classes get -1.
Classes that are neither known nor unknown are left out of every part. The split is saved as a manifest
(class lists, seed, indices, hash) with every run, so any result can be traced to its exact images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_repr.errors import ConfigError, DataError

if TYPE_CHECKING:
    from anomaly_repr.config import ExperimentConfig

UNKNOWN = -1  # label of every anomaly-class image after relabelling
FRACTIONS = (0.6, 0.2, 0.2)  # train / validation / test, per class

# Known-class indices of the five CIFAR-10 6/4 splits of Neal et al. 2018, as used by Vaze et al. 2022.
STANDARD_SPLITS = {
    "cifar10": [[0, 6, 4, 9, 1, 7], [7, 6, 4, 9, 0, 1], [1, 5, 7, 3, 9, 4], [8, 6, 1, 9, 0, 7], [2, 4, 1, 7, 9, 6]],
}
CLASS_NAMES = {"cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
DEFAULT_NUM_KNOWN = {"cifar100": 80}  # others: 60 % of the classes (6 of 10 for digits)


def standard_splits(dataset: str, classes: list[str]) -> tuple[str, list[list[int]]] | None:
    """(name, table) of the standard splits that apply: the dataset's own, or those of the dataset whose
    classes these are, in its order (an image folder of the CIFAR-10 images sorts its class folders into
    CIFAR-10's order, so the published splits mean the same classes there)."""
    if dataset in STANDARD_SPLITS:
        return dataset, STANDARD_SPLITS[dataset]
    return next(((name, STANDARD_SPLITS[name]) for name, names in CLASS_NAMES.items() if names == classes), None)


def _parse_classes(text: str, classes: list[str], what: str) -> list[str]:
    """Class names from a comma-separated list of names or indices."""
    chosen = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item in classes:
            chosen.append(item)
        elif item.lstrip("-").isdigit() and item not in classes:
            index = int(item)
            if not 0 <= index < len(classes):
                raise ConfigError(f"{what} class index {index} is out of range 0..{len(classes) - 1}")
            chosen.append(classes[index])
        else:
            raise ConfigError(f"unknown {what} class {item!r}; the dataset has {', '.join(classes[:20])}"
                              + (" ..." if len(classes) > 20 else ""))
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"{what} classes list a class twice: {text}")
    return chosen


def choose_classes(cfg: ExperimentConfig, classes: list[str]) -> tuple[list[str], list[str]]:
    """(known, unknown) class names from known_classes, a standard split, or a seeded random draw."""
    if cfg.known_classes.strip():
        known = _parse_classes(cfg.known_classes, classes, "known")
    elif (standard := standard_splits(cfg.dataset, classes)) and not cfg.num_known:
        name, table = standard
        if cfg.split >= len(table):
            raise ConfigError(f"{name} has standard splits 0..{len(table) - 1}, got split={cfg.split}")
        known = [classes[i] for i in table[cfg.split]]
    else:
        n = cfg.num_known or DEFAULT_NUM_KNOWN.get(cfg.dataset, round(0.6 * len(classes)))
        if n >= len(classes):
            raise ConfigError(f"num_known={n} leaves no unknown class among {len(classes)} classes")
        # The class draw is seeded by the split index alone, so changing the training seed keeps the classes.
        order = np.random.default_rng(cfg.split).permutation(len(classes))
        known = [classes[i] for i in sorted(order[:n])]
    if cfg.unknown_classes.strip():
        unknown = _parse_classes(cfg.unknown_classes, classes, "unknown")
        both = sorted(set(known) & set(unknown))
        if both:
            raise ConfigError(f"class {both[0]!r} is both known and unknown")
    else:
        unknown = [c for c in classes if c not in known]
    if len(known) < 2:
        raise ConfigError(f"an open-set split needs at least two known classes, got {len(known)}")
    if not unknown:
        raise ConfigError("an open-set split needs at least one unknown class")
    return known, unknown


@dataclass(frozen=True)
class OpenSetSplit:
    dataset: str
    classes: list[str]  # every class of the source, in source order
    known: list[str]  # known class names; known[i] is relabelled i
    unknown: list[str]
    seed: int
    train: np.ndarray  # indices into the pooled source, sorted
    val: np.ndarray
    test: np.ndarray
    left_out: tuple[str, ...] = ()  # source files left out as unreadable; indices count without them
    decoding: str = ""  # how the source's files became pixels (ImageData.decoding); '' for decoded sources

    @classmethod
    def make(cls, cfg: ExperimentConfig, labels: np.ndarray, classes: list[str],
             left_out: tuple[str, ...] = (), decoding: str = "") -> OpenSetSplit:
        known, unknown = choose_classes(cfg, classes)
        rng = np.random.default_rng(cfg.seed)
        parts: tuple[list, list, list] = ([], [], [])
        for name in known + unknown:
            members = rng.permutation(np.flatnonzero(labels == classes.index(name)))
            cut1 = round(FRACTIONS[0] * len(members))
            cut2 = round((FRACTIONS[0] + FRACTIONS[1]) * len(members))
            chunks = (members[:cut1], members[cut1:cut2], members[cut2:])
            if not all(len(c) for c in chunks):
                raise DataError(f"class {name!r} has {len(members)} images; the 60/20/20 split needs at least "
                                "one in each of train, validation and test (4 or more)")
            for part, chunk in zip(parts, chunks, strict=True):
                part.append(chunk)
        train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
        return cls(cfg.dataset, list(classes), known, unknown, cfg.seed, train, val, test, tuple(left_out), decoding)

    def _relabel(self, labels: np.ndarray, order: list[str]) -> np.ndarray:
        """Source labels -> position in `order`; classes not in it -> UNKNOWN."""
        table = np.full(len(self.classes), UNKNOWN, dtype=np.int64)
        for i, name in enumerate(order):
            table[self.classes.index(name)] = i
        return table[labels]

    def open_labels(self, labels: np.ndarray) -> np.ndarray:
        """Source labels -> 0..K-1 for known classes, UNKNOWN for the rest."""
        return self._relabel(labels, self.known)

    def all_class_labels(self, labels: np.ndarray) -> np.ndarray:
        """Source labels -> 0..K-1 for known classes, K..K+U-1 for unknown ones (the oracle representation)."""
        return self._relabel(labels, self.known + self.unknown)

    def nominal(self, part: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The indices of `part` whose images belong to known classes (what training may see)."""
        return part[self.open_labels(labels[part]) != UNKNOWN]

    @property
    def hash(self) -> str:
        digest = hashlib.sha256(json.dumps(self._header(), sort_keys=True).encode())
        for part in (self.train, self.val, self.test):
            digest.update(part.astype("<i8").tobytes())
        return digest.hexdigest()[:16]

    def _header(self) -> dict[str, Any]:
        header = {"dataset": self.dataset, "classes": self.classes, "known": self.known,
                  "unknown": self.unknown, "seed": self.seed, "fractions": list(FRACTIONS)}
        # Only when files were left out, or decoded from files: the hash of a source without bad files, or of
        # one held decoded (digits, CIFAR), stays what it always was.
        return header | ({"left_out": list(self.left_out)} if self.left_out else {}) \
            | ({"decoding": self.decoding} if self.decoding else {})

    def to_dict(self) -> dict[str, Any]:
        return {**self._header(), "hash": self.hash, "train": self.train.tolist(),
                "val": self.val.tolist(), "test": self.test.tolist()}

    def check_trained_on(self, trained: OpenSetSplit, who: str) -> None:
        """Refuse in one line a model (`who`) whose split manifest, `trained`, is not this split."""
        if trained.decoding != self.decoding:
            then = trained.decoding or "an earlier, unrecorded one"
            raise DataError(f"{who} read its images with decoding {then}; this version decodes them as "
                            f"{self.decoding or 'stored arrays'}, so the same files give other pixels: train it "
                            "again with this version, or evaluate it with the version that trained it")
        if trained.hash != self.hash:
            count = f" ({len(trained.known)} known classes; the data give {len(self.known)})" \
                if len(trained.known) != len(self.known) else ""
            raise DataError(f"the data no longer match {who}: split hash {self.hash} != {trained.hash}{count}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpenSetSplit:
        train, val, test = (np.asarray(d[k], dtype=np.int64) for k in ("train", "val", "test"))
        split = cls(d["dataset"], d["classes"], d["known"], d["unknown"], d["seed"], train, val, test,
                    tuple(d.get("left_out", ())), d.get("decoding", ""))
        if split.hash != d["hash"]:
            raise ConfigError(f"split manifest hash mismatch: stored {d['hash']}, computed {split.hash}")
        return split
