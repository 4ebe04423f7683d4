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
