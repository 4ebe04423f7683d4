import math
from dataclasses import fields

import pytest

from anomaly_repr.cli import build_parser
from anomaly_repr.config import ExperimentConfig, parse_value
from anomaly_repr.errors import ConfigError


@pytest.mark.parametrize("change, word", [
    ({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"lr": 0.0}, "lr"), ({"lr": -0.1}, "lr"),
    ({"dataset": "mnist"}, "dataset"), ({"arch": "vgg"}, "arch"), ({"schedule": "step"}, "schedule"),
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"device": "tpu"}, "device"),
])
def test_bad_values_are_named(change, word):
    with pytest.raises(ConfigError, match=word):
        ExperimentConfig(**change)


FLOAT_FIELDS = [f.name for f in fields(ExperimentConfig) if f.type == "float"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_in_every_float_field(value):
    assert len(FLOAT_FIELDS) >= 27  # every float field, new ones included
    for name in FLOAT_FIELDS:
        with pytest.raises(ConfigError, match=f"^{name} must be a finite number, got {value}$"):
            ExperimentConfig(**{name: value})


def test_params_round_trip_through_the_parser():
    cfg = ExperimentConfig(dataset="cifar10", epochs=7, lr=0.05, amp="false", known_classes="cat,dog")
    by_name = {f.name: f for f in fields(ExperimentConfig)}
    rebuilt = ExperimentConfig(**{k: parse_value(by_name[k], v) for k, v in cfg.to_params().items()})
    assert rebuilt == cfg


def test_parse_value_rejects_garbage():
    by_name = {f.name: f for f in fields(ExperimentConfig)}
    with pytest.raises(ConfigError, match="epochs must be int"):
        parse_value(by_name["epochs"], "three")
    with pytest.raises(ConfigError, match="download must be bool"):
        parse_value(by_name["download"], "maybe")


def test_every_config_field_is_a_cli_option():
    every = {f.name for f in fields(ExperimentConfig)}
    assert every <= set(vars(build_parser().parse_args(["train"])))
    # a study trains several methods: `--methods` (alias `--method`) takes the place of the one method field
    study = vars(build_parser().parse_args(["main", "--method", "classifier,hybrid"]))
    assert every - {"method"} <= set(study) and study["methods"] == "classifier,hybrid"


# --- presets: defaults < the preset's values < what was given ---------------------------------------------

def test_a_preset_sets_its_fields_and_a_given_field_wins():
    from anomaly_repr.presets import PRESET_FIELDS, PRESETS

    fast = ExperimentConfig.create(preset="fast")
    assert {name: getattr(fast, name) for name in PRESETS["fast"]} == PRESETS["fast"]
    assert set(PRESETS["fast"]) <= set(PRESET_FIELDS)
    mixed = ExperimentConfig.create(preset="fast", epochs=3, lr=0.05)
    assert (mixed.epochs, mixed.lr, mixed.arch, mixed.batch_size) == (3, 0.05, "fastcnn", PRESETS["fast"]["batch_size"])
    # a given value equal to the no-preset default still wins over the preset
    assert ExperimentConfig.create(preset="fast", batch_size=128).batch_size == 128
    assert ExperimentConfig.create() == ExperimentConfig()
    assert ExperimentConfig.create(preset="none", arch="resnet20").arch == "resnet20"
    # the resolved values are what the run logs as params; read back, they give the same config
    assert fast.to_params()["arch"] == "fastcnn" and fast.to_params()["preset"] == "fast"
    by_name = {f.name: f for f in fields(ExperimentConfig)}
    assert ExperimentConfig(**{k: parse_value(by_name[k], v) for k, v in fast.to_params().items()}) == fast


@pytest.mark.parametrize("make", [lambda: ExperimentConfig.create(preset="bogus"),
                                  lambda: ExperimentConfig(preset="bogus")])
def test_an_unknown_preset_is_named(make):
    with pytest.raises(ConfigError, match="unknown preset 'bogus'; choose one of none, fast"):
        make()


def test_an_unknown_tta_is_named():
    with pytest.raises(ConfigError, match="unknown tta 'bogus'; choose one of none, flip, flip_translate"):
        ExperimentConfig(tta="bogus")


def test_the_cli_resolves_the_preset_and_an_empty_value_is_not_given():
    from anomaly_repr.cli import _config

    def config(*argv: str) -> ExperimentConfig:
        return _config(build_parser().parse_args(["train", *argv]))

    assert config("--preset", "fast") == ExperimentConfig.create(preset="fast")
    assert config("--preset", "fast", "--lr", "0.05", "--arch", "resnet8").lr == 0.05
    assert config("--preset", "fast", "--arch", "resnet8").arch == "resnet8"
    assert config("--preset", "fast", "--epochs", "").epochs == ExperimentConfig.create(preset="fast").epochs
    assert config("--epochs", "").epochs == ExperimentConfig().epochs
    with pytest.raises(ConfigError, match="epochs must be int"):
        config("--epochs", "two")
