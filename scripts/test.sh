#!/usr/bin/env bash
# The whole test suite: set up (with test tools and the openCryptoki token), ruff, mypy and
# the import-layer contracts, then pytest in two phases:
#
#   1. at the same time, two pytest processes, each with its own HSMPOOL_TEST_RUN_DIR
#      (tokens, faults file, cache; tests/conftest.py), free ports and its own throw-away
#      PostgreSQL cluster, both leaving out the tests marked `latency` (assertions on
#      latency bounds, which hold only on a machine that runs nothing else):
#        - the main pass: the full suite but PG_ALSO, on SQLite (its output here, as it
#          runs);
#        - the PostgreSQL pass, under `nice -n 10`: the service and server suites
#          (tests/kms, tests/server: the secrets manager's included) with
#          HSMPOOL_TEST_DATABASE=postgresql, every store a database of its cluster
#          (tests/database.py); its output in a log, printed when both are done. It also
#          leaves out the tests marked `own_database` (a PostgreSQL store of their own on
#          both passes: the main pass runs them), and touches no machine-wide openCryptoki
#          token (none of its tests use one). It runs PG_ALSO, suites with no store engine
#          to choose (the same on either pass), so that both passes take about as long;
#   2. the `latency` tests alone: the main pass's on SQLite, then the PostgreSQL pass's.
#      (Run beside the niced pass they failed in clean-clone runs: a 200 ms bound of
#      test_hung_tokens missed by 50-230 ms on a loaded machine.)
#
# The exit status is that of the first pass that failed (0 if none did). Every phase's time
# is printed at the end.
#
#   scripts/test.sh                 all of the above
#   scripts/test.sh PYTEST-ARGS...  set-up and lint, then one pytest run with those arguments
#                                   (HSMPOOL_TEST_DATABASE as in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$(date +%s)
bash scripts/setup.sh --test
# Lint and types first (fast; a failure stops the run), then the suite.
.venv/bin/ruff check hsmpool kms tests benchmarks native
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # layers (pyproject.toml [tool.importlinter])
t_lint=$(date +%s)
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" --durations=25 "$@"
fi

PG_SUITES=(tests/kms tests/server)
# Suites with no metadata store, no openCryptoki token and no latency bound, that the
# PostgreSQL pass runs instead of the main pass (tests/native, one more, stays in the main
# pass: so both passes take about as long).
PG_ALSO=(tests/gm tests/bench tests/store)
runs=$(mktemp -d /tmp/hsmpool-ci-XXXXXX)
pg_pid=
cleanup() {
  if [ -n "$pg_pid" ] && kill -0 "$pg_pid" 2>/dev/null; then
    kill -TERM "$pg_pid" 2>/dev/null || true
    wait "$pg_pid" 2>/dev/null || true
  fi
  rm -rf "$runs"
}
trap cleanup EXIT
mkdir "$runs/main" "$runs/pg" "$runs/latency-main" "$runs/latency-pg"
status=0
note() { [ "$status" != 0 ] || status=$1; }  # keep the first failure's status
# pytest's 5 is "no tests collected": a phase with nothing to run has not failed.
ok_or_empty() { [ "$1" = 0 ] || [ "$1" = 5 ]; }

# --- phase 1: the main pass and the (niced) PostgreSQL pass, at the same time -----------
(
  HSMPOOL_TEST_RUN_DIR="$runs/pg" HSMPOOL_TEST_DATABASE=postgresql \
    nice -n 10 "${pytest[@]}" --durations=15 -m "not latency and not own_database" \
    "${PG_SUITES[@]}" "${PG_ALSO[@]}" &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null' TERM  # cleanup() below, if the run is stopped
  rc=0
  wait "$child" || rc=$?
  date +%s > "$runs/pg.end"
  exit "$rc"
) > "$runs/pg.log" 2>&1 &
pg_pid=$!
rc=0
HSMPOOL_TEST_RUN_DIR="$runs/main" HSMPOOL_TEST_DATABASE=sqlite \
  "${pytest[@]}" --durations=25 -m "not latency" "${PG_ALSO[@]/#/--ignore=}" || rc=$?
t_main=$(date +%s)
ok_or_empty "$rc" || note "$rc"
rc=0
wait "$pg_pid" || rc=$?
pg_pid=
t_phase1=$(date +%s)
t_pg=$(cat "$runs/pg.end" 2>/dev/null || echo "$t_phase1")
echo
echo "========== the PostgreSQL pass (HSMPOOL_TEST_DATABASE=postgresql ${PG_SUITES[*]};" \
     "${PG_ALSO[*]}) =========="
cat "$runs/pg.log"
ok_or_empty "$rc" || note "$rc"

# --- phase 2: the latency-bound tests, alone: on SQLite, then on PostgreSQL ----------------
# latency_alone ENGINE RUN_DIR TITLE PYTEST-PATH-ARGS...
latency_alone() {
  local engine=$1 dir=$2 title=$3
  shift 3
  echo
  echo "========== latency-bound tests on $title, alone =========="
  local rc=0
  HSMPOOL_TEST_RUN_DIR="$dir" HSMPOOL_TEST_DATABASE="$engine" \
    "${pytest[@]}" -m latency "$@" || rc=$?
  ok_or_empty "$rc" || note "$rc"
}
latency_alone sqlite "$runs/latency-main" SQLite "${PG_ALSO[@]/#/--ignore=}"
t_latency_main=$(date +%s)
latency_alone postgresql "$runs/latency-pg" "PostgreSQL (${PG_SUITES[*]})" "${PG_SUITES[@]}"
t_end=$(date +%s)

echo
echo "test.sh: set-up and lint $((t_lint - t_start)) s; phase 1 $((t_phase1 - t_lint)) s" \
     "(main pass $((t_main - t_lint)) s, PostgreSQL pass $((t_pg - t_lint)) s);" \
     "phase 2, latency-bound tests $((t_end - t_phase1)) s (SQLite" \
     "$((t_latency_main - t_phase1)) s, PostgreSQL $((t_end - t_latency_main)) s);" \
     "total $((t_end - t_start)) s; exit status $status"
exit "$status"
