"""Command line: `anomaly-repr {train,evaluate,main,archs}`; options are the config's fields one-to-one."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields

from anomaly_repr.config import ExperimentConfig, parse_value
from anomaly_repr.errors import AnomalyReprError


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    for f in fields(ExperimentConfig):
        default = f.default if f.default is not MISSING else None
        parser.add_argument(f"--{f.name}", f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            metavar=str(f.type).upper(), help=f"(default: {default!r})")


def _config(args: argparse.Namespace) -> ExperimentConfig:
    given = {f.name: parse_value(f, getattr(args, f.name)) for f in fields(ExperimentConfig)
             if getattr(args, f.name) is not None}
    return ExperimentConfig(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-repr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a classifier on the known classes and log it")
    _add_config_options(train)
    train.add_argument("--resume", default="", metavar="RUN_ID",
                       help="continue this interrupted train run from its last checkpoint")
    evaluate = sub.add_parser("evaluate", help="extract, score and log a trained model")
    evaluate.add_argument("--train_run_id", "--train-run-id", required=True, help="run id of a train run")
    main = sub.add_parser("main", help="train, then evaluate, in one run")
    _add_config_options(main)
    sub.add_parser("archs", help="list the registered architectures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    # Imported here so that `--help` and argument errors answer without loading torch and mlflow.
    from anomaly_repr import workflow
    from anomaly_repr.models import MODELS

    try:
        if args.command == "archs":
            print("\n".join(sorted(MODELS)))
        elif args.command == "train":
            print(workflow.run_train(_config(args), resume_run_id=args.resume))
        elif args.command == "evaluate":
            print(workflow.run_evaluate(args.train_run_id))
        else:
            print(workflow.run_main(_config(args)))
    except AnomalyReprError as exc:
        print(f"anomaly-repr: error: {exc}", file=sys.stderr)
        return 2
    return 0
