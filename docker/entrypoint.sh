#!/usr/bin/env bash
# The image's entrypoint: on first start make the tokens, the configuration and an admin
# credential in /data (the volume), then run the command (by default `hsmpool serve`).
# HSMPOOL_DATA (default /data) and HSMPOOL_HOME (default /opt/hsmpool, the source copy) let
# tests/test_container.py run this script outside a container.
set -euo pipefail
data=${HSMPOOL_DATA:-/data}
home=${HSMPOOL_HOME:-/opt/hsmpool}
umask 077
if [ ! -f "$data/hsmpool.toml" ]; then
  bash "$home/softhsm-config/make-tokens.sh" "$data/softhsm" "${HSMPOOL_TOKENS:-3}"
  {
    echo '[pool]'
    echo 'slow_call_ms = 500'
    echo '[modules.softhsm]'
    echo 'path = "/usr/lib/softhsm/libsofthsm2.so"'
    echo "env = { SOFTHSM2_CONF = \"$data/softhsm/softhsm2.conf\" }"
    tokens=()
    for i in $(seq 0 $((${HSMPOOL_TOKENS:-3} - 1))); do
      echo "[tokens.t$i]"
      echo 'module = "softhsm"'
      echo "label = \"hsmpool-$i\""
      echo "pin_file = \"$data/softhsm/user.pin\""
      echo 'so_pin_env = "HSMPOOL_SO_PIN"'
      tokens+=("\"t$i\"")
    done
    echo '[instances.default]'
    (IFS=,; echo "tokens = [${tokens[*]}]")
    echo '[kms]'
    echo "database = \"$data/kms.db\""
    echo "audit_dir = \"$data/audit\""
    echo '[server]'
    echo "state_dir = \"$data/run\""
  } > "$data/hsmpool.toml.tmp"
  mv "$data/hsmpool.toml.tmp" "$data/hsmpool.toml"
fi
# The administrator's step (domain keys on every token), with the SO PIN in this
# process only; quick when done.
HSMPOOL_SO_PIN="$(cat "$data/softhsm/so.pin")" hsmpool --config "$data/hsmpool.toml" status >/dev/null
if [ ! -s "$data/credentials.json" ]; then
  hsmpool --config "$data/hsmpool.toml" credentials create --instance default --name admin \
    --json > "$data/credentials.json.tmp"
  mv "$data/credentials.json.tmp" "$data/credentials.json"
  echo "hsmpool: admin credential (kept in $data/credentials.json):" >&2
  cat "$data/credentials.json" >&2
fi
if [ "${1:-}" = "hsmpool" ] && [ "${2:-}" = "serve" ] && [ -n "${HSMPOOL_WORKERS:-}" ]; then
  set -- "$@" --workers "$HSMPOOL_WORKERS"
fi
exec "$@"
