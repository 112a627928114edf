#!/usr/bin/env bash
# The main job on the embedded default (SQLite metadata, local SoftHSM2 tokens): set up,
# make sure an admin credential exists, print the endpoint and the credential, then serve the
# AWS KMS protocol on 127.0.0.1:8080 (override with HOST=..., PORT=..., WORKERS=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
host=${HOST:-127.0.0.1}
port=${PORT:-8080}
cfg=var/hsmpool.toml
if [ ! -s var/credentials.json ]; then
  umask 077
  .venv/bin/hsmpool --config "$cfg" credentials create --instance default --name admin --json \
    > var/credentials.json.tmp
  mv var/credentials.json.tmp var/credentials.json
fi
.venv/bin/hsmpool --config "$cfg" status
akid=$(.venv/bin/python -c 'import json;print(json.load(open("var/credentials.json"))["AccessKeyId"])')
secret=$(.venv/bin/python -c 'import json;print(json.load(open("var/credentials.json"))["SecretAccessKey"])')
cat <<MSG

hsmpool is starting: AWS KMS protocol on http://$host:$port
  AWS_ENDPOINT_URL_KMS=http://$host:$port
  AWS_ACCESS_KEY_ID=$akid
  AWS_SECRET_ACCESS_KEY=$secret   (also in var/credentials.json)
  AWS_DEFAULT_REGION=us-east-1

MSG
exec .venv/bin/hsmpool --config "$cfg" serve --host "$host" --port "$port" ${WORKERS:+--workers "$WORKERS"}
