"""`reproduce` in process on a private SQLite store: cells as trials of a study, intervals, resume, local
workers (the server-backed runs are in test_e2e.py, the PostgreSQL workers in test_distributed.py)."""

import dataclasses
import logging
import os
import re
import time

import mlflow
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from anomaly_repr.cli import _study as parse_study
from anomaly_repr.cli import build_parser, main
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import AnomalyReprError, ConfigError
from anomaly_repr.study import reproduce as study_module
from anomaly_repr.study.cells import Study
from anomaly_repr.study.lifecycle import identity_hash
from anomaly_repr.study.pool import PoolConfig, open_storage
from anomaly_repr.study.reproduce import run_reproduce

from conftest import best_deployable_auroc, markdown_tables

BASE = ExperimentConfig(epochs=2, oracle_trees=20, device="cpu", bootstrap=200)


def children(client: mlflow.MlflowClient, parent_id: str) -> list[mlflow.entities.Run]:
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_a_failing_study_leaves_no_finished_run(tracking, capsys):
    assert main(["reproduce", "--known_classes", "1,2,twelve"]) == 2
    assert "unknown known class 'twelve'" in capsys.readouterr().err
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and all(r.info.status == "FAILED" for r in runs)


def test_two_seeds_and_two_splits_give_means_intervals_choices_ranks_and_a_child_each(tracking):
    parent_id = run_reproduce(Study(BASE, seeds=(0, 1), splits=(0, 1), methods=("classifier", "oracle_rep")))
    client = mlflow.MlflowClient(tracking)
    parent = client.get_run(parent_id)
    kids = children(client, parent_id)
    assert sorted((c.data.tags["method"], c.data.tags["split"], c.data.tags["seed"]) for c in kids) == [
        (m, split, seed) for m in ("classifier", "oracle_rep") for split in "01" for seed in "01"]
    # each cell names the machine it ran on: the CPU's model as the system reports it, and its cores
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    assert all(c.data.tags["machine"].startswith(cpu) and f"{os.cpu_count()} cores" in c.data.tags["machine"]
               for c in kids)
    values = [c.data.metrics["test/max_logit/auroc"] for c in kids if c.data.tags["method"] == "classifier"]
    m = parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert m["test/classifier/max_logit/auroc"] == pytest.approx(np.mean(values))
    assert m["test/classifier/max_logit/auroc_mean"] == pytest.approx(np.mean(values))
    assert m["test/classifier/max_logit/auroc_std"] == pytest.approx(np.std(values, ddof=1))
    assert m["test/classifier/max_logit/auroc_ci95"] == pytest.approx(3.1824 * np.std(values, ddof=1) / np.sqrt(4),
                                                                      rel=1e-3)
    for key in ("test/classifier/max_logit/auroc", "test/classifier/knn/fpr95", "test/q1_gap", "test/q2_gap",
                "test/q1_gap_max_logit"):
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"], key
    assert 0 <= m["test/q1_gap_p"] <= m["test/q1_gap_p_holm"] <= 1 and "test/q2_gap_ci95" in m
    assert m["test/classifier/knn/vs_max_logit_p"] <= m["test/classifier/knn/vs_max_logit_p_holm"] <= 1
    assert parent.data.params["seed"] == "0,1" and parent.data.tags["seeds"] == "0,1"
    # the best scorers were chosen on the children's validation AUROCs, and say so
    classic = parent.data.tags["q1_best_classic"]
    rf = m["test/classifier/oracle_rf/auroc"]
    assert m["test/q1_gap"] == pytest.approx(rf - m[f"test/classifier/{classic}/auroc"])
    assert m["test/q1_best_deployable"] == best_deployable_auroc(parent, "classifier")
    assert "test/q1_gap_test_argmax" in m and "test/q1_gap_test_argmax_ci_low" not in m
    table = mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md")
    assert "**seeds**: 0,1" in table and "**epochs**: 2" in table and "**commit**:" in table
    assert f"q1_best_classic = {classic}" in table and "Friedman" in table
    [row] = [row for row in markdown_tables(table)["classic"] if row[0] == "classifier"]
    assert all(" +- " in cell and " [" in cell for cell in row[1:])
    [q1] = [row for row in markdown_tables(table)["gaps"] if row[0] == "test/q1_gap"]
    assert f"{m['test/q1_gap_p_holm']:.3f}" in q1 and f"{m['test/q1_gap'] + m['test/q1_gap_ci95']:+.3f}]" in q1[-1]
    gaps = mlflow.artifacts.load_text(f"runs:/{parent_id}/results/gaps.csv").splitlines()
    assert gaps[0].startswith("gap,") and any(line.startswith("test/q1_gap,") for line in gaps)
    csv = mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.csv").splitlines()
    assert csv[0].startswith("model,") and any(line.startswith("classifier,") for line in csv)
    by_split = mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_by_split.csv").splitlines()
    assert by_split[0].startswith("model,split,") and len(by_split) == 5
    # scorers ranked over the classifier's four runs, with Friedman's test and the figure of its post-hoc tests
    assert m["ranks/blocks"] == 4 and 0 <= m["ranks/friedman_p"] <= 1
    ranks = mlflow.artifacts.load_text(f"runs:/{parent_id}/results/ranks.csv").splitlines()
    assert ranks[0].startswith("scorer,mean_rank,p_holm vs ") and len(ranks) > 5
    assert {"figures/accuracy_vs_auroc.png", "figures/critical_difference.png"} <= {
        a.path for a in client.list_artifacts(parent_id, "figures")}
    assert m["accuracy_vs_auroc/n_models"] == 4 and parent.data.tags["known_class_sets"].startswith("split 0: ")
    # the analysis curve: validation AUROC per epoch beside validation accuracy, in every classifier child
    classifier = next(c for c in kids if c.data.tags["method"] == "classifier")
    assert [h.step for h in client.get_metric_history(classifier.info.run_id, "val/max_logit/auroc")] == [1, 2]
    # each cell was a trial of the study named on the parent
    cells = optuna.load_study(study_name=parent.data.tags["optuna_study"], storage=parent.data.tags["optuna_storage"])
    assert sorted((t.params["method"], t.params["split"], t.params["seed"]) for t in cells.trials
                  if t.state == TrialState.COMPLETE) == [(m, split, seed) for m in ("classifier", "oracle_rep")
                                                        for split in (0, 1) for seed in (0, 1)]


def test_a_rerun_by_name_retrains_only_the_cells_without_a_result(tracking, monkeypatch):
    """The same command again is a new study; with the failed study's name it resumes that study."""
    real = study_module.train_logged

    def broken(prep, *args, **kwargs):
        if prep.cfg.method == "oracle_rep":
            raise RuntimeError("out of memory (simulated)")
        return real(prep, *args, **kwargs)

    study = Study(BASE.replace(bootstrap=0), methods=("classifier", "oracle_rep"))
    monkeypatch.setattr(study_module, "train_logged", broken)
    with pytest.raises(AnomalyReprError, match=r"1 of 2 cells have no result, first oracle_rep split 0 seed 0 "
                                               r"\(RuntimeError: out of memory \(simulated\)\); run the command "
                                               r"again with --study_name (reproduce-cells-digits-\S+) ") as failed:
        run_reproduce(study)
    name = re.search(r"--study_name (\S+)", str(failed.value)).group(1)
    client = mlflow.MlflowClient(tracking)
    [parent] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'reproduce'",
                                  output_format="list")
    assert parent.info.status == "FAILED" and parent.data.tags["optuna_study"] == name

    monkeypatch.setattr(study_module, "train_logged", real)
    again = run_reproduce(study)  # the same command: a new study and parent, every cell trained
    assert again != parent.info.run_id and client.get_run(again).data.tags["optuna_study"] not in ("", name)
    assert len(children(client, again)) == 2 and client.get_run(again).info.status == "FINISHED"
    resumed = dataclasses.replace(study, pool=PoolConfig(study_name=name))
    assert run_reproduce(resumed) == parent.info.run_id  # named: the failed study resumed, not started again
    kids = children(client, parent.info.run_id)
    assert sorted((c.data.tags["method"], c.info.status) for c in kids) == [
        ("classifier", "FINISHED"), ("oracle_rep", "FAILED"), ("oracle_rep", "FINISHED")]
    parent = client.get_run(parent.info.run_id)
    m = parent.data.metrics
    assert parent.info.status == "FINISHED"  # and its gaps read the retried cell's result
    q2 = m["test/oracle_rep/oracle_rf/auroc"] - m["test/classifier/oracle_rf/auroc"]
    assert m["test/q2_gap"] == pytest.approx(q2)
    [retried] = [c for c in kids if c.data.tags["method"] == "oracle_rep" and c.info.status == "FINISHED"]
    assert m["test/oracle_rep/oracle_rf/auroc"] == pytest.approx(retried.data.metrics["test/oracle_rf/auroc"])
    # optuna-dashboard's card: a cell queue named as one, its settings in words, the identity as a short hash
    storage, _ = open_storage(PoolConfig().storage_spec(tracking), PoolConfig())
    queue = optuna.load_study(study_name=name, storage=storage)
    assert name.startswith("reproduce-cells-digits-") and queue.metric_names == ["cell's val accuracy (not optimised)"]
    card = {key: queue.user_attrs.get(key) for key in ("kind", "settings", "identity_hash", "identity")}
    assert card == {"kind": study_module.QUEUE, "settings": study.settings(),
                    "identity_hash": identity_hash(study.identity()), "identity": None}  # no 1.7k-character JSON
    assert "methods classifier,oracle_rep; splits 0; seeds 0" in study.settings()
    with pytest.raises(ConfigError, match="was created with epochs='2', this run has epochs='3'"):
        run_reproduce(dataclasses.replace(study, base=study.base.replace(epochs=3), pool=PoolConfig(study_name=name)))


def test_two_local_workers_share_a_journal_study(tracking, tmp_path, monkeypatch):
    real = study_module.train_logged

    def slow(*args, **kwargs):  # the driver's cells only (the worker is another process): the worker, which
        time.sleep(8)  # needs seconds to start, must find cells left however fast the driver trains
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "train_logged", slow)
    pool = PoolConfig(workers=2, storage=f"journal:{tmp_path}/cells.journal")
    study = Study(BASE.replace(val_auroc_every=0), seeds=(0, 1), methods=("classifier", "oracle_rep"), pool=pool)
    parent_id = run_reproduce(study)
    client = mlflow.MlflowClient(tracking)
    kids = children(client, parent_id)
    assert len(kids) == 4 and all(c.info.status == "FINISHED" for c in kids)
    assert len({c.data.tags["worker"] for c in kids}) == 2  # the driver and its local worker both ran cells
    assert client.get_run(parent_id).info.status == "FINISHED"
    # A journal has no heartbeats: a trial left RUNNING by a dead process is failed when the driver resumes.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{tmp_path}/cells.journal"))
    name = client.get_run(parent_id).data.tags["optuna_study"]
    orphan = optuna.load_study(study_name=name, storage=storage).ask()
    assert run_reproduce(dataclasses.replace(study, pool=pool.replace(study_name=name))) == parent_id
    assert len(children(client, parent_id)) == 4  # every cell had its result: nothing trained again
    cells = optuna.load_study(study_name=client.get_run(parent_id).data.tags["optuna_study"], storage=storage)
    assert cells.trials[orphan.number].state == TrialState.FAIL


def test_splits_zero_and_one_share_their_classes_and_say_so(tracking, caplog):
    args = build_parser().parse_args(["reproduce", "--dataset", "cifar10", "--split", "all", "--download", "false",
                                      "--data_root", "nowhere"])
    study = parse_study(args)
    assert study.splits == (0, 1, 2, 3, 4) and study.shared_class_sets() == [(0, 1)]
    assert Study(study.base, splits=(1, 2)).shared_class_sets() == []
    with caplog.at_level(logging.WARNING), pytest.raises(AnomalyReprError, match="CIFAR-10 not found"):
        run_reproduce(study)
    assert "splits 0,1 of cifar10 hold the same known classes" in caplog.text
    with pytest.raises(ConfigError, match="split=all needs a dataset with standard splits"):
        parse_study(build_parser().parse_args(["reproduce", "--split", "all"]))
    with pytest.raises(ConfigError, match="split=all runs the standard splits' class sets"):
        parse_study(build_parser().parse_args(["reproduce", "--dataset", "cifar10", "--split", "all",
                                               "--known_classes", "0,1"]))
    with pytest.raises(ConfigError, match="start each other worker with role=worker alone"):
        PoolConfig(role="worker", workers=2)


def test_augmentation_policies_are_rows_measured_against_crop_and_flip(tracking):
    study = parse_study(build_parser().parse_args(
        ["reproduce", "--augment", "trivialaugment,crop_flip", "--methods", "classifier,hybrid", "--epochs", "2",
         "--oracle_trees", "20", "--bootstrap", "100", "--device", "cpu"]))
    assert study.policies == ("trivialaugment", "crop_flip") and study.reference_policy == "crop_flip"
    parent_id = run_reproduce(study)
    client = mlflow.MlflowClient(tracking)
    parent = client.get_run(parent_id)
    kids = children(client, parent_id)
    assert sorted((c.data.params["method"], c.data.params["augment"]) for c in kids) == sorted(
        [(m, a) for m in ("classifier", "hybrid") for a in ("crop_flip", "trivialaugment")])
    assert parent.info.status == "FINISHED" and parent.data.params["augment"] == "trivialaugment,crop_flip"
    # the UI's name column cuts names short: model (method.policy) first, then split/seed; tags to group by
    assert parent.info.run_name == "reproduce digits"
    assert sorted(c.info.run_name for c in kids) == ["classifier 0/0", "classifier.trivialaugment 0/0",
                                                     "hybrid 0/0", "hybrid.trivialaugment 0/0"]
    assert all((c.data.tags["method"], c.data.tags["split"], c.data.tags["seed"]) ==
               (c.data.params["method"], "0", "0") for c in kids)
    m = parent.data.metrics
    row = "classifier.trivialaugment"
    policy_kids = [c for c in kids if c.data.params["augment"] == "trivialaugment"
                   and c.data.tags["method"] == "classifier"]
    assert m[f"test/{row}/acc"] == pytest.approx(np.mean([c.data.metrics["test/acc"] for c in policy_kids]))
    gain = m[f"test/{row}/max_logit/auroc"] - m["test/classifier/max_logit/auroc"]
    assert m[f"test/gain/{row}/max_logit"] == pytest.approx(gain)
    assert m[f"test/gain/{row}/max_logit_ci_low"] <= m[f"test/gain/{row}/max_logit_ci_high"]
    assert 0 <= m[f"test/gain/{row}/oracle_rf_p"] <= 1
    best = best_deployable_auroc(parent, row) - best_deployable_auroc(parent, "classifier")
    assert m[f"test/gain/{row}/best_score"] == pytest.approx(best)
    assert m[f"test/gain/{row}/acc"] == pytest.approx(m[f"test/{row}/acc"] - m["test/classifier/acc"])
    # each method against itself under crop and flip; the reference policy's gaps as before
    for method, reference in (("hybrid.trivialaugment", "hybrid"), ("hybrid", "classifier")):
        gain = m[f"test/{method}/oracle_rf/auroc"] - m[f"test/{reference}/oracle_rf/auroc"]
        assert m[f"test/gain/{method}/oracle_rf"] == pytest.approx(gain)
    classic = parent.data.tags["q1_best_classic"]  # chosen on validation AUROCs
    rf = m["test/classifier/oracle_rf/auroc"]
    assert m["test/q1_gap"] == pytest.approx(rf - m[f"test/classifier/{classic}/auroc"])
    assert not any(k.startswith("test/gain/classifier/") for k in m)
    table = mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md")
    assert f"| {row} |" in table and "| classifier |" in table
    assert m["accuracy_vs_auroc/n_models"] == 4


def test_an_unknown_policy_in_the_list_is_a_one_line_error(tracking, capsys):
    assert main(["reproduce", "--augment", "crop_flip,cutout"]) == 2
    assert "unknown augment 'cutout'" in capsys.readouterr().err
