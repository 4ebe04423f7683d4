"""The MLflow UI and optuna-dashboard as a new user first sees them, in a real headless Chromium: a small
finished `reproduce` study (digits, classifier and hybrid, three epochs), `mlflow ui` and `optuna-dashboard` on
127.0.0.1. Asserts what each view must show and saves screenshots (docs/ for the README, the rest in the
temporary folder, printed at the end, kept with --keep):

    docs/mlflow-runs.png       the runs table as the project's link opens it: its saved view, with the
                               method, split and seed tags and the metric columns, the parent expanded
    docs/mlflow-compare.png    the compare view of the children
    docs/mlflow-figure.png     the artifact preview of the study's AUROC chart
    docs/mlflow-curves.png     a child's "Model metrics" tab, filtered to the training curves
    docs/optuna-queue.png      optuna-dashboard's study list: the reproduce queue's card
    preview-<figure>.png       the artifact preview of every other figure the study logs

Needs Chromium (Debian: `apt-get install chromium`) and Playwright (`pip install playwright`); the
browser is Debian's, so `playwright install` is not needed.

    python bench/ui_check.py [--chromium /usr/bin/chromium] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import requests
from playwright.sync_api import Page, expect, sync_playwright

from anomaly_repr.tracking.setup import TRAINING_VIEW, VIEW_COLUMNS, experiment_url

DOCS = Path(__file__).resolve().parent.parent / "docs"
TIMEOUT_MS = 60_000


def finished_study(store: str, workdir: Path) -> None:
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, ANOMALY_REPR_CHECKPOINTS=str(workdir / "checkpoints"))
    subprocess.run([sys.executable, "-m", "anomaly_repr", "reproduce", "--methods", "classifier,hybrid",
                    "--recon_weight", "0.9", "--epochs", "3", "--oracle_trees", "20"],
                   env=env, cwd=workdir, check=True, capture_output=True, text=True)


def wait_for(url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:  # not up yet, or too busy to answer
            time.sleep(0.5)
    raise SystemExit(f"{url} did not start: {log.read_text()[-2000:]}")


def start_ui(store: str, port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host",
                             "127.0.0.1", "--port", str(port)], stdout=open(workdir / "ui.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(f"http://127.0.0.1:{port}/health", workdir / "ui.log")
    return proc


def dismiss_guidance(page: Page) -> None:
    """Close MLflow's first-visit popovers ("Got it") and its assistant panel, which cover the table."""
    for name in ("Got it", "Close guidance", "Close"):
        button = page.get_by_role("button", name=name, exact=True)
        if button.count():
            button.first.click()


def check_runs_table(page: Page, base: str, experiment_id: str, children: list[str]) -> None:
    # The link the project logs (tracking.experiment_url), on this server: it opens the saved view.
    link = experiment_url(experiment_id)
    page.goto(base + link[link.index("/#/"):])
    expect(page.get_by_text("reproduce digits", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    dismiss_guidance(page)
    assert "workflowType=machine_learning" in page.url and "/runs" in page.url, page.url
    # The metric columns are there without choosing them under "Columns": the view holds them.
    for column in VIEW_COLUMNS:  # metrics.`test/acc` -> its header, test/acc
        header = page.get_by_role("columnheader", name=column.split("`")[1], exact=True).first
        expect(header).to_be_attached(timeout=TIMEOUT_MS)
    # The parent's row starts with a toggle that lists its children under it.
    page.get_by_role("gridcell", name=re.compile(r"\breproduce digits$")).get_by_role("button").first.click()
    for name in children:
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(DOCS / "mlflow-runs.png"))


def check_compare_view(page: Page, base: str, experiment_id: str, run_ids: list[str], names: list[str]) -> None:
    ids = ",".join(f'"{r}"' for r in run_ids)
    page.goto(f'{base}/#/compare-runs?runs=[{ids}]&experiments=["{experiment_id}"]&{TRAINING_VIEW}')
    expect(page.get_by_text("Metrics", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    dismiss_guidance(page)
    for name in names:
        expect(page.get_by_text(name).first).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_timeout(5000)  # the parallel-coordinates plot draws after the page has loaded
    page.screenshot(path=str(DOCS / "mlflow-compare.png"))


def check_figure(page: Page, base: str, experiment_id: str, run_id: str, path: str, shot: Path) -> None:
    """The artifact preview of one logged figure: shown whole, no wider than the preview pane."""
    page.goto("about:blank")  # the artifact view keeps its file when only the link's fragment changes
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{TRAINING_VIEW}")
    image = page.get_by_role("img", name=path).first
    expect(image).to_be_visible(timeout=TIMEOUT_MS)
    dismiss_guidance(page)
    page.wait_for_timeout(1500)
    natural, shown = image.evaluate("i => [i.naturalWidth, i.getBoundingClientRect().width]")
    assert natural <= 830 and shown >= 0.9 * natural, (path, natural, shown)  # drawn at its size, not shrunk
    page.screenshot(path=str(shot), full_page=True)


def check_curves(page: Page, base: str, experiment_id: str, run_id: str) -> None:
    """A child's "Model metrics" tab: its search box (a regular expression) brings the training curves first."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{TRAINING_VIEW}")
    search = page.get_by_placeholder(re.compile("Search metric charts", re.IGNORECASE)).first
    expect(search).to_be_visible(timeout=TIMEOUT_MS)
    dismiss_guidance(page)
    search.fill("^(train|val)/")
    expect(page.get_by_text("train/loss").first).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(DOCS / "mlflow-curves.png"))


def check_queue(page: Page, storage: str, workdir: Path) -> None:
    """optuna-dashboard's study list: the reproduce queue's card says what it is."""
    port = free_port()
    command = str(Path(sys.executable).parent / "optuna-dashboard")  # the package has no __main__
    log = open(workdir / "dashboard.log", "w")
    proc = subprocess.Popen([command, storage, "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/", workdir / "dashboard.log")
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        expect(page.get_by_text(re.compile("reproduce-cells-digits-")).first).to_be_visible(timeout=TIMEOUT_MS)
        page.get_by_text(re.compile("reproduce-cells-digits-")).first.click()
        expect(page.get_by_text(re.compile("cell queue")).first).to_be_visible(timeout=TIMEOUT_MS)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(DOCS / "optuna-queue.png"), full_page=True)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and logs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ui-check-"))
    store = f"sqlite:///{workdir}/mlflow.db"
    finished_study(store, workdir)
    client = mlflow.MlflowClient(store)
    [experiment] = [e for e in client.search_experiments() if e.name == "anomaly-repr"]
    runs = client.search_runs([experiment.experiment_id])
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.run_name)
    DOCS.mkdir(exist_ok=True)
    port = free_port()
    ui = start_ui(store, port, workdir)
    try:
        base = f"http://127.0.0.1:{port}"
        [parent] = [r for r in runs if r.data.tags.get("stage") == "reproduce"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            eid = experiment.experiment_id
            check_runs_table(page, base, eid, [r.info.run_name for r in children])
            check_compare_view(page, base, eid, [r.info.run_id for r in children],
                               [r.info.run_name for r in children])
            check_figure(page, base, eid, parent.info.run_id, "figures/auroc_by_method.png",
                         DOCS / "mlflow-figure.png")
            shots = [workdir / "preview-accuracy_vs_auroc.png"]
            check_figure(page, base, eid, parent.info.run_id, "figures/accuracy_vs_auroc.png", shots[0])
            for figure in ("roc", "score_histograms"):
                shots.append(workdir / f"preview-{figure}.png")
                check_figure(page, base, eid, children[0].info.run_id, f"figures/{figure}.png", shots[-1])
            check_curves(page, base, eid, children[0].info.run_id)
            check_queue(page, f"sqlite:///{workdir}/optuna.db", workdir)
            browser.close()
        print(f"ok: runs table, compare view, figures, curves, dashboard; screenshots in {DOCS} and",
              *map(str, shots))
    finally:
        os.killpg(ui.pid, 9)
        ui.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def free_port() -> int:
    """A free loopback port (closed again before the server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
