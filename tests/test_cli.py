"""Bad input: one clear line naming the problem, a non-zero exit, and no run marked FINISHED."""

import json
import subprocess
import sys

import mlflow
import pytest

from anomaly_repr import cli as cli_module
from anomaly_repr.config import ExperimentConfig

from conftest import messy_folder, write_image


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anomaly_repr", *args], capture_output=True, text=True,
                          timeout=timeout)


def cli_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same `main` as the console script, without paying a new interpreter per case."""
    code = cli_module.main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def assert_clean_failure(proc: subprocess.CompletedProcess, needle: str, tracking: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("anomaly-repr: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert not [r for r in runs if r.info.status == "FINISHED"]


@pytest.mark.parametrize("args, needle", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--arch", "vgg11"], "unknown arch 'vgg11'"),
    (["--known_classes", "1,2,eleven"], "unknown known class 'eleven'"),
    (["--known_classes", "1,2", "--unknown_classes", "2,3"], "class '2' is both known and unknown"),
    (["--known_classes", "4"], "at least two known classes"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--batch_size", "-8"], "batch_size must be a positive integer"),
    (["--lr", "0"], "lr must be positive"),
    (["--epochs", "two"], "epochs must be int"),
    (["--preset", "bogus"], "unknown preset 'bogus'; choose one of none, fast"),
    (["--tta", "bogus"], "unknown tta 'bogus'; choose one of none, flip, flip_translate"),
    (["--max_hours", "nan"], "max_hours must be a finite number, got nan"),  # not "no limit"
    (["--mixup", "nan"], "mixup must be a finite number, got nan"),  # not "mixing off"
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--dataset", "cifar10", "--data_root", "no/such/root", "--download", "false"], "CIFAR-10 not found"),
])
def test_bad_input(tracking, capsys, args, needle):
    assert_clean_failure(cli_in_process(capsys, "main", *args), needle, tracking)


def test_bad_input_exits_non_zero_from_the_console_script(tracking):
    assert_clean_failure(cli("main", "--epochs", "-1"), "epochs must be a positive integer", tracking)


def test_bad_image_folders(tracking, capsys, image_folder):
    (image_folder / "train" / "empty").mkdir()
    base = ["main", "--dataset", "imagefolder", "--data_root", str(image_folder)]
    assert_clean_failure(cli_in_process(capsys, *base), "class folder 'empty'", tracking)
    (image_folder / "train" / "empty").rmdir()
    (image_folder / "test" / "leaf" / "scan.png").write_bytes(b"\x89PNG truncated")
    assert_clean_failure(cli_in_process(capsys, *base), "scan.png", tracking)


def test_a_messy_folder_trains_with_bad_images_skipped_and_evaluates(tracking, capsys, tmp_path):
    root = messy_folder(tmp_path / "dump", bad=3)
    base = ["--dataset", "imagefolder", "--data_root", str(root), "--known_classes", "Beetle,green leaf,moth",
            "--image_size", "8", "--epochs", "1", "--batch_size", "4", "--device", "cpu"]
    assert_clean_failure(cli_in_process(capsys, "train", *base), "3 unreadable image(s)", tracking)
    train = cli_in_process(capsys, "train", *base, "--bad_images", "skip")
    assert train.returncode == 0, train.stderr
    run_id = train.stdout.strip().splitlines()[-1]
    client = mlflow.MlflowClient(tracking)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data/skipped_files"] == "1" and run.data.tags["data/bad_images"] == "3"
    assert not [key for key in run.data.metrics if key.startswith("data/")]  # constants are not metric charts
    text = lambda path: mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")  # noqa: E731
    assert text("split/skipped_files.txt") == "Rock/notes.txt\n"
    assert text("split/bad_images.txt").split() == ["Rock/broken1.jpg", "moth/broken0.jpg", "moth/broken2.jpg"]
    manifest = mlflow.artifacts.load_dict(f"runs:/{run_id}/split/manifest.json")
    assert manifest["left_out"] == text("split/bad_images.txt").split()
    inputs = {(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in run.inputs.dataset_inputs}
    split_hash = run.data.tags["split_hash"]
    assert inputs == {("dump-split0-train", split_hash, "training"), ("dump-split0-val", split_hash, "validation")}
    assert all(i.dataset.source == json.dumps({"uri": str(root)}) for i in run.inputs.dataset_inputs)
    # The same files are left out again, so the evaluation rebuilds the split with the same hash.
    evaluate = cli_in_process(capsys, "evaluate", "--train_run_id", run_id)
    assert evaluate.returncode == 0, evaluate.stderr
    run = client.get_run(evaluate.stdout.strip().splitlines()[-1])
    assert run.info.status == "FINISHED" and run.data.tags["split_hash"] == split_hash
    # evaluate fits the feature scorers on the nominal training images: it reads all three parts
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation", "test"}


def test_evaluate_of_an_unknown_run(tracking, capsys):
    assert_clean_failure(cli_in_process(capsys, "evaluate", "--train_run_id", "0123456789abcdef"),
                         "cannot read the config", tracking)


def test_divergence_stops_within_the_epoch_as_one_line(tracking, capsys):
    proc = cli_in_process(capsys, "train", "--lr", "1e12", "--batch_size", "8", "--epochs", "3", "--device", "cpu")
    assert_clean_failure(proc, "training diverged at epoch 1, step 25", tracking)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and "val/acc" not in run.data.metrics  # stopped before validation


def test_a_config_with_an_unknown_field_is_one_line(tracking, capsys):
    mlflow.set_tracking_uri(tracking)
    with mlflow.start_run() as run:
        mlflow.log_dict({"dataset": "digits", "warp_drive": 9}, "config.json")
    proc = cli_in_process(capsys, "evaluate", "--train_run_id", run.info.run_id)
    assert proc.returncode == 2 and "fields this version does not know: warp_drive" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_refuses_other_options(tracking, capsys):
    proc = cli_in_process(capsys, "train", "--resume", "0123456789abcdef", "--epochs", "50", "--lr", "0.01")
    assert_clean_failure(proc, "--resume continues a run with its logged config; leave out --epochs, --lr", tracking)


@pytest.mark.slow  # in CI: test_e2e.py runs evaluate through `mlflow run`, and the kill -9 test below runs train and
# --resume through this CLI
def test_train_evaluate_and_resume_from_the_cli(tracking, tmp_path):
    for i in range(5):
        for c in ("ant", "bee", "wasp"):
            write_image(tmp_path / "bugs" / c / f"{i}{c}.png", (12, 12), 30 * len(c) + i)
    train = cli("train", "--dataset", "imagefolder", "--data_root", str(tmp_path / "bugs"), "--image_size", "8",
                "--known_classes", "ant,bee", "--epochs", "2", "--batch_size", "2")
    assert train.returncode == 0, train.stderr
    run_id = train.stdout.strip().splitlines()[-1]
    evaluate = cli("evaluate", "--train_run_id", run_id)
    assert evaluate.returncode == 0, evaluate.stderr
    mlflow.set_tracking_uri(tracking)
    run = mlflow.get_run(evaluate.stdout.strip().splitlines()[-1])
    assert run.info.status == "FINISHED" and run.data.tags["train_run_id"] == run_id
    assert 0 <= run.data.metrics["test/max_logit/auroc"] <= 1
    resume = cli("train", "--resume", run_id)  # finished runs leave no checkpoint behind
    assert resume.returncode == 2 and "no checkpoint for run" in resume.stderr


def test_resume_after_kill_9_reaches_the_uninterrupted_result(tracking, tmp_path, monkeypatch):
    """kill -9 in the middle of training, then `train --resume RUN_ID`: the same run ends FINISHED with the
    same per-epoch validation accuracy as an uninterrupted run with the same seed (CPU). The checkpoints
    go where $ANOMALY_REPR_CHECKPOINTS says, not to ./checkpoints."""
    import os
    import signal
    import time

    args = ["train", "--epochs", "6", "--patience", "0", "--batch_size", "16", "--device", "cpu"]
    checkpoints = tmp_path / "elsewhere"
    monkeypatch.setenv("ANOMALY_REPR_CHECKPOINTS", str(checkpoints))
    mlflow.set_tracking_uri(tracking)
    client = mlflow.MlflowClient()

    def accuracies(run_id: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, "val/acc"), key=lambda m: m.step)]

    whole = cli(*args)
    assert whole.returncode == 0, whole.stderr
    reference = whole.stdout.strip().splitlines()[-1]

    proc = subprocess.Popen([sys.executable, "-m", "anomaly_repr", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("*.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # into the next epoch (an epoch of batches of 16 takes longer than this)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # killed, not finished
    [checkpoint] = list(checkpoints.glob("*.pt"))
    run_id = checkpoint.stem
    assert client.get_run(run_id).info.status == "RUNNING"  # what a killed process leaves behind
    assert len(accuracies(run_id)) < 6
    resumed = cli("train", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train/epochs_run"] == 6
    assert accuracies(run_id) == accuracies(reference)  # every epoch, bit for bit
    assert run.data.metrics["val/best_acc"] == client.get_run(reference).data.metrics["val/best_acc"]
    assert not checkpoint.exists() and not (tmp_path / "checkpoints").exists()


def test_ui_links_open_the_model_training_view(monkeypatch):
    from anomaly_repr.tracking import setup as tracking

    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://127.0.0.1:5000/")
    view = "workflowType=machine_learning"  # MLflow 3.17's UI opens the GenAI view without it
    table = f"{view}&viewStateShareKey=anomaly-repr-results"  # the runs table opens on the project's saved view
    assert tracking.experiment_url("3") == f"http://127.0.0.1:5000/#/experiments/3/runs?{table}"
    assert tracking.run_url("3", "abc") == f"http://127.0.0.1:5000/#/experiments/3/runs/abc?{view}"
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "https://ann:secret@mlflow.example/base/")
    assert tracking.experiment_url("3") == f"https://mlflow.example/base/#/experiments/3/runs?{table}"
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "sqlite:///mlflow.db")
    # a local store: the address of `mlflow ui --backend-store-uri sqlite:///mlflow.db`, as the README gives it
    assert tracking.run_url("3", "abc") == f"http://127.0.0.1:5000/#/experiments/3/runs/abc?{view}"


def test_dataset_inputs_survive_a_second_process_creating_the_same_dataset(tracking, monkeypatch):
    """Two workers of one study log the same split at once; the store refuses the second insert of the
    dataset row (seen on PostgreSQL as a UniqueViolation on dataset_pk). The run still gets its inputs."""
    from mlflow.exceptions import MlflowException

    from anomaly_repr.engine.workflow import prepare
    from anomaly_repr.tracking.lineage import log_dataset_inputs

    real, calls = mlflow.log_inputs, []

    def racing(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException('duplicate key value violates unique constraint "dataset_pk"')
        return real(**kwargs)

    monkeypatch.setattr(mlflow, "log_inputs", racing)
    prep = prepare(ExperimentConfig())
    mlflow.set_tracking_uri(tracking)
    with mlflow.start_run() as run:
        log_dataset_inputs(prep, ("train", "val"))
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(calls) == 2 and sorted(i.dataset.name for i in inputs) == ["digits-split0-train", "digits-split0-val"]
    monkeypatch.setattr(mlflow, "log_inputs", lambda **kwargs: (_ for _ in ()).throw(MlflowException("denied")))
    with mlflow.start_run(), pytest.raises(MlflowException, match="denied"):  # other errors are not retried
        log_dataset_inputs(prep, ("train",))
