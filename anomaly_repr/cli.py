"""Command line: `anomaly-repr {train,evaluate,reproduce,main,tune,archs}`; options map one-to-one to config fields."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import MISSING
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_repr.config import DEFAULT_METHODS, FIELDS, ExperimentConfig, parse_bool, parse_ood_sets, parse_value
from anomaly_repr.errors import AnomalyReprError, ConfigError
from anomaly_repr.presets import PRESET_FIELDS
from anomaly_repr.study.pool import CHECKPOINTS_ENV, POOL_FIELDS, STORAGE_ENV, PoolConfig
from tuning.config import TUNE_FIELDS, TuneConfig

if TYPE_CHECKING:
    from anomaly_repr.study.cells import Study


def _add_config_options(parser: argparse.ArgumentParser, fields: dict = FIELDS, skip: tuple[str, ...] = ()) -> None:
    for f in (f for name, f in fields.items() if name not in skip):
        default = f.default if f.default is not MISSING else None
        parser.add_argument(f"--{f.name}", f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            metavar=str(f.type).upper(), help=f"(default: {default!r})")


def _given(args: argparse.Namespace, fields: dict) -> dict:
    """The options given on the command line, parsed into their fields' types. An empty value of a field that
    a preset governs counts as not given (MLproject passes every parameter, those at '' by default), so the
    preset's value, or the default, stands."""
    return {name: parse_value(f, getattr(args, name)) for name, f in fields.items()
            if getattr(args, name, None) is not None and not (name in PRESET_FIELDS and getattr(args, name) == "")}


def _config(args: argparse.Namespace) -> ExperimentConfig:
    return ExperimentConfig.create(**_given(args, FIELDS))


def _pool_fields(args: argparse.Namespace, fields: dict) -> dict:
    """The pool options given, with the storage of $ANOMALY_REPR_STORAGE where `--storage` is not."""
    given = _given(args, fields)
    if not given.get("storage") and os.environ.get(STORAGE_ENV):
        given["storage"] = os.environ[STORAGE_ENV]
    return given


def _checkpoints() -> Path:
    """The checkpoint folder: $ANOMALY_REPR_CHECKPOINTS, else ./checkpoints."""
    from anomaly_repr.engine.workflow import DEFAULT_CHECKPOINTS

    return Path(os.environ.get(CHECKPOINTS_ENV) or DEFAULT_CHECKPOINTS)


def _tune_config(args: argparse.Namespace) -> TuneConfig:
    return TuneConfig(**_pool_fields(args, TUNE_FIELDS))


def _study(args: argparse.Namespace) -> Study:
    """A study: `seed`, `split` and `augment` may be comma-separated lists (one child run per value), `methods`
    the methods to train; `split=all` is every standard split of the dataset. Two shorthands of earlier versions
    remain: `recon_weight` is the hybrid child's λ
    ('auto' = the talk's value for the dataset, 0 = no hybrid child) and `godin=false` drops the G-ODIN child."""
    from anomaly_repr.data.split import STANDARD_SPLITS
    from anomaly_repr.study.cells import Study

    lists = {}
    if (args.split or "").strip() == "all":
        dataset = args.dataset or FIELDS["dataset"].default
        if dataset not in STANDARD_SPLITS:
            raise ConfigError(f"split=all needs a dataset with standard splits ({', '.join(STANDARD_SPLITS)}), "
                              f"not {dataset}")
        if args.known_classes or args.num_known:
            raise ConfigError("split=all runs the standard splits' class sets; known_classes and num_known choose "
                              "the classes otherwise: leave them out, or list the splits")
        args.split = ",".join(map(str, range(len(STANDARD_SPLITS[dataset]))))
    for name in ("seed", "split"):
        text = getattr(args, name) or "0"
        try:
            lists[name] = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer or comma-separated integers, got {text!r}") from None
        setattr(args, name, str(lists[name][0]) if lists[name] else None)
    augments = tuple(a.strip() for a in (args.augment or "").split(",") if a.strip())
    args.augment = augments[0] if augments else None  # the base config's; the study checks every one
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    weight, args.recon_weight = args.recon_weight or "auto", None
    if weight != "auto":
        args.recon_weight = weight  # parsed with the config; 0 = no hybrid child
        if parse_value(FIELDS["recon_weight"], weight) == 0:
            methods = [m for m in methods if m != "hybrid"]
    if not parse_bool("godin", args.godin):
        methods = [m for m in methods if m != "godin"]
    return Study(_config(args), lists["seed"], lists["split"], tuple(methods), augments,
                 PoolConfig(**_pool_fields(args, POOL_FIELDS)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-repr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a classifier on the known classes and log it")
    _add_config_options(train)
    train.add_argument("--resume", default="", metavar="RUN_ID",
                       help="continue this interrupted train run from its last checkpoint")
    evaluate = sub.add_parser("evaluate", help="extract, score and log a trained model")
    evaluate.add_argument("--train_run_id", "--train-run-id", required=True, help="run id of a train run")
    evaluate.add_argument("--tta", default="", help="test-time augmentation: none | flip | flip_translate "
                                                    "(default: the train run's)")
    evaluate.add_argument("--ood_sets", "--ood-sets", default="", help="far anomaly sets scored beside the held-out "
                          "classes: digits,gaussian,uniform,NAME=PATH (default: the train run's)")
    evaluate.add_argument("--ood_count", "--ood-count", default="", help="images per built-in set; 0 = the test "
                          "split's anomaly count (default: the train run's)")
    for name in ("reproduce", "main"):
        what = "a parent run with a child per method (classifier, hybrid, godin, oracle_rep), seed and split"
        study = sub.add_parser(name, help=what + ("; the default entry point" if name == "main" else ""))
        _add_config_options(study, skip=("method",))
        study.add_argument("--methods", "--method", dest="methods", default=",".join(DEFAULT_METHODS),
                           help=f"comma-separated methods, one child each (default: {','.join(DEFAULT_METHODS)})")
        study.add_argument("--seeds", dest="seed", help="alias of --seed: e.g. 0,1,2")
        study.add_argument("--splits", dest="split", help="alias of --split: e.g. 0,1,2,3,4, or all")
        study.add_argument("--godin", default="true", metavar="BOOL", help="train the G-ODIN child (default: true)")
        _add_config_options(study, POOL_FIELDS)
    tune = sub.add_parser("tune", help="an Optuna study of λ or G-ODIN settings on validation data, a child run "
                                       "per trial, then one test of the best")
    _add_config_options(tune)
    _add_config_options(tune, TUNE_FIELDS)
    sub.add_parser("archs", help="list the registered architectures")
    sub.add_parser("methods", help="list the registered methods")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _command(args)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _command(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _command(args: argparse.Namespace) -> int:
    # Imported here so that `--help` and argument errors answer without loading torch and mlflow.
    from anomaly_repr.data.ood import check_folders
    from anomaly_repr.methods import METHODS
    from anomaly_repr.models.backbones import MODELS
    from anomaly_repr.study.reproduce import run_reproduce
    from anomaly_repr.tracking import runs
    from tuning.study import run_tune

    try:
        if args.command == "archs":
            print("\n".join(sorted(MODELS)))
        elif args.command == "methods":
            print("\n".join(METHODS))
        elif args.command == "train":
            if not args.resume:
                print(runs.run_train(_config(args), checkpoints=_checkpoints()))
                return 0
            # A resumed run keeps the settings of its earlier epochs, but those its method lets change (JEM's
            # sampler step after a divergence); the run's method checks them once its config is read.
            changes = _given(args, FIELDS)
            resumable = {name for cls in METHODS.values() for name in cls.resume_fields}
            fixed = [f"--{name}" for name in changes if name not in resumable]
            if fixed:
                raise ConfigError(f"--resume continues a run with its logged config; leave out {', '.join(fixed)}")
            print(runs.run_train(None, resume_run_id=args.resume, changes=changes, checkpoints=_checkpoints()))
        elif args.command == "evaluate":
            ood = {name: parse_value(FIELDS[name], getattr(args, name)) for name in ("ood_sets", "ood_count")
                   if getattr(args, name)}
            print(runs.run_evaluate(args.train_run_id, tta=args.tta, **ood))
        elif args.command == "tune":
            print(run_tune(_config(args), _tune_config(args), _checkpoints(), _launcher()))
        else:
            study = _study(args)
            check_folders(parse_ood_sets(study.base.ood_sets, study.base.dataset))  # before any cell trains
            print(run_reproduce(study, _checkpoints(), _launcher()))
    except AnomalyReprError as exc:
        print(f"anomaly-repr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # the runs were ended KILLED on the way out; checkpoints stay
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(f"anomaly-repr: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    return 0


class Stopped(KeyboardInterrupt):
    """SIGTERM (docker stop, Kubernetes, batch schedulers) taken as Ctrl-C: every run ends KILLED, every
    trial FAIL, a `train` run's checkpoint stays for `train --resume`, and the exit status is 128 + 15."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal is not caught while the runs are being ended
    raise Stopped(signum)


def _launcher() -> str:
    """The run `mlflow run` made for this command: a study decides what it becomes (its parent, or a link
    to the study it resumed or joined), so MLflow must not resume it for the study's other runs."""
    return os.environ.pop("MLFLOW_RUN_ID", "")
