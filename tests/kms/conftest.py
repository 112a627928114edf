"""Shared fixtures of the KMS service tests: one pool over real SoftHSM2 tokens for the run,
a fresh SQLite store and service per test, and a settable clock.

``HSMPOOL_TEST_DATABASE=postgresql`` gives the ``kms`` fixture, and every store a test
makes through tests/database.py, a fresh database of the session's throw-away PostgreSQL
cluster (tests/postgres.py) instead of a SQLite file.

Instances: "svc" on tokens 0, 1, 2 and "svc2" on tokens 3, 4 (names unique to these files;
other test files use other instance names on the same tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmpool import Pool
from kms import Kms, KmsClient
from kms.config import KmsSettings
from kms.store import is_url, open_store
from tests.conftest import pool_toml
from tests.database import database_for, drop_database

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


def make_kms(pool: Pool, db: Path | str, clock: FakeClock) -> Kms:
    """A service on the ``postgresql://`` URL ``db``, or on the store of the SQLite file
    ``db`` (:func:`tests.database.database_for`: on the PostgreSQL pass, the database
    standing for that file)."""
    database = str(db) if is_url(str(db)) else database_for(db)
    return Kms(pool, open_store(database), KmsSettings(database=database, audit_dir=None),
               now=clock)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    """The ``kms`` fixture's store: a SQLite file, or a fresh PostgreSQL database (dropped
    afterwards)."""
    db = database_for(tmp_path / "kms.db")
    yield db
    drop_database(db)


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
