"""`reproduce` in process on a private SQLite store (the server-backed runs are in test_e2e.py)."""

import mlflow
import numpy as np
import pytest

from anomaly_repr.cli import main


def test_a_failing_study_leaves_no_finished_run(tracking, capsys):
    assert main(["reproduce", "--known_classes", "1,2,twelve"]) == 2
    assert "unknown known class 'twelve'" in capsys.readouterr().err
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and all(r.info.status == "FAILED" for r in runs)


def test_several_seeds_give_means_stds_and_a_child_each(tracking):
    from anomaly_repr.config import ExperimentConfig
    from anomaly_repr.study import Study, run_reproduce

    base = ExperimentConfig(epochs=1, oracle_trees=20, device="cpu")
    parent_id = run_reproduce(Study(base, seeds=(0, 1), methods=("classifier", "oracle_rep")))
    client = mlflow.MlflowClient(tracking)
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted((c.data.tags["method"], c.data.tags["seed"]) for c in children) == [
        ("classifier", "0"), ("classifier", "1"), ("oracle_rep", "0"), ("oracle_rep", "1")]
    values = [c.data.metrics["test/max_logit/auroc"] for c in children if c.data.tags["method"] == "classifier"]
    m = parent.data.metrics
    assert m["test/classifier/max_logit/auroc"] == pytest.approx(np.mean(values))
    assert m["test/classifier/max_logit/auroc_std"] == pytest.approx(np.std(values, ddof=1))
    assert parent.data.params["seed"] == "0,1" and parent.data.tags["seeds"] == "0,1"
    table = mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md")
    assert " +- " in table.splitlines()[2]
