#!/usr/bin/env bash
# All set-up on a fresh Debian machine; idempotent, quick when already done.
#   - Debian packages (SoftHSM2, openCryptoki, OpenSSL and PKCS#11 headers, compiler);
#   - a virtual environment in .venv with the project installed (editable; this builds the
#     native code: SM4/SM3/SM2, the PKCS#11 binding and the shim);
#   - three SoftHSM2 tokens under var/softhsm and a pool configuration var/hsmpool.toml.
# Usage: scripts/setup.sh [--test]   (--test also installs test tools and openCryptoki's token)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)
[ -f /usr/include/sqlite3.h ] || need+=(libsqlite3-dev)
[ -f /usr/include/p11-kit-1/p11-kit/pkcs11.h ] || need+=(libp11-kit-dev)
[ "$want_test" = 1 ] && { command -v pkcsslotd >/dev/null || [ -x /usr/sbin/pkcsslotd ] || need+=(opencryptoki); }
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.hsmpool-installed
extras=""; [ "$want_test" = 1 ] && extras="[test]"
hash_of() { (cat pyproject.toml setup.py native/*.c native/*.h native/*.py; echo "$1") | sha256sum | cut -c1-16; }
src_hash=$(hash_of "$extras")
test_hash=$(hash_of "[test]")  # an install with the test extras serves a plain run too
if [ ! -f "$stamp" ] || ! grep -qx -e "$src_hash" -e "$test_hash" "$stamp"; then
  echo "setup: installing hsmpool$extras into .venv (builds the native code)" >&2
  mkdir -p var
  .venv/bin/pip install -q -e ".$extras" > var/pip-install.log 2>&1 \
    || { tail -40 var/pip-install.log >&2; echo "setup: pip install failed (var/pip-install.log)" >&2; exit 1; }
  echo "$src_hash" > "$stamp"
fi

bash softhsm-config/make-tokens.sh var/softhsm 3
[ -f var/hsmpool.toml ] || sed "s|@VAR@|$(pwd)/var|g" softhsm-config/hsmpool.toml.in > var/hsmpool.toml
# The administrator's step, with the SO PIN (in this process's environment only; the
# configuration names none for the server): make the instances' domain keys and copy them
# to every token of their partitions. Quick when already done.
HSMPOOL_SO_PIN="$(cat var/softhsm/so.pin)" .venv/bin/hsmpool --config var/hsmpool.toml status >/dev/null
if [ "$want_test" = 1 ] && [ "$(id -u)" = 0 ]; then
  # The openCryptoki soft token is machine-wide; a checkout without its PINs (a fresh clone,
  # as in CI) re-initialises it for the tests.
  if [ -s var/opencryptoki/user.pin ]; then
    bash softhsm-config/opencryptoki.sh >/dev/null
  else
    OCK_RESET=1 bash softhsm-config/opencryptoki.sh >/dev/null
  fi
fi
