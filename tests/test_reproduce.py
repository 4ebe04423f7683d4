"""`reproduce` in process on a private SQLite store: repeats, image folders, structure."""

import mlflow
import pytest

from anomaly_repr.cli import main

from conftest import write_image


def children_of(parent_id: str) -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_several_seeds_give_mean_and_std_on_an_image_folder(tracking, tmp_path, capsys):
    for c, name in enumerate(["beetle", "leaf", "moth", "rock", "wasp"]):
        for i in range(8):
            write_image(tmp_path / "photos" / name / f"{i}.png", (10, 10), 30 + 45 * c + i)
    code = main(["reproduce", "--dataset", "imagefolder", "--data_root", str(tmp_path / "photos"), "--image_size", "8",
                 "--known_classes", "beetle,moth,wasp", "--seeds", "0,1", "--epochs", "3", "--batch_size", "8",
                 "--oracle_trees", "30", "--recon_weight", "0", "--godin", "false"])
    assert code == 0, capsys.readouterr().err
    mlflow.set_tracking_uri(tracking)
    parent = mlflow.get_run(capsys.readouterr().out.strip().splitlines()[-1])
    assert parent.info.status == "FINISHED" and parent.data.params["seed"] == "0,1"
    children = children_of(parent.info.run_id)
    assert sorted((c.data.tags["model"], c.data.params["seed"]) for c in children) == [
        ("classifier", "0"), ("classifier", "1"), ("oracle_rep", "0"), ("oracle_rep", "1")]
    m = parent.data.metrics
    per_seed = [c.data.metrics["test/max_logit/auroc"] for c in children if c.data.tags["model"] == "classifier"]
    assert m["test/classifier/max_logit/auroc"] == pytest.approx(sum(per_seed) / 2)
    assert "test/classifier/max_logit/auroc_std" in m and "test/oracle_rep/oracle_rf/auroc_std" in m
    table = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/results/auroc_table.csv")
    assert "+-" in table


def test_a_failing_study_leaves_no_finished_run(tracking, capsys):
    assert main(["reproduce", "--known_classes", "1,2,twelve"]) == 2
    assert "unknown known class 'twelve'" in capsys.readouterr().err
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and all(r.info.status == "FAILED" for r in runs)
