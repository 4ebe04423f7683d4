"""The table at scale: resumable `reproduce` studies on the real CIFAR-10 images at `preset=fast`.

A study here outlives one sitting. Its Optuna storage, its MLflow store and each finished cell's test scores
are packed into bench/studies/<name>/ (committed); the next sitting unpacks them to the same place and
resumes the study by its name (`--study_name table-<name>`), so only the cells without a result run. Every
cell of a study runs the code of the study's commit (a git worktree of it, recorded in bench/studies/<name>.json),
whatever the checkout holds by then; each cell's run tags the machine it ran on.

Usage:
  python bench/table_cifar10.py run NAME      # start the study, or resume it (after `unpack`)
  python bench/table_cifar10.py pack NAME     # bench/studies/NAME/: what a resume needs, nothing more
  python bench/table_cifar10.py unpack NAME
  python bench/table_cifar10.py cells NAME    # every cell: state, machine, wall time, and the parent's tables
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import mlflow
from common import HERE, cifar10_folder

ROOT = HERE.parent.parent / "table"  # outside the checkout: MLflow records artifact paths as absolute paths
STUDIES = {
    # 5a: the talk's four on three distinct class sets (splits 0 and 1 share theirs) x 2 seeds
    "core": ["--methods", "classifier,hybrid,godin,oracle_rep", "--splits", "0,2,3", "--seeds", "0,1",
             "--recon_weight", "0.9"],
}
KEPT = ("outputs/test_scores.npz",)  # the artifacts a parent reads back from its cells
SMALL = 256 * 1024  # other artifacts (tables, configs, manifests) are packed below this size; models, outputs
#                     and the cells' figures (each cell can draw them again from its scores) are not


def folder(name: str) -> Path:
    return ROOT / name


def record(name: str) -> dict[str, str]:
    """bench/studies/<name>.json: the study's name, commit and folder; written by its first `run`."""
    path = HERE / "studies" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, check=True, capture_output=True,
                            text=True).stdout.strip()
    data = {"study_name": f"table-{name}", "commit": commit, "folder": str(folder(name))}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def code(name: str, commit: str) -> Path:
    """A worktree of the study's commit: every cell runs the same code."""
    tree = folder(name) / "code"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), commit], cwd=HERE, check=True)
    return tree


def env(name: str) -> dict[str, str]:
    return dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{folder(name)}/mlflow.db",
                MLFLOW_EXPERIMENT_NAME=f"table-{name}")


def run(name: str) -> None:
    study = record(name)
    root = folder(name)
    root.mkdir(parents=True, exist_ok=True)
    tree = code(name, study["commit"])
    args = [sys.executable, "-m", "anomaly_repr", "reproduce", "--dataset", "imagefolder", "--data_root",
            str(cifar10_folder()), "--preset", "fast", *STUDIES[name], "--storage", f"sqlite:///{root}/optuna.db",
            "--study_name", study["study_name"]]
    print("command: " + " ".join(args[1:]) + f"\ncode: {study['commit']}", flush=True)
    subprocess.run(args, cwd=root, env=env(name) | {"PYTHONPATH": str(tree)}, check=True)


def pack(name: str) -> None:
    """bench/studies/<name>/: `stores.tar.gz` (the two databases and the small artifacts, rewritten each time)
    and `scores/<experiment>/<run>.npz`, each finished cell's test scores, written once: a cell's scores never
    change, so the history grows by each cell once, not by the whole study at every sitting."""
    root, out = folder(name), HERE / "studies" / name
    (out / "scores").mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "stores.tar.gz", "w:gz") as tar:
        for path in ("optuna.db", "mlflow.db"):
            tar.add(root / path, arcname=path)
        for path in sorted((root / "mlruns").rglob("*")):
            if str(path).endswith(KEPT):
                experiment, run_id = path.relative_to(root / "mlruns").parts[:2]
                kept = out / "scores" / experiment / f"{run_id}.npz"
                if not kept.exists():
                    kept.parent.mkdir(exist_ok=True)
                    shutil.copyfile(path, kept)
            elif path.is_file() and path.stat().st_size < SMALL and path.suffix != ".png" \
                    and "/models/" not in str(path) and "/outputs/" not in str(path):
                tar.add(path, arcname=str(path.relative_to(root)))
    print(f"{out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB")


def unpack(name: str) -> None:
    root, packed = folder(name), HERE / "studies" / name
    if (root / "mlflow.db").exists():
        raise SystemExit(f"{root} already holds a study; move it away first")
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(packed / "stores.tar.gz") as tar:
        tar.extractall(root, filter="data")
    for kept in (packed / "scores").glob("*/*.npz"):
        target = root / "mlruns" / kept.parent.name / kept.stem / "artifacts" / KEPT[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, target)
    print(f"unpacked into {root}; resume with: python bench/table_cifar10.py run {name}")


def cells(name: str) -> None:
    """A Markdown table of the study's cells in the order they ran: state, wall time, machine, test accuracy,
    test AUROCs with intervals, and the deployable scorer that the cell's own validation AUROCs would choose."""
    mlflow.set_tracking_uri(env(name)["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=[f"table-{name}"], output_format="list")
    print("| cell | state | wall (s) | machine | test acc | max_logit | oracle_rf | best on validation "
          "(its test AUROC) |\n|---|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: r.info.start_time):
        if "mlflow.parentRunId" not in r.data.tags:  # the parent: after the table
            continue
        m, wall = r.data.metrics, ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
        select = {k.split("/")[1]: v for k, v in m.items() if k.startswith("select/")}
        best = f"{b} ({m[f'test/{b}/auroc']:.4f})" if (b := max(select, key=select.__getitem__, default="")) else ""
        acc = f"{m['test/acc']:.4f}" if "test/acc" in m else ""
        print(f"| {r.info.run_name} | {r.info.status} | {wall:.0f} | {r.data.tags.get('machine', '')} | {acc} | "
              f"{_auroc(m, 'max_logit')} | {_auroc(m, 'oracle_rf')} | {best} |")
    for r in runs:
        if "mlflow.parentRunId" not in r.data.tags:
            print(f"\nparent {r.info.run_id}: {r.info.status}")


def _auroc(m: dict[str, float], scorer: str) -> str:
    key = f"test/{scorer}/auroc"
    return f"{m[key]:.4f} [{m[key + '_ci_low']:.4f}, {m[key + '_ci_high']:.4f}]" if key in m else ""


if __name__ == "__main__":
    command, study_name = sys.argv[1], sys.argv[2]
    {"run": run, "pack": pack, "unpack": unpack, "cells": cells}[command](study_name)
