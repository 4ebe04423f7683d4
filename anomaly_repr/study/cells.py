"""What a `reproduce` study is: its settings and its cells (split x seed x augmentation policy x method), the
config each cell trains, and the identity that names the study and is checked when it resumes or a worker
joins. Running the cells is `reproduce.py`'s."""

from __future__ import annotations

from dataclasses import dataclass, field

from anomaly_repr.config import AUGMENTS, DEFAULT_METHODS, ExperimentConfig
from anomaly_repr.data.split import STANDARD_SPLITS
from anomaly_repr.errors import ConfigError, unknown
from anomaly_repr.methods import METHODS, child_config
from anomaly_repr.study.lifecycle import identity_hash
from anomaly_repr.study.pool import MACHINE_FIELDS, PoolConfig

CellKey = tuple[int, int, str, str]  # (split, seed, method, augmentation policy)
# Fields that change what is reported, not what a cell trains: a resumed study may change them.
REPORTING_FIELDS = ("bootstrap", "val_auroc_every")


@dataclass(frozen=True)
class Study:
    base: ExperimentConfig  # shared settings; each child replaces seed, split and its method's fields
    seeds: tuple[int, ...] = (0,)
    splits: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = DEFAULT_METHODS
    augments: tuple[str, ...] = ()  # augmentation policies, every method trained under each; () = the base's
    pool: PoolConfig = field(default_factory=PoolConfig)

    def __post_init__(self) -> None:
        if not self.seeds or not self.splits:
            raise ConfigError("a study needs at least one seed and one split")
        if not self.methods:
            raise ConfigError("a study needs at least one method")
        for what, names, choices in (("method", self.methods, METHODS), ("augment", self.augments, AUGMENTS)):
            if missing := [n for n in names if n not in choices]:
                raise unknown(what, missing[0], choices)
        for name, values in (("methods", self.methods), ("seeds", self.seeds), ("splits", self.splits),
                             ("augment", self.augments)):
            if len(set(values)) != len(values):
                raise ConfigError(f"{name} lists a value twice: {','.join(map(str, values))}")

    @property
    def policies(self) -> tuple[str, ...]:
        return self.augments or (self.base.augment,)

    @property
    def reference_policy(self) -> str:
        """The policy every other one is measured against: crop and flip alone when listed."""
        return "crop_flip" if "crop_flip" in self.policies else self.policies[0]

    def row(self, method: str, policy: str) -> str:
        """The table row (and metric path) of a method under a policy."""
        return method if policy == self.reference_policy else f"{method}.{policy}"

    def config(self, method: str, policy: str) -> ExperimentConfig:
        """A child's config (seed and split are set per cell)."""
        return child_config(self.base, method).replace(augment=policy)

    def cells(self) -> list[CellKey]:
        """Every (split, seed, method, policy), in the order a single worker runs them."""
        return [(split, seed, method, policy) for split in self.splits for seed in self.seeds
                for policy in self.policies for method in self.methods]

    def identity(self) -> dict[str, str]:
        """What the cells depend on; stored with the study and checked on resume and join."""
        experiment = {k: v for k, v in self.base.to_params().items()
                      if k not in (*MACHINE_FIELDS, *REPORTING_FIELDS, "method", "augment")}
        return experiment | {"seeds": ",".join(map(str, self.seeds)), "splits": ",".join(map(str, self.splits)),
                             "methods": ",".join(self.methods), "augment": ",".join(self.policies)}

    def settings_name(self) -> str:
        """The start of the name of every study of these settings (a study's own name adds when it began)."""
        return f"reproduce-cells-{self.base.dataset}-{identity_hash(self.identity())}"

    def settings(self) -> str:
        """The settings in words, for the study's card in optuna-dashboard."""
        return (f"{self.base.dataset}: methods {','.join(self.methods)}; splits {','.join(map(str, self.splits))}; "
                f"seeds {','.join(map(str, self.seeds))}; augment {','.join(self.policies)}; "
                f"{self.base.epochs} epochs, {self.base.arch}")

    def shared_class_sets(self) -> list[tuple[int, ...]]:
        """Groups of requested standard splits that hold the same known classes (CIFAR-10's 0 and 1)."""
        table = STANDARD_SPLITS.get(self.base.dataset)
        if table is None or self.base.known_classes or self.base.num_known:
            return []
        groups: dict[frozenset[int], list[int]] = {}
        for split in self.splits:
            if split < len(table):
                groups.setdefault(frozenset(table[split]), []).append(split)
        return [tuple(g) for g in groups.values() if len(g) > 1]
