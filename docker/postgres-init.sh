#!/bin/sh
# One database each for MLflow runs, MLflow users, and Optuna studies: each keeps its own Alembic
# version table, so they must not share a database.
set -eu
for db in mlflow mlflow_auth optuna; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE $db"
done
