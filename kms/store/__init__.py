"""The metadata store: the interface the service uses (:class:`MetadataStore`) and its
implementations (:class:`SqliteStore`, the embedded default; PostgreSQL for several nodes).

A new implementation passes ``tests/store/test_contract.py``."""

from kms.store.interface import (
    AccessKeyInfo,
    AccessKeySecret,
    Conflict,
    MetadataStore,
    PrincipalRecord,
)
from kms.store.sqlite import MIGRATIONS, SqliteStore

#: The embedded default (one SQLite file), by its historical name.
Store = SqliteStore

__all__ = ["MIGRATIONS", "AccessKeyInfo", "AccessKeySecret", "Conflict", "MetadataStore",
           "PrincipalRecord", "SqliteStore", "Store"]
