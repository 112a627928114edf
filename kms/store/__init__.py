"""The metadata store: the interface the service uses (:class:`MetadataStore`) and its
implementations (:class:`SqliteStore`, the embedded default; PostgreSQL for several nodes).

A new implementation passes ``tests/store/test_contract.py``."""

from kms.store.interface import (
    AccessKeyInfo,
    AccessKeySecret,
    AccessPointRecord,
    AuditCheckpoint,
    AuditHead,
    ChangeWatch,
    ClientKeyRecord,
    Conflict,
    MetadataStore,
    NodeRecord,
    PrincipalRecord,
    ShippedRecord,
    ShippedSegment,
    ShipResult,
)
from kms.store.sqlite import MIGRATIONS, SqliteStore

#: The embedded default (one SQLite file), by its historical name.
Store = SqliteStore

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(database: str) -> bool:
    """Whether ``[kms] database`` names a PostgreSQL database (else a SQLite file)."""
    return database.startswith(_URL_SCHEMES)


def redacted(database: str) -> str:
    """``database`` fit for a message: a URL's password replaced."""
    if not is_url(database):
        return database
    scheme, _, rest = database.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return database
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def open_store(database: str) -> MetadataStore:
    """The store ``[kms] database`` names: a ``postgresql://`` URL (several nodes on one
    database, :mod:`kms.store.postgres`) or a SQLite file."""
    if is_url(database):
        from kms.store.postgres import PostgresStore

        return PostgresStore(database)
    return SqliteStore(database)

__all__ = ["MIGRATIONS", "AccessKeyInfo", "AccessKeySecret", "AccessPointRecord",
           "AuditCheckpoint", "AuditHead", "ChangeWatch", "ClientKeyRecord", "Conflict",
           "MetadataStore", "NodeRecord", "PrincipalRecord", "ShipResult", "ShippedRecord",
           "ShippedSegment", "SqliteStore", "Store", "is_url", "open_store", "redacted"]
