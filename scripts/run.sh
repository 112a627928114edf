#!/usr/bin/env bash
# The main job on the embedded default (local SoftHSM2 tokens): set up, then the pool's
# status report and a short self-test of every operation on every token.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hsmpool --config var/hsmpool.toml status --self-test "$@"
