# The MLflow tracking server: PostgreSQL backend, artifacts proxied to S3, basic authentication.
# MLflow is pinned to a release after the published server CVEs (CVE-2026-2614 fixed in 3.10.0,
# CVE-2026-2651 in 3.11.0).
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary==2.9.13 boto3==1.35.0
RUN useradd --create-home --uid 1000 mlflow
COPY mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
USER mlflow
WORKDIR /home/mlflow
ENTRYPOINT ["/bin/sh", "/usr/local/bin/mlflow-entrypoint.sh"]
