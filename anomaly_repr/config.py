"""One typed, frozen configuration for every entry point.

The CLI options, the MLproject parameters and the logged MLflow params map one-to-one to the fields of
`ExperimentConfig` (tests check both directions). Each field is declared with its meaning and unit.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from anomaly_repr.errors import ConfigError, check_finite, unknown
from anomaly_repr.presets import PRESETS
from anomaly_repr.registry import METHODS, MODELS, SOURCES

# Choice fields: their Literal types (`CHOICES` below checks them).
Schedule = Literal["onecycle", "cosine"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Amp = Literal["auto", "true", "false"]
Head = Literal["linear", "godin"]
GodinH = Literal["cosine", "inner", "euclidean"]
BadImages = Literal["error", "skip"]
Resize = Literal["crop", "squash"]
ScorerReference = Literal["train", "val_nominal"]
Augment = Literal["crop_flip", "trivialaugment", "randaugment", "autoaugment"]  # see anomaly_repr/data/augment.py
SvgdSpace = Literal["function", "weights"]
CsiOptimizer = Literal["sgd", "lars"]
JemOptimizer = Literal["adam", "sgd"]
Tta = Literal["none", "flip", "flip_translate"]
AUGMENTS, GODIN_H = get_args(Augment), get_args(GodinH)
DEFAULT_METHOD = "classifier"  # what a config that selects no method trains
DEFAULT_METHODS = ("classifier", "hybrid", "godin", "oracle_rep")  # the talk's four: what `reproduce` trains
OOD_BUILT_IN = ("digits", "gaussian", "uniform")  # far anomaly sets that need no files (anomaly_repr/data/ood.py)
OOD_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a set's name is a part of metric paths


@dataclass(frozen=True)
class OodSpec:
    """One far anomaly set of `ood_sets`."""

    name: str
    folder: str = ""  # a user folder; '' for a built-in set


def parse_ood_sets(text: str, dataset: str) -> tuple[OodSpec, ...]:
    """The sets `ood_sets` names: comma-separated `digits`, `gaussian`, `uniform` or `NAME=PATH`. Whether a
    folder exists is checked where the images are read (`data.ood.check_folders`): a config read back from
    a run made elsewhere is not checked against this machine's folders."""
    specs: list[OodSpec] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, is_folder, folder = (s.strip() for s in item.partition("="))
        if not OOD_NAME.fullmatch(name):
            raise ConfigError(f"ood_sets: {item!r} is not a set; give digits, gaussian, uniform or NAME=PATH "
                              "(NAME of letters, digits, _ and -)")
        if not is_folder and name not in OOD_BUILT_IN:
            raise ConfigError(f"ood_sets: unknown set {name!r}; choose {', '.join(OOD_BUILT_IN)}, or NAME=PATH for "
                              "a folder of images")
        if is_folder and (name in OOD_BUILT_IN or not folder):
            raise ConfigError(f"ood_sets: {item!r} needs a folder after = and a name other than "
                              f"{', '.join(OOD_BUILT_IN)}")
        if name in (s.name for s in specs):
            raise ConfigError(f"ood_sets: the set name {name!r} is given twice")
        if name == "digits" and dataset == "digits":
            raise ConfigError("ood_sets: digits is the dataset itself, not an anomaly of another kind")
        specs.append(OodSpec(name, folder))
    return tuple(specs)


@dataclass(frozen=True)
class ExperimentConfig:
    # --- data ---
    dataset: str = "digits"  # source name: digits | cifar10 | cifar100 | imagefolder
    data_root: str = ""  # folder of the source ('' = data/<dataset> for CIFAR; required for imagefolder)
    download: bool = True  # CIFAR only: download into data_root when its files are missing
    split: int = 0  # standard split index (CIFAR-10: Vaze et al. 2022 splits 0-4), else seed of the class draw
    known_classes: str = ""  # comma-separated class names or indices; '' = chosen by `split`
    unknown_classes: str = ""  # comma-separated; '' = every class that is not known
    num_known: int = 0  # known classes in a random draw; 0 = dataset default (60 % of classes, 80 for CIFAR-100)
    image_size: int = 32  # imagefolder only: images are resized to image_size x image_size pixels
    resize: Resize = "crop"  # imagefolder only: crop = the shorter side to image_size, then the centre square
    #                          (torchvision's Resize + CenterCrop) | squash = both sides to image_size
    bad_images: BadImages = "error"  # imagefolder only: unreadable images stop the run (error) or are left out (skip)
    seed: int = 0  # seeds the 60/20/20 partition, initialisation and augmentation
    # --- model ---
    method: str = ""  # registered method (`anomaly-repr methods`); '' = chosen by head / recon_weight, else classifier
    arch: str = "resnet8"  # registered architecture (see `anomaly-repr archs`)
    recon_weight: float = 0.0  # hybrid: loss = CE + recon_weight * per-pixel MSE (λ); > 0 selects the hybrid method
    head: Head = "linear"  # linear | godin (Generalized ODIN: logits h(z) / g(z)); godin selects the godin method
    godin_h: GodinH = "cosine"  # G-ODIN similarity h_i(z): cosine | inner | euclidean
    godin_epsilons: str = "0,0.0025,0.005,0.01,0.02,0.04,0.08"  # G-ODIN input-perturbation grid, pixel units
    godin_h_weight_decay: float = 0.0  # L2 penalty on G-ODIN's class vectors h (Hsu et al. 2020 use none)
    aux_weight: float = 1.0  # rotation, geom, recolor, sobel: loss = CE + aux_weight * the auxiliary task's loss
    aux_samples: int = 0  # rotation, geom, recolor: transformed views drawn per training image per step; 0 = all
    geom_transforms: int = 72  # geom: 72 (flip x 9 shifts x 4 rotations), 18 (flip x shifts) or 8 (flip x rotations)
    ensemble_size: int = 5  # ensemble, svgd: members (particles)
    ensemble_workers: int = 1  # ensemble: local processes that train members at once
    svgd_space: SvgdSpace = "function"  # svgd: the kernel reads the particles' predictions (function) or weights
    svgd_repulsion: float = 0.03  # svgd: weight of the repulsive term, per example; 0 = kernel off (independent steps)
    svgd_bandwidth: float = 1.0  # svgd: scale of the median-heuristic kernel bandwidth
    jem_weight: float = 1.0  # jem: weight of the generative term (log p(x) by SGLD samples) beside cross-entropy
    jem_buffer_size: int = 10000  # jem: images in SGLD's replay buffer
    jem_reinit: float = 0.05  # jem: share of SGLD's starting points drawn afresh from uniform noise
    jem_sgld_steps: int = 20  # jem: SGLD steps per training step
    jem_sgld_step: float = 1.0  # jem: SGLD step size on grad_x logsumexp f(x), pixels in [-1, 1] as in the paper
    jem_sgld_noise: float = 0.01  # jem: SGLD noise standard deviation (pixels in [-1, 1])
    jem_data_noise: float = 0.03  # jem: Gaussian noise on the training images (pixels in [-1, 1])
    jem_energy_limit: float = 1000.0  # jem: |mean energy of the samples| beyond which training has diverged
    jem_sample_every: int = 5  # jem: log a figure of replay-buffer samples every N epochs; 0 = never
    jem_optimizer: JemOptimizer = "adam"  # jem: adam (the paper's: jem_lr, no weight decay) | sgd (lr, weight_decay)
    jem_lr: float = 1e-4  # jem: Adam's peak learning rate (the paper's 1e-4), on the schedule's warm-up and decay
    csi_epochs: int = 10  # csi: epochs of the contrastive stage (then `epochs` of the linear heads)
    csi_temperature: float = 0.07  # csi: temperature of the supervised contrastive loss
    csi_rotation_weight: float = 0.0  # csi: rotation loss in the contrastive stage too (0 = SupCSI: none)
    csi_optimizer: CsiOptimizer = "sgd"  # csi: optimiser of the contrastive stage: sgd | lars (the paper's)
    csi_jitter: float = 0.4  # csi: SimCLR views' colour jitter spread, 0.8 x SimCLR's strength (RGB only); 0 = none
    csi_test_views: int = 0  # csi: SimCLR views per test image of csi_unlabeled; 0 = 10 on a GPU, 2 on a CPU
    # --- optimisation (a `preset` sets the fields it names in PRESET_FIELDS; one given explicitly wins) ---
    preset: str = "none"  # named recipe: none (the values below) | fast (fastcnn in minutes; see PRESETS)
    epochs: int = 30  # maximum training epochs
    batch_size: int = 128  # images per SGD step
    lr: float = 0.1  # peak learning rate of the schedule
    momentum: float = 0.9  # SGD (Nesterov) momentum
    weight_decay: float = 5e-4  # L2 penalty on conv/linear weights (not on norms and biases)
    schedule: Schedule = "onecycle"  # learning-rate schedule: onecycle (warm-up 20 %, then linear decay) | cosine
    warmup_epochs: float = 0.0  # cosine: linear warm-up over this many epochs before the cosine decay
    patience: int = 10  # stop after this many epochs without a better validation accuracy; 0 = never stop early
    max_hours: float = 0.0  # stop a run after the first epoch of a stage shows it cannot end in time; 0 = no limit
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    ema_decay: float = 0.0  # exponential moving average of the weights per step (e.g. 0.999); selection and
    #                         extraction use the averaged weights; 0 = off
    # --- augmentation (anomaly_repr/data/augment.py; random crop and flip always) ---
    augment: Augment = "crop_flip"  # per-image policy on top: crop_flip (none) | trivialaugment | randaugment |
    #                                 autoaugment (torchvision's op sets and magnitude ranges)
    randaugment_ops: int = 2  # randaugment: ops applied in turn to each image (torchvision's default)
    randaugment_magnitude: int = 9  # randaugment: magnitude bin of 31, 0-30, every op (torchvision's default)
    random_erasing: float = 0.0  # probability that an image gets a random box erased (torchvision's defaults)
    mixup: float = 0.0  # mixup's Beta(alpha, alpha) alpha; 0 = off
    cutmix: float = 0.0  # cutmix's Beta(alpha, alpha) alpha; 0 = off (with mixup too: one of them per batch)
    val_auroc_every: int = 1  # log val/<classic scorer>/auroc every N epochs (analysis only, never selection); 0 = off
    # --- feature-space scorers (fit on nominal images only; see anomaly_repr/scoring/features.py) ---
    scorer_reference: ScorerReference = "train"  # what they learn from: train (nominal training images) | val_nominal
    knn_k: int = 50  # knn: the k-th nearest nominal feature (Sun et al. 2022; OpenOOD's CIFAR-10 value)
    vim_dim: int = 0  # vim: principal-subspace dimension; 0 = Wang et al.'s rule for the feature width
    react_percentile: float = 90.0  # react: clip z at this percentile of nominal activations
    gen_gamma: float = 0.1  # gen: the generalised entropy's exponent
    gen_top: int = 0  # gen: the top-M probabilities it sums; 0 = every class
    # --- evaluation ---
    tta: Tta = "none"  # test-time augmentation of extraction: none | flip | flip_translate (logits and z averaged
    #                    over the views; flips only where training flips)
    ood_sets: str = ""  # far anomaly sets scored beside the held-out classes, comma-separated: digits | gaussian |
    #                    uniform | NAME=PATH (a folder of images); see anomaly_repr/data/ood.py. '' = none
    ood_count: int = 0  # images of each built-in set; 0 = as many as the test split's anomalies
    # --- oracles (fit on validation z labelled nominal/anomaly) ---
    oracle_trees: int = 1000  # trees in the random-forest oracle
    oracle_neighbors: int = 10  # neighbours in the k-NN oracle
    # --- uncertainty ---
    bootstrap: int = 1000  # stratified bootstrap resamples of the test images behind every interval; 0 = none
    # --- hardware ---
    device: Device = "auto"  # auto picks cuda, then mps, then cpu
    amp: Amp = "auto"  # bfloat16 autocast in training: auto (CUDA, and CPUs with native bf16) | true | false

    @classmethod
    def create(cls, **given: Any) -> ExperimentConfig:
        """A config from the fields a user gave: the defaults, under them the `preset`'s values, under them
        what was given. (The constructor takes values as they are: a config read back from logged params
        holds the resolved values and its preset as a label.)"""
        return cls(**(PRESETS.get(given.get("preset", "none"), {}) | given))  # an unknown one: __post_init__ says so

    def __post_init__(self) -> None:
        object.__setattr__(self, "amp", str(self.amp).lower())  # True/False: configs logged when amp was a bool
        if self.preset not in PRESETS:
            raise unknown("preset", self.preset, PRESETS)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise unknown(name, getattr(self, name), allowed)
        self._check_ranges()
        for method in METHODS.values():  # each method checks the fields it owns
            method.check(self)
        SOURCES.check(self.dataset)
        MODELS.check(self.arch)
        method, implied = _resolve(self)
        for name, value in {"method": method, **implied}.items():
            object.__setattr__(self, name, value)  # frozen: settled once, here

    def _check_ranges(self) -> None:
        check_finite(self)
        for name in ("epochs", "batch_size", "oracle_trees", "oracle_neighbors"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("momentum and weight_decay must not be negative")
        if min(self.patience, self.num_known, self.split, self.bootstrap, self.val_auroc_every, self.ood_count) < 0:
            raise ConfigError("patience, num_known, split, bootstrap, val_auroc_every and ood_count must not be "
                              "negative")
        parse_ood_sets(self.ood_sets, self.dataset)
        if self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.randaugment_ops < 1 or not 0 <= self.randaugment_magnitude <= 30:
            raise ConfigError(f"randaugment_ops must be positive and randaugment_magnitude a bin in [0, 30], got "
                              f"{self.randaugment_ops} and {self.randaugment_magnitude}")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError(f"random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"mixup and cutmix are Beta alphas (0 = off) and must not be negative, got "
                              f"{self.mixup} and {self.cutmix}")
        if self.max_hours < 0:
            raise ConfigError(f"max_hours must not be negative (0 = no limit), got {self.max_hours}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} with {self.epochs} "
                              "epochs")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ConfigError("warmup_epochs applies to schedule=cosine; onecycle warms up over its first 20 % of "
                              "steps")
        if self.knn_k <= 0 or self.vim_dim < 0 or self.gen_top < 0:
            raise ConfigError("knn_k must be positive; vim_dim and gen_top must not be negative")
        if not 0 < self.react_percentile <= 100 or not self.gen_gamma > 0:
            raise ConfigError(f"react_percentile must be in (0, 100] and gen_gamma positive, got "
                              f"{self.react_percentile} and {self.gen_gamma}")

    def to_params(self) -> dict[str, str]:
        """The config as MLflow params: one param per field, as strings."""
        return {f.name: _format(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in fields(ExperimentConfig)}  # name -> dataclass field, for parsing strings
# The choice fields, from their Literal types: name -> allowed values, checked in one place.
CHOICES = {name: get_args(hint) for name, hint in get_type_hints(ExperimentConfig).items()
           if get_origin(hint) is Literal}


def _resolve(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """(method name, implied field values) for a config: `method` if given, else the one its fields select
    (`recon_weight > 0`: hybrid, `head=godin`: godin), else the classifier. Contradictions are errors."""
    claimed = [name for name, cls in METHODS.items() if cls.claims(cfg)]
    if not cfg.method:
        if len(claimed) > 1:
            raise ConfigError(f"these settings select several methods ({', '.join(claimed)}); choose one with method")
        name = claimed[0] if claimed else DEFAULT_METHOD
    elif cfg.method not in METHODS:
        raise unknown("method", cfg.method, METHODS)
    else:
        name = cfg.method
        others = [c for c in claimed if c != name]
        if others:
            fields_ = ", ".join(f"{f}={getattr(cfg, f)}" for c in others for f in METHODS[c].selectors)
            raise ConfigError(f"method={name} contradicts {fields_} (which selects {', '.join(others)})")
    return name, METHODS[name].settle(cfg)


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_value(field: dataclasses.Field, text: str) -> Any:
    """Parse a CLI/MLproject string into the field's type, with a one-line error on failure."""
    type_name = field.type if isinstance(field.type, str) else field.type.__name__
    if type_name == "bool":
        return parse_bool(field.name, text)
    try:
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{field.name} must be {type_name}, got {text!r}") from None
    return text


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} must be bool (true or false), got {text!r}")
    return lowered in ("true", "1", "yes")
