"""`reproduce` in process on a private SQLite store (the server-backed runs are in test_e2e.py)."""

import mlflow

from anomaly_repr.cli import main


def test_a_failing_study_leaves_no_finished_run(tracking, capsys):
    assert main(["reproduce", "--known_classes", "1,2,twelve"]) == 2
    assert "unknown known class 'twelve'" in capsys.readouterr().err
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and all(r.info.status == "FAILED" for r in runs)
