"""Shared fixtures of the KMS service tests: one pool over real SoftHSM2 tokens for the run,
a fresh SQLite store and service per test, and a settable clock.

``HSMPOOL_TEST_DATABASE=postgresql`` gives the ``kms`` fixture a fresh database of the
session's throw-away PostgreSQL cluster (tests/postgres.py) per test instead of a SQLite
file (not in CI's default run; tests that open ``tmp_path / "kms.db"`` themselves stay on
SQLite).

Instances: "svc" on tokens 0, 1, 2 and "svc2" on tokens 3, 4 (names unique to these files;
other test files use other instance names on the same tokens).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmpool import Pool
from kms import Kms, KmsClient
from kms.config import KmsSettings
from kms.store import open_store
from tests.conftest import pool_toml

INSTANCES: dict[str, list[int]] = {"svc": [0, 1, 2], "svc2": [3, 4]}
DAY = 86400.0
T0 = 1_800_000_000.0


class FakeClock:
    """A settable clock for ``Kms(now=...)``."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, days: float) -> None:
        self.t += days * DAY


@pytest.fixture(scope="session")
def svc_config(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kms-svc") / "pool.toml"
    path.write_text(pool_toml(token_dir, INSTANCES))
    return path


@pytest.fixture(scope="session")
def svc_pool(svc_config: Path) -> Iterator[Pool]:
    with Pool.open(svc_config) as pool:
        yield pool


#: The engine of the ``kms`` fixture's store: "sqlite" (default) or "postgresql".
DATABASE = os.environ.get("HSMPOOL_TEST_DATABASE", "sqlite")


def make_kms(pool: Pool, db: Path | str, clock: FakeClock) -> Kms:
    """A service on the SQLite file ``db`` or the ``postgresql://`` URL ``db``."""
    return Kms(pool, open_store(str(db)), KmsSettings(database=str(db), audit_dir=None),
               now=clock)


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``kms`` fixture's store: a SQLite file, or a fresh PostgreSQL database."""
    if DATABASE == "sqlite":
        return str(tmp_path / "kms.db")
    if DATABASE != "postgresql":
        raise pytest.UsageError(f"HSMPOOL_TEST_DATABASE={DATABASE!r}: sqlite or postgresql")
    pg = request.getfixturevalue("postgres")
    name = f"svc_{uuid.uuid4().hex[:12]}"
    pg.execute(f"CREATE DATABASE {name}")
    return f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kms(svc_pool: Pool, database: str, clock: FakeClock) -> Iterator[Kms]:
    service = make_kms(svc_pool, database, clock)
    yield service
    service.close()  # closes the store only: the pool is not owned


@pytest.fixture
def client(kms: Kms) -> KmsClient:
    return kms.client("svc")


@pytest.fixture
def client2(kms: Kms) -> KmsClient:
    return kms.client("svc2")
