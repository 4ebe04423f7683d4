#!/bin/sh
# SeaweedFS with its S3 gateway; the one S3 identity (MLflow's) comes from the environment.
set -eu
: "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}"
umask 077
cat > /tmp/s3.json <<JSON
{"identities": [{"name": "mlflow", "credentials": [{"accessKey": "${S3_ACCESS_KEY}", "secretKey": "${S3_SECRET_KEY}"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
exec weed server -dir=/data -ip=seaweedfs -ip.bind=0.0.0.0 -s3 -s3.port=8333 -s3.config=/tmp/s3.json
