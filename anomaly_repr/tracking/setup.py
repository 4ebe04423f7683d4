"""Where runs go: the tracking store and experiment (from MLflow's own variables, or the defaults), the
checks that stop a run before it starts when the server cannot serve it, and the links into the MLflow UI."""

from __future__ import annotations

import json
import logging
import os
import time
from urllib.parse import urlsplit

import mlflow

from anomaly_repr.errors import AnomalyReprError

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # a local SQLite store in the working directory
DEFAULT_EXPERIMENT = "anomaly-repr"
MLFLOW_DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default", where `mlflow run` puts runs without --experiment-name
SERVER_WAIT_SECONDS = 10  # how long to wait for an HTTP tracking server before giving up
# The first request's retries and seconds per try: MLflow's defaults for a run in progress (7 retries, 120 s)
# would keep a user waiting for many minutes on a server whose database is down.
ACCESS_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
# The experiment's kind, as MLflow 3 records it: custom model development (training runs), not GenAI.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI still opens an experiment in its GenAI view (traces) unless the link asks for the model
# training view (seen in a browser: the tag alone does not switch it); the links the project gives ask.
TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store (SQLite, files) by default
# The UI keeps a user's choice of columns in their browser; an experiment tag under this prefix is a view that
# every browser can open (MLflow 3.17: `?viewStateShareKey=<key>` in the runs table's link).
SHARED_VIEW_PREFIX, SHARED_VIEW = "mlflow.sharedViewState.", "anomaly-repr-results"
VIEW_COLUMNS = ("tags.`method`", "tags.`split`", "tags.`seed`", "metrics.`test/acc`",
                "metrics.`test/max_logit/auroc`", "metrics.`test/knn/auroc`", "metrics.`test/oracle_rf/auroc`")


class TrackingError(AnomalyReprError):
    """The tracking server cannot be reached or refuses the request."""



def setup_tracking(own_experiment: bool = False) -> str:
    """Use MLFLOW_TRACKING_URI when set, else a local SQLite store; fail fast on a dead server. The
    experiment is the one `mlflow run` chose, else $MLFLOW_EXPERIMENT_NAME or "anomaly-repr"; with
    `own_experiment` (a study, which starts its own parent run) MLflow's Default experiment is not taken."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        _wait_for_server(uri)
        _check_access(uri)
    chosen = os.environ.get("MLFLOW_EXPERIMENT_ID", "")  # `mlflow run` picks the experiment itself
    if chosen and not (own_experiment and chosen == MLFLOW_DEFAULT_EXPERIMENT_ID):
        experiment_id = chosen
    else:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment_id = mlflow.set_experiment(name).experiment_id
        # When another process creates the experiment in the same instant, set_experiment returns it without
        # making it active; setting it by id always does.
        mlflow.set_experiment(experiment_id=experiment_id)
    _mark_experiment(experiment_id)
    local = "" if uri.startswith(("http://", "https://")) else f" (serve it with `mlflow ui --backend-store-uri {uri}`)"
    log.info("MLflow UI, this experiment's training runs: %s%s", experiment_url(experiment_id), local)
    return uri


def shared_view() -> str:
    """The saved view of the runs table, as MLflow 3.17's UI stores one: an envelope around the table's
    state as a JSON string. The state shows the tags to group by and the metrics that matter as columns."""
    state = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
             "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
             "selectedColumns": list(VIEW_COLUMNS)}
    now = 1_700_000_000_000  # ms; a fixed time keeps the tag's value the same wherever it is written
    return json.dumps({"name": "anomaly-repr: results", "createdAt": now, "updatedAt": now,
                       "state": json.dumps(state)})


def _mark_experiment(experiment_id: str) -> None:
    """Tag the experiment as model training and give it the project's saved view, unless it has them (a
    user's own choice stays)."""
    client = mlflow.MlflowClient()
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, SHARED_VIEW_PREFIX + SHARED_VIEW: shared_view()}
    present = client.get_experiment(experiment_id).tags
    for key, value in wanted.items():
        if key in present:
            continue
        try:
            client.set_experiment_tag(experiment_id, key, value)
        except mlflow.exceptions.MlflowException:
            # Workers starting together all find the tag missing; a SQL store then refuses all inserts of the
            # tag but the first (a unique-key violation, seen on PostgreSQL). Tagged by another: nothing to do.
            if key not in client.get_experiment(experiment_id).tags:
                raise


def _wait_for_server(uri: str) -> None:
    import requests

    deadline = time.monotonic() + SERVER_WAIT_SECONDS
    while True:
        try:
            if requests.get(uri.rstrip("/") + "/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TrackingError(f"cannot reach the MLflow tracking server at {uri} "
                                f"(no answer within {SERVER_WAIT_SECONDS} s)")
        time.sleep(1)


def _check_access(uri: str) -> None:
    """One authenticated request, so that missing or wrong credentials (MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD on a server with basic auth), or a server that answers /health while its
    database is down (the server then spends minutes on each request), stop the run before it starts: the
    request has ACCESS_LIMITS, not the retries and timeout that MLflow gives a run in progress."""
    earlier = {name: os.environ.get(name) for name in ACCESS_LIMITS}
    os.environ.update(ACCESS_LIMITS)
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as exc:
        status = exc.get_http_status_code()
        if status in (401, 403):
            raise TrackingError(f"the tracking server refused access ({status}): set "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        raise TrackingError(f"the tracking server at {uri} answers /health but fails requests (its database may "
                            f"be down): {exc.message.splitlines()[0][:300]}") from None
    finally:
        for name, value in earlier.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def experiment_url(experiment_id: str) -> str:
    """The experiment's training-runs table in the MLflow UI: the HTTP tracking server's, or for a local store
    (SQLite, files) the address where `mlflow ui --backend-store-uri <store>` serves it (LOCAL_UI)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)  # a user:password@ in the tracking URI stays out of logs and trial attributes
        base = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path.rstrip('/')}"
    else:
        base = LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}&viewStateShareKey={SHARED_VIEW}"


def run_url(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI's model-training view (see `experiment_url`)."""
    table = experiment_url(experiment_id)
    return table[:table.index("/runs?")] + f"/runs/{run_id}?{TRAINING_VIEW}"
