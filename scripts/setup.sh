#!/usr/bin/env bash
# All set-up on a fresh Debian machine; idempotent, quick when already done.
#   - Debian packages (SoftHSM2, openCryptoki, OpenSSL and PKCS#11 headers, compiler);
#   - a virtual environment in .venv with the project installed (editable; this builds the
#     native code: SM4/SM3/SM2, the PKCS#11 binding and the shim);
#   - three SoftHSM2 tokens under var/softhsm and a pool configuration var/hsmpool.toml.
# Usage: scripts/setup.sh [--test]   (--test also installs test tools, openCryptoki's token,
#                                     chromium with chromium-driver for the console's tests,
#                                     and PostgreSQL for the secrets manager's rotators)
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
[ "$want_test" = 1 ] && { command -v pkcs11-tool >/dev/null || need+=(opensc); }
# The console's browser tests (tests/console/test_console_browser.py): Debian's headless
# Chromium and its WebDriver.
[ "$want_test" = 1 ] && { command -v chromium >/dev/null || need+=(chromium); }
[ "$want_test" = 1 ] && { command -v chromedriver >/dev/null || need+=(chromium-driver); }
# The secrets manager's PostgreSQL rotators are tested against a throw-away cluster
# (tests/postgres.py) of Debian's PostgreSQL.
[ "$want_test" = 1 ] && { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql); }
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null
fi
# OpenSSL 3's PKCS#11 provider, for the PKCS#11 module's tests: Debian 12 has it only in
# bookworm-backports. Its .deb is fetched with a sources list of its own (the machine's apt
# configuration is not changed) and installed with its dependencies from the usual ones.
ossl_modules=$( (openssl version -m 2>/dev/null || true) | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
if [ "$want_test" = 1 ] && [ -n "$ossl_modules" ] && [ ! -f "$ossl_modules/pkcs11.so" ]; then
  echo "setup: installing pkcs11-provider" >&2
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q pkcs11-provider >/dev/null 2>&1; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    bpo=$(mktemp -d)
    mkdir -p "$bpo/lists/partial"
    echo "deb http://deb.debian.org/debian $codename-backports main" > "$bpo/sources.list"
    aptopts=(-o "Dir::Etc::SourceList=$bpo/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$bpo/lists")
    ( cd "$bpo" && $SUDO apt-get "${aptopts[@]}" update -q >/dev/null 2>&1 \
        && $SUDO apt-get "${aptopts[@]}" download pkcs11-provider >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q ./pkcs11-provider_*.deb \
             >/dev/null 2>&1 ) \
      || echo "setup: pkcs11-provider is not installable here (its tests will skip)" >&2
    $SUDO rm -rf "$bpo"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.hsmpool-installed
extras=""; [ "$want_test" = 1 ] && extras="[test]"
hash_of() { (cat pyproject.toml setup.py native/*.c native/*.h native/*.py native/pkcs11mod/*; echo "$1") | sha256sum | cut -c1-16; }
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
