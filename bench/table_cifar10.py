"""The table at scale: resumable studies on the real CIFAR-10 images at `preset=fast`.

A study here outlives one sitting. Its Optuna storage, its MLflow store and each finished cell's test scores
are packed into bench/studies/<home>/ (committed); the next sitting unpacks them to the same place and
resumes the study by its name (`--study_name table-<name>`), so only the cells (or trials) without a result
run. Every cell of a study runs the code of the study's commit (a git worktree of it, recorded in
bench/studies/<name>.json), whatever the checkout holds by then; each cell's run tags the machine it ran on.

The studies of one home share its two stores (an experiment and an Optuna study each), so that `join` can
assemble a parent over cells of several studies: the hybrid at the validation-tuned λ, or a method of the
methods study, against the core study's classifier of the same split and seed (paired on the same test
images).

Usage:
  python bench/table_cifar10.py run NAME      # start the study, or resume it (after `unpack`)
  python bench/table_cifar10.py pack HOME     # bench/studies/HOME/: what a resume needs, nothing more
  python bench/table_cifar10.py unpack HOME
  python bench/table_cifar10.py cells NAME    # every cell: state, machine, wall time, and the parent's tables
  python bench/table_cifar10.py join NAME     # a parent run over the cells JOINS[NAME] names, in experiment
                                              # table-<NAME>-joined: gaps, intervals, Holm, ranks, figures
  python bench/table_cifar10.py headline EXPERIMENT  # the README's results table from a finished parent
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from common import HERE, cifar10_folder

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.scoring.intervals import Results
from anomaly_repr.study.cells import Study
from anomaly_repr.study.parent import load_cell, log_parent

# Outside the checkout: MLflow records artifact paths as absolute paths. TABLE_ROOT moves it (a copy to try on).
ROOT = Path(os.environ.get("TABLE_ROOT", HERE.parent.parent / "table"))


@dataclass(frozen=True)
class Best:
    """A setting read from another study's best trial when a study starts (the λ its tuning chose)."""
    study: str
    param: str

    def value(self, home: Path) -> str:
        found = optuna.load_study(study_name=f"table-{self.study}", storage=f"sqlite:///{home}/optuna.db")
        return str(found.best_params[self.param])  # raises if the study has no finished trial yet


@dataclass(frozen=True)
class Spec:
    command: str  # reproduce | tune
    args: tuple[str | Best, ...]
    home: str = "core"  # the folder whose two stores it shares with the other studies of that home


STUDIES = {
    # 5a: the talk's four on three distinct class sets (splits 0 and 1 share theirs) x 2 seeds
    "core": Spec("reproduce", ("--methods", "classifier,hybrid,godin,oracle_rep", "--splits", "0,2,3",
                               "--seeds", "0,1", "--recon_weight", "0.9")),
    # λ on the validation images of split 0, seed 0 (no test image is read until the best trial's one test);
    # no pruning: on a one-cycle schedule a trial's early AUROC, before the rate decays, misleads (BENCHMARKS)
    "lambda": Spec("tune", ("--target", "hybrid", "--split", "0", "--seed", "0", "--n_trials", "8",
                            "--startup_trials", "3", "--pruner", "none")),
    # 5a's second study: the hybrid at that λ on the core study's cells (joined to its classifier)
    "hybrid-tuned": Spec("reproduce", ("--methods", "hybrid", "--splits", "0,2,3", "--seeds", "0,1",
                                       "--recon_weight", Best("lambda", "recon_weight"))),
}
# A joined parent's rows: row -> (study, method) of the cells it reads, over the given splits and seeds.
JOINS = {
    # the core study again, under this checkout's summary: its own parent runs a55bb05's, whose Holm family
    # counts q3_gap beside the hybrid's oracle gain it names (fixed in c8af9c1); the headline reads this one
    "core": ({method: ("core", method) for method in ("classifier", "hybrid", "godin", "oracle_rep")},
             (0, 2, 3), (0, 1)),
    "hybrid-tuned": ({"classifier": ("core", "classifier"), "hybrid": ("hybrid-tuned", "hybrid")}, (0, 2, 3), (0, 1)),
}
KEPT = ("outputs/test_scores.npz",)  # the artifacts a parent reads back from its cells
SMALL = 256 * 1024  # other artifacts (tables, configs, manifests) are packed below this size; models, outputs
#                     and the cells' figures (each cell can draw them again from its scores) are not


def folder(name: str) -> Path:
    """The home folder of a study (or of a home's name)."""
    return ROOT / (STUDIES[name].home if name in STUDIES else name)


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
    tree = folder(name) / ("code" if name == "core" else f"code-{name}")
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), commit], cwd=HERE, check=True)
    return tree


def store(name: str) -> str:
    """The tracking URI of a study's home."""
    return f"sqlite:///{folder(name)}/mlflow.db"


def env(name: str) -> dict[str, str]:
    return dict(os.environ, MLFLOW_TRACKING_URI=store(name), MLFLOW_EXPERIMENT_NAME=f"table-{name}")


def run(name: str) -> None:
    spec, study = STUDIES[name], record(name)
    root = folder(name)
    root.mkdir(parents=True, exist_ok=True)
    tree = code(name, study["commit"])
    given = [a.value(root) if isinstance(a, Best) else a for a in spec.args]
    args = [sys.executable, "-m", "anomaly_repr", spec.command, "--dataset", "imagefolder", "--data_root",
            str(cifar10_folder()), "--preset", "fast", *given, "--storage", f"sqlite:///{root}/optuna.db",
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


def join(name: str) -> None:
    """A parent run over JOINS[name]'s rows, each read from its study's first finished cell (child run) of every
    split and seed: the rows share their test images, so gaps and gains are paired. It runs this checkout's
    summary on cells that ran their studies' commits, listed in the tags."""
    rows, splits, seeds = JOINS[name]
    keys = [(split, seed) for split in splits for seed in seeds]
    homes = {store(study) for study, _ in rows.values()}
    if len(homes) != 1:
        raise SystemExit(f"join {name}: its studies live in {len(homes)} homes; a join reads one tracking store")
    mlflow.set_tracking_uri(homes.pop())
    results: Results = {}
    sources: dict[str, str] = {}
    for row, (study, method) in rows.items():
        found: dict[tuple[int, int], mlflow.entities.Run] = {}
        for r in mlflow.search_runs(experiment_names=[f"table-{study}"], output_format="list",
                                    filter_string=f"attributes.status = 'FINISHED' and tags.method = '{method}'",
                                    order_by=["attributes.start_time ASC"]):
            if "mlflow.parentRunId" in r.data.tags:
                found.setdefault((int(r.data.tags["split"]), int(r.data.tags["seed"])), r)
        if missing := [f"{split}/{seed}" for split, seed in keys if (split, seed) not in found]:
            raise SystemExit(f"{row}: study table-{study} has no finished {method} cell for split/seed "
                             f"{', '.join(missing)}")
        results[row] = [load_cell(found[key].info.run_id, *key) for key in keys]
        commits = sorted({found[key].data.tags.get("git_commit", "?")[:7] for key in keys})
        sources[f"source/{row}"] = f"table-{study}, code {', '.join(commits)}"
    base = ExperimentConfig.create(dataset="imagefolder", data_root=str(cifar10_folder()), preset="fast")
    study = Study(base, seeds=seeds, splits=splits, methods=tuple(method for _, method in rows.values()))
    mlflow.set_experiment(f"table-{name}-joined")
    with mlflow.start_run(run_name=f"join {name}") as active:
        mlflow.set_tags({"stage": "join"} | sources)
        mlflow.log_params({"bootstrap": base.bootstrap, "split": ",".join(map(str, splits)),
                           "seed": ",".join(map(str, seeds)), "rows": ",".join(rows)})
        log_parent(study, results)
    print(f"parent {active.info.run_id} in experiment table-{name}-joined")


def cells(name: str) -> None:
    """A Markdown table of the study's cells in the order they ran: state, wall time, machine, training precision
    (bfloat16 where the CPU has it natively, else float32), test accuracy,
    test AUROCs with intervals, and the deployable scorer that the cell's own validation AUROCs would choose."""
    mlflow.set_tracking_uri(store(name))
    runs = mlflow.search_runs(experiment_names=[f"table-{name}"], output_format="list")
    print("| cell | state | wall (s) | machine | precision | test acc | max_logit | oracle_rf | best on validation "
          "(its test AUROC) |\n|---|---|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: r.info.start_time):
        if "mlflow.parentRunId" not in r.data.tags:  # the parent: after the table
            continue
        m, wall = r.data.metrics, ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
        select = {k.split("/")[1]: v for k, v in m.items() if k.startswith("select/")}
        best = f"{b} ({m[f'test/{b}/auroc']:.4f})" if (b := max(select, key=select.__getitem__, default="")) else ""
        acc = f"{m['test/acc']:.4f}" if "test/acc" in m else ""
        print(f"| {r.info.run_name} | {r.info.status} | {wall:.0f} | {r.data.tags.get('machine', '')} | "
              f"{r.data.tags.get('precision', '')} | {acc} | "
              f"{_auroc(m, 'max_logit')} | {_auroc(m, 'oracle_rf')} | {best} |")
    for r in runs:
        if "mlflow.parentRunId" not in r.data.tags:
            print(f"\nparent {r.info.run_id}: {r.info.status}")


# The talk's ResNet34 numbers on CIFAR-10 (6 known classes, 4 unknown; DESIGN.md): the headline's rows.
TALK = {"max_logit": 0.776, "oracle": 0.905, "oracle_representation": 0.987}
HEADLINE = (("max logit of the classifier (deployed)", "test/classifier/max_logit/auroc", TALK["max_logit"]),
            ("oracle on the classifier's z", "test/classifier/oracle_rf/auroc", TALK["oracle"]),
            ("oracle on z of a network trained on all classes", "test/oracle_rep/oracle_rf/auroc",
             TALK["oracle_representation"]),
            ("Q1 gap: oracle minus max logit", "test/q1_gap_max_logit", TALK["oracle"] - TALK["max_logit"]),
            ("Q2 gap: all-class oracle minus the classifier's oracle", "test/q2_gap",
             TALK["oracle_representation"] - TALK["oracle"]))


def headline(experiment: str) -> None:
    """The README's results table from the newest finished parent of an experiment (`table-<study>`, or
    `table-<join>-joined`): the talk's numbers beside the mean over runs with its 95 % t-interval, the pooled
    bootstrap interval and, for the gaps, Holm's p; and the parent's AUROC chart copied to docs/<experiment>.png."""
    mlflow.set_tracking_uri(store("core"))
    parents = [r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                             filter_string="attributes.status = 'FINISHED'")
               if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        raise SystemExit(f"{experiment}: no finished parent run yet")
    m = parents[0].data.metrics
    print("| test AUROC, unknown classes against known | the talk (ResNet34) | here: mean over runs "
          "[95 % t-interval] | 95 % bootstrap interval (test images) | Holm's p |\n|---|---|---|---|---|")
    for label, key, talk in HEADLINE:
        if key not in m:
            continue
        f = "+.3f" if "_gap" in key else ".3f"
        runs = f" [{m[key] - m[key + '_ci95']:{f}}, {m[key] + m[key + '_ci95']:{f}}]" if key + "_ci95" in m \
            else " (one run)"
        boot = f"[{m[key + '_ci_low']:{f}}, {m[key + '_ci_high']:{f}}]" if key + "_ci_low" in m else ""
        holm = f"{m[key + '_p_holm']:.3g}" if key + "_p_holm" in m else ""
        if holm == "0":  # none of the bootstrap's resamples crossed zero
            holm = f"< {1 / int(parents[0].data.params['bootstrap']):g}"
        print(f"| {label} | {talk:{f}} | {m[key]:{f}}{runs} | {boot} | {holm} |")
    with tempfile.TemporaryDirectory() as tmp:
        chart = mlflow.artifacts.download_artifacts(run_id=parents[0].info.run_id, dst_path=tmp,
                                                    artifact_path="figures/auroc_by_method.png")
        shutil.copyfile(chart, HERE.parent / "docs" / f"{experiment}.png")
    print(f"\nparent {parents[0].info.run_id}; chart: docs/{experiment}.png")


def _auroc(m: dict[str, float], scorer: str) -> str:
    key = f"test/{scorer}/auroc"
    return f"{m[key]:.4f} [{m[key + '_ci_low']:.4f}, {m[key + '_ci_high']:.4f}]" if key in m else ""


if __name__ == "__main__":
    COMMANDS = {"run": run, "pack": pack, "unpack": unpack, "cells": cells, "join": join, "headline": headline}
    COMMANDS[sys.argv[1]](sys.argv[2])
