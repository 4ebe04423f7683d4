"""The MLflow UI as a new user first sees it, in a real headless Chromium: a small finished `reproduce`
study (digits, classifier and hybrid, one epoch), `mlflow ui` on 127.0.0.1, and the page the experiment
opens on. Asserts that the first view is the training runs table with the study's children and a test
metric column, and saves two screenshots for the README:

    docs/mlflow-runs.png     the runs table, the reproduce parent expanded to its children
    docs/mlflow-compare.png  the compare view of the classifier and hybrid children

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

from anomaly_repr.tracking.setup import TRAINING_VIEW

DOCS = Path(__file__).resolve().parent.parent / "docs"
TIMEOUT_MS = 60_000
METRICS = ("test/max_logit/auroc", "test/knn/auroc", "test/oracle_rf/auroc")  # the columns the check adds


def finished_study(store: str, workdir: Path) -> None:
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, ANOMALY_REPR_CHECKPOINTS=str(workdir / "checkpoints"))
    subprocess.run([sys.executable, "-m", "anomaly_repr", "reproduce", "--methods", "classifier,hybrid",
                    "--recon_weight", "0.9", "--epochs", "1", "--oracle_trees", "20"],
                   env=env, cwd=workdir, check=True, capture_output=True, text=True)


def start_ui(store: str, port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host",
                             "127.0.0.1", "--port", str(port)], stdout=open(workdir / "ui.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok:
                return proc
        except requests.RequestException:  # not up yet, or too busy to answer
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not start: {(workdir / 'ui.log').read_text()[-2000:]}")


def dismiss_guidance(page: Page) -> None:
    """Close MLflow's first-visit popovers ("Got it") and its assistant panel, which cover the table."""
    for name in ("Got it", "Close guidance", "Close"):
        button = page.get_by_role("button", name=name, exact=True)
        if button.count():
            button.first.click()


def check_runs_table(page: Page, base: str, experiment_id: str, children: list[str]) -> None:
    # The link the project logs for an HTTP tracking server (tracking.experiment_url).
    page.goto(f"{base}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}")
    expect(page.get_by_text("reproduce", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    dismiss_guidance(page)
    assert "workflowType=machine_learning" in page.url and "/runs" in page.url, page.url
    # The parent's row starts with a toggle that lists its children under it.
    page.get_by_role("gridcell", name=re.compile(r"\breproduce$")).get_by_role("button").first.click()
    for name in children:
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    # The table shows no metric column until one is chosen, as a user does, under "Columns".
    page.get_by_role("button", name="Columns").click()
    search = page.get_by_role("textbox", name="Search columns")
    for metric in METRICS:
        search.fill(metric)
        page.get_by_text(metric, exact=True).first.click()
    page.keyboard.press("Escape")
    for metric in METRICS:
        expect(page.get_by_role("columnheader", name=metric).first).to_be_visible(timeout=TIMEOUT_MS)
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
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 800})
            check_runs_table(page, base, experiment.experiment_id, [r.info.run_name for r in children])
            check_compare_view(page, base, experiment.experiment_id, [r.info.run_id for r in children],
                               [r.info.run_name for r in children])
            browser.close()
        print(f"ok: runs table and compare view; screenshots in {DOCS}")
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
