"""MLproject and CLI stay one-to-one with the config: MLflow silently drops parameters a command omits."""

import re
from dataclasses import fields

import yaml

from anomaly_repr.cli import build_parser
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.presets import PRESET_FIELDS
from anomaly_repr.study.pool import PoolConfig
from tuning.config import TuneConfig

from conftest import REPO

SPEC = yaml.safe_load((REPO / "MLproject").read_text())
CONFIG_FIELDS = {f.name for f in fields(ExperimentConfig)}


def test_every_parameter_appears_in_its_command():
    for name, entry in SPEC["entry_points"].items():
        placeholders = set(re.findall(r"\{(\w+)\}", entry["command"]))
        assert placeholders == set(entry.get("parameters", {})), name


def test_train_main_and_reproduce_take_exactly_the_config_fields_with_its_defaults():
    for name in ("train", "main", "reproduce"):
        study = name != "train"
        params = SPEC["entry_points"][name]["parameters"]
        # a study takes `methods` (one child each) in the place of the one `method`, and the worker pool's fields
        pool = {f.name for f in fields(PoolConfig)}
        assert set(params) == (CONFIG_FIELDS - {"method"} | {"godin", "methods"} | pool if study else CONFIG_FIELDS)
        for f in fields(PoolConfig) if study else ():
            assert params[f.name]["default"] == f.default, f.name
        for f in fields(ExperimentConfig):
            if study and f.name == "method":
                assert params["methods"]["default"] == "classifier,hybrid,godin,oracle_rep"
                continue
            default = str(f.default).lower() if isinstance(f.default, bool) else f.default
            if study and f.name in ("seed", "split"):  # studies take lists: "0,1,2"
                default = str(default)
            if study and f.name == "recon_weight":  # the hybrid child's λ: the talk's value by default
                default = "auto"
            if f.name in PRESET_FIELDS:  # '' = not given: the preset's value, or the field's default
                default = ""
            assert params[f.name]["default"] == default, f.name
        assert f"python -m anomaly_repr {name} " in SPEC["entry_points"][name]["command"]


def test_commands_parse_with_the_cli():
    for name, entry in SPEC["entry_points"].items():
        values = {k: str(v.get("default", "x")) or "''" for k, v in entry.get("parameters", {}).items()}
        argv = entry["command"].format(**values).split()[3:]
        args = build_parser().parse_args([a.strip("'") for a in argv])
        assert args.command == name


def test_tune_takes_the_config_and_tune_fields_with_their_defaults():
    params = SPEC["entry_points"]["tune"]["parameters"]
    assert set(params) == CONFIG_FIELDS | {f.name for f in fields(TuneConfig)}
    for f in fields(ExperimentConfig) + fields(TuneConfig):
        default = str(f.default).lower() if isinstance(f.default, bool) else f.default
        default = "" if f.name in PRESET_FIELDS else default
        assert params[f.name]["default"] == default, f.name
    assert "python -m anomaly_repr tune " in SPEC["entry_points"]["tune"]["command"]


def _cli_config(entry: str, **params: str):
    """The config that `mlflow run . -e ENTRY -P k=v ...` hands the CLI: every parameter at its default
    unless given, formatted into the command as MLflow does."""
    import shlex

    from anomaly_repr.cli import _config

    spec = SPEC["entry_points"][entry]
    values = {k: shlex.quote(str(params.get(k, v.get("default", "")))) for k, v in spec["parameters"].items()}
    argv = shlex.split(spec["command"].format(**values))[3:]
    return _config(build_parser().parse_args(argv))


def test_mlproject_parameters_resolve_the_preset_like_the_cli():
    for entry in ("train", "tune"):
        params = SPEC["entry_points"][entry]["parameters"]
        assert all(params[name]["default"] == "" for name in PRESET_FIELDS), entry
        assert _cli_config(entry) == ExperimentConfig()
        assert _cli_config(entry, preset="fast") == ExperimentConfig.create(preset="fast")
        given = _cli_config(entry, preset="fast", lr="0.05", batch_size="128")
        assert given == ExperimentConfig.create(preset="fast", lr=0.05, batch_size=128)
