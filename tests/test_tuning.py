"""Tuning: the sealed test split, protocols, the objective's child runs, pruning, resume, workers, storages."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import sqlalchemy

from anomaly_repr.cli import main
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.sources import SOURCES, ImageData, load_source
from anomaly_repr.data.split import OpenSetSplit
from anomaly_repr.engine.workflow import prepare, unseal
from anomaly_repr.errors import AnomalyReprError, ConfigError, SealedError
from tuning.config import TuneConfig
from tuning.objective import Objective, ProtocolView
from tuning.study import run_tune

from conftest import needs_postgres

FAST = ExperimentConfig(epochs=2, batch_size=64, oracle_trees=20, device="cpu")  # digits, resnet8


def tune_cfg(**kw) -> TuneConfig:
    return TuneConfig(**({"n_trials": 2, "startup_trials": 1, "heartbeat_interval": 2, "pruner": "none"} | kw))


def runs_of(parent_id: str):
    parent = mlflow.get_run(parent_id)
    children = mlflow.search_runs([parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    trials = sorted((r for r in children if r.data.tags.get("stage") == "trial"),
                    key=lambda r: int(r.data.tags["trial_number"]))
    tests = [r for r in children if r.data.tags.get("stage") == "test"]
    return parent, trials, tests


# --- the sealed view ------------------------------------------------------------------------------------

def test_sealed_view_refuses_test_images_and_unseal_reads_them(tracking):
    sealed = prepare(FAST, parts=("train", "val"))
    assert len(sealed.loaded) == len(sealed.split.train) + len(sealed.split.val)
    with pytest.raises(SealedError, match="sealed"):
        sealed.images(sealed.split.test[:1])
    full = unseal(sealed)
    np.testing.assert_array_equal(full.images(full.split.test).numpy(), prepare(FAST).images(full.split.test).numpy())
    np.testing.assert_array_equal(full.images(full.split.val).numpy(), sealed.images(sealed.split.val).numpy())


@pytest.fixture
def guarded_digits(monkeypatch):
    """A digits source that raises on any read of a test index until the study holds all its trials."""
    digits = load_source(FAST)
    test = set(OpenSetSplit.make(FAST, digits.labels, digits.classes).test.tolist())
    reads: list[tuple[bool, int]] = []  # (asked for a test index, finished trials in the study at that moment)

    def finished_trials() -> int:
        try:
            study = optuna.load_study(study_name="sealed", storage="sqlite:///optuna.db")
        except KeyError:
            return 0
        return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))

    def read(index: np.ndarray):
        touches_test = bool(test & set(index.tolist()))
        reads.append((touches_test, finished_trials()))
        if touches_test and reads[-1][1] < 3:
            raise AssertionError("a test image was read before the search ended")
        return digits.read(index)

    monkeypatch.setitem(SOURCES, "guarded", lambda c: ImageData(digits.labels, digits.classes, digits.hflip,
                                                                digits.shape, read))
    return FAST.replace(dataset="guarded"), reads


def test_the_search_never_reads_a_test_image(tracking, guarded_digits):
    cfg, reads = guarded_digits
    parent_id = run_tune(cfg, tune_cfg(n_trials=3, study_name="sealed", pruner="none"))
    parent, trials, [test_run] = runs_of(parent_id)
    assert [r.data.tags["trial_state"] for r in trials] == ["COMPLETE"] * 3
    # One read of train + validation before the search, one of the test images after it, nothing else.
    assert reads == [(False, 0), (True, 3)]
    m = parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert m["test/max_logit/auroc"] == pytest.approx(test_run.data.metrics["test/max_logit/auroc"])
    assert m["tune/val_test_gap"] == pytest.approx(m["val/max_logit/auroc"] - m["test/max_logit/auroc"])


# --- protocols ------------------------------------------------------------------------------------------

def test_class_holdout_keeps_the_test_anomaly_classes_out_of_the_objective():
    data = load_source(FAST)
    split = OpenSetSplit.make(FAST, data.labels, data.classes)
    view = ProtocolView.make(split, data.labels, "class-holdout", 0.5, seed=0)
    assert len(view.tuning_classes) == 2 and len(view.test_classes) == 2
    assert set(view.tuning_classes) | set(view.test_classes) == set(split.unknown)
    names = np.array(data.classes)
    assert set(names[data.labels[view.val]]) == set(split.known) | set(view.tuning_classes)
    assert set(names[data.labels[view.test]]) == set(split.known) | set(view.test_classes)
    assert set(view.val) <= set(split.val) and set(view.test) <= set(split.test)
    everything = ProtocolView.make(split, data.labels, "val-anomalies", 0.5, seed=0)
    np.testing.assert_array_equal(everything.val, split.val)
    np.testing.assert_array_equal(everything.test, split.test)


def test_class_holdout_needs_two_anomaly_classes():
    data = load_source(FAST)
    split = OpenSetSplit.make(FAST.replace(num_known=9), data.labels, data.classes)
    with pytest.raises(ConfigError, match="at least two anomaly classes"):
        ProtocolView.make(split, data.labels, "class-holdout", 0.5, seed=0)


# --- settings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"target": "temperature"}, "unknown target 'temperature'"),
    ({"scorer": "oracle_rf"}, "learns from validation anomalies"),
    ({"scorer": "godin"}, "which target=recon_weight models lack"),
    ({"target": "godin", "scorer": "recon_error"}, "which target=godin models lack"),
    ({"scorer": "nope"}, "unknown scorer 'nope'"),
    ({"lambda_low": 0.0}, "0 < lambda_low < lambda_high"),
    ({"holdout_fraction": 1.0}, "holdout_fraction"),
    ({"n_trials": 0}, "n_trials must be a positive integer"),
    ({"timeout": float("nan")}, "timeout must be a finite number, got nan"),  # it ran no trial
    ({"lambda_high": float("inf")}, "lambda_high must be a finite number, got inf"),
])
def test_bad_tune_settings_are_one_line_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        TuneConfig(**kw)


def test_cli_rejects_bad_settings_before_any_run(tracking, capsys):
    assert main(["tune", "--target", "godin", "--scorer", "max_logit,oracle_knn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "anomaly-repr: error: scorer oracle_knn learns from validation anomalies and cannot be the objective"
    assert main(["tune", "--storage", "nowhere.db"]) == 2
    assert "storage must be journal:<file> or a database URL" in capsys.readouterr().err


# --- the objective --------------------------------------------------------------------------------------

class PruneAtEpoch2(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.last_step == 2


def test_a_pruned_trial_ends_its_run_killed_with_its_epochs_logged(tracking):
    cfg, tcfg = FAST.replace(epochs=4), tune_cfg()
    sealed = prepare(cfg, parts=("train", "val"))
    view = ProtocolView.make(sealed.split, sealed.data.labels, tcfg.protocol, 0.5, seed=0)
    study = optuna.create_study(direction="maximize", pruner=PruneAtEpoch2())
    mlflow.set_experiment("objective")
    with mlflow.start_run() as parent:
        objective = Objective(sealed, tcfg, view, mlflow.get_run(parent.info.run_id), "s", Path("checkpoints"))
        study.optimize(objective, n_trials=1)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the trial's run ended, not its parent
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and sorted(trial.intermediate_values) == [1, 2]
    run = mlflow.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "PRUNED"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/max_logit/auroc")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == [trial.intermediate_values[1], trial.intermediate_values[2]]


# --- studies --------------------------------------------------------------------------------------------

def test_resume_by_study_name_adds_only_the_missing_trials(tracking):
    first = run_tune(FAST, tune_cfg(n_trials=2, study_name="again"))
    second = run_tune(FAST, tune_cfg(n_trials=3, study_name="again"))
    assert second == first  # the same parent run
    parent, trials, tests = runs_of(first)
    assert [r.data.tags["trial_number"] for r in trials] == ["0", "1", "2"] and len(tests) == 2
    study = optuna.load_study(study_name="again", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert study.trials[0].params == {"recon_weight": 0.9}  # the talk's λ, enqueued first
    assert parent.info.status == "FINISHED" and parent.data.metrics["tune/trials_complete"] == 3
    assert parent.data.tags["best_params.recon_weight"] == str(study.best_params["recon_weight"])
    with pytest.raises(ConfigError, match="was created with lambda_high='10.0'"):
        run_tune(FAST, tune_cfg(n_trials=3, study_name="again", lambda_high=5.0))


def test_two_workers_share_a_journal_study(tracking, tmp_path, monkeypatch):
    import tuning.objective

    real = tuning.objective.train_logged

    def slow(*args, **kwargs):  # the driver's trials only (the worker is another process): the worker, which
        time.sleep(6)  # needs seconds to start, must find trials left however fast the driver trains
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning.objective, "train_logged", slow)
    journal = f"journal:{tmp_path}/study.log"
    cfg = FAST.replace(epochs=4)
    parent_id = run_tune(cfg, tune_cfg(n_trials=6, workers=2, storage=journal, target="godin", study_name="pair"))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{tmp_path}/study.log"))
    study = optuna.load_study(study_name="pair", storage=storage)
    counted = [t for t in study.trials if not t.user_attrs.get("surplus")]  # surplus: pruned before training
    assert len(counted) == 6 and all(t.state.is_finished() for t in study.trials)
    parent, trials, [test_run] = runs_of(parent_id)
    # One child run per trial, whichever process ran it.
    assert sorted(t.user_attrs["mlflow_run_id"] for t in counted) == sorted(r.info.run_id for r in trials)
    assert len({r.data.tags["worker"] for r in trials}) == 2
    assert test_run.data.tags["model"] == "godin"
    assert parent.data.metrics["test/godin/auroc"] == pytest.approx(test_run.data.metrics["test/godin/auroc"])


@pytest.fixture
def postgres_url():
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"optuna_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.mark.distributed
@needs_postgres
def test_postgresql_storage_with_heartbeats(tracking, postgres_url):
    started = time.time()
    parent_id = run_tune(FAST, tune_cfg(n_trials=2, storage=postgres_url, study_name="pg"))
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    # The storage recorded a heartbeat for each trial while it ran.
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as db:
        assert db.execute(sqlalchemy.text("SELECT count(DISTINCT trial_id) FROM trial_heartbeats")).scalar() == 2
    engine.dispose()
    assert mlflow.get_run(parent_id).data.tags["optuna_storage"] == postgres_url
    assert time.time() - started < 120


def test_diverging_trials_fail_and_three_in_a_row_stop_the_search(tracking):
    from anomaly_repr.errors import AnomalyReprError

    diverging = FAST.replace(lr=1e12, batch_size=8, epochs=1)
    with pytest.raises(AnomalyReprError, match="3 trials in a row failed"):
        run_tune(diverging, tune_cfg(n_trials=5, study_name="diverging"))
    study = optuna.load_study(study_name="diverging", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3  # then the process stopped
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    assert len(trials) == 3 and all(r.info.status == "FAILED" and r.data.tags["trial_state"] == "FAIL" for r in trials)
    assert [r.info.status for r in runs if r.data.tags.get("stage") == "tune"] == ["FAILED"]


def test_timeout_stops_starting_trials(tracking):
    # 40 epochs without early stopping: a trial outlasts the second even on a fast CPU (10 epochs did not)
    parent_id = run_tune(FAST.replace(epochs=40, patience=0), tune_cfg(n_trials=10, timeout=1.0, study_name="brief"))
    study = optuna.load_study(study_name="brief", storage="sqlite:///optuna.db")
    assert len(study.trials) == 1  # the first trial outlasts the timeout; no second one starts
    assert mlflow.get_run(parent_id).data.metrics["tune/trials_complete"] == 1


def test_lambda_study_on_an_image_folder_with_hyperband(tracking, image_folder):
    cfg = FAST.replace(dataset="imagefolder", data_root=str(image_folder), image_size=16, epochs=3)
    parent_id = run_tune(cfg, tune_cfg(n_trials=2, pruner="hyperband", protocol="val-anomalies"))
    parent, trials, [test_run] = runs_of(parent_id)
    assert len(trials) == 2 and trials[0].data.params["recon_weight"] == "0.9"
    assert parent.data.tags["optuna_study"].startswith("recon_weight-imagefolder-val-anomalies-")
    assert test_run.data.tags["model"] == "hybrid"
    best = optuna.load_study(study_name=parent.data.tags["optuna_study"], storage=parent.data.tags["optuna_storage"])
    assert parent.data.metrics["val/max_logit/auroc"] == pytest.approx(best.best_value)
    assert test_run.data.params["recon_weight"] == str(best.best_params["recon_weight"])  # the best trial's λ
    assert parent.data.metrics["test/recon_error/auroc"] == pytest.approx(
        test_run.data.metrics["test/recon_error/auroc"])


def test_the_recipe_study_searches_the_training_recipe_on_validation_data(tracking):
    parent_id = run_tune(FAST.replace(schedule="cosine"), tune_cfg(n_trials=3, target="recipe", study_name="recipe"))
    parent, trials, tests = runs_of(parent_id)
    assert parent.info.status == "FINISHED" and len(trials) == 3 and len(tests) == 1
    searched = {"augment", "random_erasing", "mixup", "cutmix", "label_smoothing", "ema_decay", "warmup_epochs"}
    first = trials[0].data.params
    # the plain recipe is tried first: every other trial is compared with it
    assert (first["augment"], first["ema_decay"], first["mixup"], first["warmup_epochs"]) == ("crop_flip", "0.0",
                                                                                               "0.0", "0.0")
    assert all(t.data.params["method"] == "classifier" and t.data.params["objective_scorer"] == "max_logit"
               for t in trials)
    assert searched <= {k.removeprefix("best_params.") for k in parent.data.tags if k.startswith("best_params.")}
    study = optuna.load_study(study_name="recipe", storage=parent.data.tags["optuna_storage"])
    assert parent.data.metrics["val/max_logit/auroc"] == pytest.approx(study.best_value)
    assert all(set(t.params) == searched for t in study.trials)


def test_an_svgd_study_searches_repulsion_and_bandwidth(tracking):
    cfg = FAST.replace(epochs=1, ensemble_size=2)
    parent_id = run_tune(cfg, tune_cfg(n_trials=2, target="svgd", study_name="svgd"))
    parent, trials, _ = runs_of(parent_id)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    first = trials[0].data.params  # the defaults first
    assert (first["svgd_repulsion"], first["svgd_bandwidth"]) == ("0.03", "1.0")
    assert all(t.data.params["method"] == "svgd" for t in trials)
    study = optuna.load_study(study_name="svgd", storage=parent.data.tags["optuna_storage"])
    assert all(set(t.params) == {"svgd_repulsion", "svgd_bandwidth"} for t in study.trials)


def test_a_jem_study_searches_the_sampler_step_and_the_generative_weight(tracking):
    cfg = FAST.replace(epochs=1, jem_sgld_steps=2, jem_buffer_size=200, lr=0.05)
    parent_id = run_tune(cfg, tune_cfg(n_trials=2, target="jem", study_name="jem"))
    parent, trials, _ = runs_of(parent_id)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    first = trials[0].data.params  # the paper's values first
    assert (first["jem_sgld_step"], first["jem_weight"], first["objective_scorer"]) == ("1.0", "1.0", "jem_px")
    study = optuna.load_study(study_name="jem", storage=parent.data.tags["optuna_storage"])
    assert all(set(t.params) == {"jem_sgld_step", "jem_weight"} for t in study.trials)


def test_a_csi_study_searches_the_temperature(tracking):
    cfg = FAST.replace(epochs=1, csi_epochs=1, csi_jitter=0.0)  # digits: one channel
    parent_id = run_tune(cfg, tune_cfg(n_trials=2, target="csi", study_name="csi"))
    parent, trials, _ = runs_of(parent_id)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    first = trials[0].data.params  # the paper's value first; SupCSI trains no rotation loss in stage 1
    assert (first["csi_temperature"], first["csi_rotation_weight"], first["objective_scorer"]) == ("0.07", "0.0",
                                                                                                    "csi_ens")
    study = optuna.load_study(study_name="csi", storage=parent.data.tags["optuna_storage"])
    assert all(set(t.params) == {"csi_temperature"} for t in study.trials)
    assert "figures/param_importances.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id,
                                                                                                  "figures")}


def test_trials_over_the_time_budget_fail_and_the_search_goes_on_until_three_in_a_row(tracking):
    with pytest.raises(AnomalyReprError, match="3 trials in a row failed"):
        run_tune(FAST.replace(max_hours=1e-9), tune_cfg(n_trials=4, study_name="budget"))
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{tracking.removeprefix('sqlite:///')}"
                              .replace("mlflow.db", "optuna.db"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3


def test_a_recipe_study_tries_the_configured_recipe_first():
    from tuning.space import method_of

    def first(cfg: ExperimentConfig) -> dict:
        return method_of("recipe", cfg).talk_values(tune_cfg(target="recipe"))[0]

    assert first(FAST) == {"augment": "crop_flip", "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0,
                           "label_smoothing": 0.0, "ema_decay": 0.0}
    given = first(ExperimentConfig.create(preset="fast", ema_decay=0.99, label_smoothing=0.1, augment="randaugment"))
    assert (given["ema_decay"], given["label_smoothing"], given["augment"]) == (0.99, 0.1, "randaugment")
    # a value the search cannot take (ema_decay 0.995 is not among its choices) starts from the plain recipe's
    assert first(FAST.replace(ema_decay=0.995, label_smoothing=0.3))["ema_decay"] == 0.0
    assert first(FAST.replace(label_smoothing=0.3))["label_smoothing"] == 0.0
