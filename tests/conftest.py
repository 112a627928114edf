"""Shared fixtures: real SoftHSM2 tokens in a per-run folder, pool configs over them.

The PKCS#11 shim reads ``HSMPOOL_P11_FAULTS`` when a module is initialised, so the variable
is set here, at import, before any test loads a module; faults stay off until a test writes
rules through the ``faults`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import database
from tests.faults import FaultInjector
from tests.postgres import PostgresCluster
from tests.postgres import available as postgres_available
from tests.postgres import cluster as postgres_cluster

ROOT = Path(__file__).resolve().parents[1]
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
N_TOKENS = 8

# One folder per test run, kept in the environment so that every import of this module
# (pytest's, and any ``tests.conftest`` import) and every subprocess agree on it.
if "HSMPOOL_TEST_RUN_DIR" not in os.environ:
    os.environ["HSMPOOL_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="hsmpool-tests-")
_RUN_DIR = Path(os.environ["HSMPOOL_TEST_RUN_DIR"])
FAULTS_PATH = _RUN_DIR / "faults"
os.environ["HSMPOOL_P11_FAULTS"] = str(FAULTS_PATH)
os.environ.setdefault("HSMPOOL_CACHE_DIR", str(_RUN_DIR / "cache"))


@pytest.fixture(scope="session")
def token_dir() -> Path:
    """Eight SoftHSM2 tokens, hsmpool-0..7, shared by the whole run."""
    d = _RUN_DIR / "softhsm"
    subprocess.run(["bash", str(ROOT / "softhsm-config" / "make-tokens.sh"), str(d),
                    str(N_TOKENS)], check=True)
    return d


def pool_toml(token_dir: Path, instances: Mapping[str, Sequence[int]],
              settings: Mapping[str, Any] | None = None,
              extra_tokens: Sequence[int] = ()) -> str:
    """A pool configuration over tokens hsmpool-N of ``token_dir``."""
    lines = ["[pool]"]
    merged = {"failure_threshold": 3, "slow_call_ms": 150, "probe_interval": 0.05,
              "probe_max_interval": 0.5, "operation_timeout": 10.0, **(settings or {})}
    lines += [f"{k} = {v!r}" for k, v in merged.items()]
    lines += ["[modules.softhsm]", f'path = "{SOFTHSM}"',
              f'env = {{ SOFTHSM2_CONF = "{token_dir / "softhsm2.conf"}" }}']
    used = sorted({*extra_tokens, *(i for ts in instances.values() for i in ts)})
    for i in used:
        lines += [f"[tokens.t{i}]", 'module = "softhsm"', f'label = "hsmpool-{i}"',
                  f'pin_file = "{token_dir / "user.pin"}"',
                  f'so_pin_file = "{token_dir / "so.pin"}"']
    for name, ts in instances.items():
        lines += [f"[instances.{name}]", "tokens = [" + ", ".join(f'"t{i}"' for i in ts) + "]"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def write_config(token_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(instances: Mapping[str, Sequence[int]], settings: Mapping[str, Any] | None = None,
              extra_tokens: Sequence[int] = ()) -> Path:
        path = tmp_path / "pool.toml"
        path.write_text(pool_toml(token_dir, instances, settings, extra_tokens))
        return path

    return write


@pytest.fixture
def faults() -> Iterator[FaultInjector]:
    inj = FaultInjector(FAULTS_PATH)
    inj.heal()
    yield inj
    inj.heal()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throw-away PostgreSQL cluster for the session (tests/postgres.py)."""
    why = postgres_available()
    if why is not None:
        pytest.skip(why)
    with postgres_cluster() as pg:
        yield pg


@pytest.fixture(scope="session", autouse=True)
def store_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The stores' engine (tests/database.py). On the PostgreSQL pass
    (``HSMPOOL_TEST_DATABASE=postgresql``) the session's cluster is started first, for every
    store the tests make; a machine that cannot run one fails the pass, it does not skip it."""
    if not database.POSTGRES:
        yield database.ENGINE
        return
    why = postgres_available()
    if why is not None:
        pytest.fail(f"HSMPOOL_TEST_DATABASE=postgresql, but {why}")
    pg = request.getfixturevalue("postgres")
    database.attach(pg)
    try:
        yield database.ENGINE
    finally:
        database.attach(None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``sqlite_only(reason=...)``: a test of the SQLite store itself, skipped on the
    PostgreSQL pass; the reason is required."""
    for item in items:
        mark = item.get_closest_marker("sqlite_only")
        if mark is None:
            continue
        reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs a reason")
        if database.POSTGRES:
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


_SDK_TESTS = ("tests/server/test_alibaba.py", "tests/server/test_kms_instance.py",
              "tests/server/test_workers.py")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Make the SDK venvs (tests/sdk/venvs.py) in the background from the start, when a test
    that uses one is collected: on a fresh checkout they take about 20 s each."""
    if any(item.nodeid.startswith(_SDK_TESTS) for item in session.items):
        from tests.sdk.venvs import prepare_in_background

        prepare_in_background()
