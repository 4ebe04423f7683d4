import numpy as np
import pytest
import torch

import anomaly_repr.engine.device as device_module
import anomaly_repr.engine.train as train_module
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.data.sources import load_source
from anomaly_repr.data.split import OpenSetSplit
from anomaly_repr.engine.train import TrainData, TrainHooks, lr_factor, train
from anomaly_repr.methods import method_for
from anomaly_repr.models.backbones import create_model


@pytest.fixture(scope="module")
def digits():
    cfg = ExperimentConfig(epochs=4, batch_size=64, device="cpu")
    data = load_source(cfg)
    split = OpenSetSplit.make(cfg, data.labels, data.classes)
    labels = torch.as_tensor(split.open_labels(data.labels))
    tr, va = split.nominal(split.train, data.labels), split.nominal(split.val, data.labels)
    x = data.read(np.arange(len(data.labels)))
    return cfg, x[tr], labels[tr], x[va], labels[va], Normalizer.fit(x[tr])


def data_of(digits):
    return TrainData(*digits[1:], hflip=False, device=torch.device("cpu"))


def run(cfg, digits, checkpoint, resume=False, on_epoch=None):
    torch.manual_seed(123)  # same initial weights for every run
    model = create_model(cfg.arch, 6, 1)
    return train(method_for(cfg), model, data_of(digits), checkpoint, resume, TrainHooks(on_epoch))


def test_learns_the_known_classes(digits, tmp_path):
    result = run(digits[0], digits, tmp_path / "c.pt")
    assert result.best_val_acc > 0.8  # chance is 1/6
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.images_per_second > 0


def test_resume_after_a_crash_matches_an_uninterrupted_run(digits, tmp_path):
    cfg = digits[0]
    whole = run(cfg, digits, tmp_path / "whole.pt")

    def crash(model, row, val_logits):
        if row["epoch"] == 3:
            raise KeyboardInterrupt  # dies during epoch 3's bookkeeping, before its checkpoint

    with pytest.raises(KeyboardInterrupt):
        run(cfg, digits, tmp_path / "part.pt", on_epoch=crash)
    saved = torch.load(tmp_path / "part.pt", weights_only=True)
    assert saved["epoch"] == 2
    resumed = run(cfg, digits, tmp_path / "part.pt", resume=True)
    assert [r["val/acc"] for r in resumed.history] == [r["val/acc"] for r in whole.history]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_early_stopping_keeps_the_best_epoch(digits, tmp_path, monkeypatch):
    accs = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(train_module, "hits", lambda *a, **k: next(accs))
    states = {}

    def remember(model, row, val_logits):
        states[row["epoch"]] = {k: v.clone() for k, v in model_ref[0].state_dict().items()}

    model_ref = []
    original = train_module.train

    def spy(method, model, *a, **k):
        model_ref.append(model)
        return original(method, model, *a, **k)

    cfg = digits[0].replace(epochs=10, patience=2)
    result = spy(method_for(cfg), create_model(cfg.arch, 6, 1), data_of(digits), tmp_path / "c.pt",
                 hooks=TrainHooks(remember))
    assert result.best_epoch == 1 and len(result.history) == 3
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, states[1][key]), key


def test_onecycle_and_cosine_schedules():
    assert lr_factor("onecycle", 0, 100) == 0 and lr_factor("onecycle", 20, 100) == 1
    assert lr_factor("onecycle", 100, 100) == 0 and lr_factor("onecycle", 60, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 0, 100) == 1 and lr_factor("cosine", 100, 100) == pytest.approx(0)


def test_initial_weights_follow_the_seed(tracking):
    from anomaly_repr.engine.workflow import new_model, prepare

    prep = prepare(ExperimentConfig(), parts=("train",))
    a, b = new_model(prep), new_model(prep)
    c = new_model(prep.__class__(**(vars(prep) | {"cfg": prep.cfg.replace(seed=1)})))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.head.weight, c.head.weight)


# --- precision --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_follows_the_cpus_native_bfloat16(monkeypatch, native):
    monkeypatch.setattr(device_module, "bf16_native", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert device_module.autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert device_module.autocast_dtype("true", cpu) == torch.bfloat16  # forced, emulated where not native
    assert device_module.autocast_dtype("false", cpu) is None
    assert device_module.autocast_dtype("auto", cuda) == torch.bfloat16
    assert device_module.autocast_dtype("false", cuda) is None


def test_bad_amp_values_are_one_line_errors():
    from anomaly_repr.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown amp 'fp16'; choose one of auto, true, false"):
        ExperimentConfig(amp="fp16")
    assert ExperimentConfig(amp=True).amp == "true"  # configs logged when amp was a bool


def test_a_bfloat16_run_keeps_float32_outputs_and_checkpoints(digits, tmp_path):
    cfg = digits[0].replace(amp="true", epochs=1)
    result = run(cfg, digits, tmp_path / "c.pt", on_epoch=lambda model, row, val_logits: None)
    assert result.precision == "torch.bfloat16"
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in saved["model"].values() if v.is_floating_point())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = result.model(digits[3][:8].float())
    assert out.logits.dtype == out.z.dtype == torch.float32


def test_bfloat16_and_float32_reach_nearly_the_same_accuracy(digits, tmp_path):
    fp32 = run(digits[0].replace(amp="false"), digits, tmp_path / "a.pt")
    bf16 = run(digits[0].replace(amp="true"), digits, tmp_path / "b.pt")
    assert fp32.precision == "torch.float32" and bf16.precision == "torch.bfloat16"
    assert bf16.best_val_acc > 0.8 and abs(bf16.best_val_acc - fp32.best_val_acc) < 0.05


def test_the_per_epoch_validation_aurocs_skip_non_finite_scores(caplog):
    from anomaly_repr.engine.evaluation import classic_val_aurocs
    from anomaly_repr.engine.workflow import new_model, prepare

    prep = prepare(ExperimentConfig(device="cpu"))
    model = new_model(prep)
    normalizer = Normalizer.fit(prep.images(prep.split.train))
    aurocs = classic_val_aurocs(prep, model, normalizer)
    assert sorted(aurocs) == ["val/energy/auroc", "val/entropy/auroc", "val/max_logit/auroc", "val/msp/auroc"]
    assert all(0 <= v <= 1 for v in aurocs.values())
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))  # what a diverging head gives: the curve skips, training goes on
    assert classic_val_aurocs(prep, model, normalizer) == {}
    assert "val/max_logit/auroc not logged" in caplog.text


# --- the recipe: warm-up, the weights' moving average, augmentation policies --------------------------------

def test_cosine_warms_up_linearly_then_decays():
    assert lr_factor("cosine", 0, 100, warmup=10) == pytest.approx(0.1)
    assert lr_factor("cosine", 9, 100, warmup=10) == 1 and lr_factor("cosine", 10, 100, warmup=10) == 1
    assert lr_factor("cosine", 55, 100, warmup=10) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100, warmup=10) == pytest.approx(0)


def test_the_moving_average_is_what_validation_selects_and_the_caller_gets(digits, tmp_path):
    cfg = digits[0].replace(ema_decay=0.9, epochs=3)
    seen, training = {}, []
    original = train_module.train

    def spy(method, model, *a, **k):
        training.append(model)
        return original(method, model, *a, **k)

    def remember(model, row, val_logits):
        seen[row["epoch"]] = (model, {k: v.clone() for k, v in model.state_dict().items()},
                              {k: v.clone() for k, v in training[0].state_dict().items()})

    result = spy(method_for(cfg), create_model(cfg.arch, 6, 1), data_of(digits), tmp_path / "c.pt",
                 hooks=TrainHooks(remember))
    averaged, best, _ = seen[result.best_epoch]
    assert averaged is not training[0]  # validation read the average, not the trained weights
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, best[key]), key
    _, average, trained = seen[3]
    assert not torch.equal(average["head.weight"], trained["head.weight"])
    cpu = torch.device("cpu")  # the validation pass runs in training's precision
    precision = device_module.autocast_dtype(cfg.amp, cpu)
    assert device_module.accuracy(result.model, *digits[3:], cpu, precision=precision) == result.best_val_acc
    assert "ema" in torch.load(tmp_path / "c.pt", weights_only=True)


def test_the_moving_average_of_two_steps_by_hand(digits, tmp_path, monkeypatch):
    from anomaly_repr.methods.base import Method

    decay, after_step, averaged = 0.75, [], {}
    cfg = digits[0].replace(ema_decay=decay, epochs=2, batch_size=4096, lr=0.5)  # one step an epoch
    real = Method.train_step

    def remember_step(self, model, *a, **k):
        loss = real(self, model, *a, **k)
        after_step.append({name: v.detach().clone() for name, v in model.state_dict().items()})
        return loss

    def remember_average(model, row, val_logits):
        averaged[row["epoch"]] = {name: v.detach().clone() for name, v in model.state_dict().items()}

    monkeypatch.setattr(Method, "train_step", remember_step)
    run(cfg, digits, tmp_path / "c.pt", on_epoch=remember_average)
    first, second = after_step
    compared = 0
    for name, value in averaged[2].items():
        if value.is_floating_point():
            # the first update copies the weights; the second moves them (1 - decay) of the way to the new ones
            expected = decay * first[name] + (1 - decay) * second[name]
            assert torch.allclose(value, expected, atol=1e-6), name
            assert torch.equal(averaged[1][name], first[name]), name
            compared += 1
    assert compared > 10 and not torch.equal(first["head.weight"], second["head.weight"])


@pytest.mark.parametrize("recipe", [{"ema_decay": 0.9}, {"augment": "trivialaugment", "random_erasing": 0.5,
                                                          "mixup": 0.2, "cutmix": 1.0}])
def test_resume_with_the_recipe_matches_an_uninterrupted_run(digits, tmp_path, recipe):
    cfg = digits[0].replace(**recipe)
    whole = run(cfg, digits, tmp_path / "whole.pt")

    def crash(model, row, val_logits):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, digits, tmp_path / "part.pt", on_epoch=crash)
    resumed = run(cfg, digits, tmp_path / "part.pt", resume=True)
    assert [r["val/acc"] for r in resumed.history] == [r["val/acc"] for r in whole.history]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment", "autoaugment"])
def test_every_policy_trains_on_digits(digits, tmp_path, policy):
    result = run(digits[0].replace(augment=policy, epochs=3), digits, tmp_path / "c.pt")
    assert result.best_val_acc > 0.5  # chance is 1/6
