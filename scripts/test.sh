#!/usr/bin/env bash
# The whole test suite: set up (with test tools and the openCryptoki token), ruff, mypy and
# the import-layer contracts, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# Lint and types first (fast; a failure stops the run), then the suite.
.venv/bin/ruff check hsmpool kms tests benchmarks native
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # layers (pyproject.toml [tool.importlinter])
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
