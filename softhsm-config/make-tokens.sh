#!/usr/bin/env bash
# Create N SoftHSM2 tokens under a project-local folder (idempotent).
#
#   softhsm-config/make-tokens.sh DIR [N] [LABEL_PREFIX]
#
# Writes DIR/softhsm2.conf and DIR/tokens/, a random user PIN to DIR/user.pin and an SO PIN
# to DIR/so.pin (mode 0600; never printed), and initialises tokens LABEL_PREFIX-0..N-1 that do
# not exist yet. Export SOFTHSM2_CONF=DIR/softhsm2.conf to use them.
set -euo pipefail
dir=${1:?usage: make-tokens.sh DIR [N] [LABEL_PREFIX]}
n=${2:-3}
prefix=${3:-hsmpool}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
chmod 700 "$dir"
sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.in" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
umask 077
[ -s "$dir/user.pin" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/user.pin"
[ -s "$dir/so.pin" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/so.pin"
existing=$(softhsm2-util --show-slots 2>/dev/null | sed -n 's/^ *Label: *//p' | sed 's/ *$//')
for i in $(seq 0 $((n - 1))); do
  label="$prefix-$i"
  if ! grep -qx "$label" <<<"$existing"; then
    softhsm2-util --init-token --free --label "$label" \
      --so-pin "$(cat "$dir/so.pin")" --pin "$(cat "$dir/user.pin")" >/dev/null
  fi
done
