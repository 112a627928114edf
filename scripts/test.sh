#!/usr/bin/env bash
# The whole test suite: set up (with test tools and the openCryptoki token), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q "$@"
