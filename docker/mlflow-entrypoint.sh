#!/bin/sh
# Writes the basic-auth config (its user store is the mlflow_auth database) from the environment,
# then starts the server. Every secret comes from the environment; nothing is baked into the image.
set -eu
: "${MLFLOW_BACKEND_URI:?}" "${MLFLOW_AUTH_DB_URI:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}" "${MLFLOW_ALLOWED_HOSTS:?}"
umask 077
cat > "$HOME/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DB_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$HOME/basic_auth.ini"
# Inside the container the server listens on every interface of the compose network; the host publishes
# it on BIND_ADDRESS only (127.0.0.1 unless told otherwise).
exec mlflow server --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
    --backend-store-uri "$MLFLOW_BACKEND_URI" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-s3://${MLFLOW_BUCKET:-mlflow}}" \
    --app-name basic-auth \
    --allowed-hosts "$MLFLOW_ALLOWED_HOSTS" \
    --workers "${MLFLOW_WORKERS:-4}"
