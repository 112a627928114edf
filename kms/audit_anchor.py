"""Anchors of the audit trail outside its own files, on by default (docs/audit.md).

A hash chain alone cannot tell a consistent rewrite, a dropped tail with its head moved
back, or a segment file deleted whole. Two anchors that an attacker with write access to the
audit directory does not also control:

* **the head key**: a random 32-byte key made once per deployment, kept in the metadata
  store *sealed* (wrapped by an instance's domain key in a token: :data:`HEAD_KEY`), and
  unsealed in a token by each process that writes or verifies audit segments. Every
  segment head carries an HMAC under it, so moving a head (truncating, rewriting) without
  the HSM is caught;
* **the segment registry**: every segment a service process opens is registered in the
  store, with a checkpoint of its head (sequence number and hash) written at open, every
  :data:`CHECKPOINT_INTERVAL` seconds by the service's scheduler and at close. ``hsmpool
  audit verify`` with the configuration checks that every registered segment still exists
  and still holds its checkpoint, so a deleted segment, a dropped tail or a file rolled
  back to an older copy are caught up to the last checkpoint.

Segments written without the HSM (the metadata-only CLI commands) are registered without the
key (``keyed`` false): their heads are not MACed, the checkpoints still apply.

What stays undetectable is written in docs/audit.md: an attacker who controls the store and
the audit directory together can drop a segment and its registry row; records written after
the last checkpoint are protected only by the head MAC.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hsmpool import HsmPoolError, Pool
from kms.errors import KeyUnavailable

if TYPE_CHECKING:
    from hsmpool.config import PoolConfig
    from kms.audit import AuditLog
    from kms.store import AuditCheckpoint, MetadataStore

HEAD_KEY: Final = "audit-head-key"
KEY_BYTES: Final = 32
CHECKPOINT_INTERVAL: Final = 10.0


class AnchorError(KeyUnavailable):
    """The head key cannot be made or unsealed (no token of its instance answers)."""


def head_key(pool: Pool, store: MetadataStore) -> bytes:
    """The deployment's audit head key, made and sealed on first use."""
    sealed = store.get_sealed(HEAD_KEY)
    if sealed is None:
        names = sorted(pool.instances)
        if not names:
            raise AnchorError("the pool has no instance to seal the audit head key with")
        inst = pool.instance(names[0])
        try:
            blob = bytes(inst.import_secret(secrets.token_bytes(KEY_BYTES)))
        except HsmPoolError as exc:
            raise AnchorError(f"cannot seal the audit head key in instance {names[0]!r}: "
                              f"{exc}") from None
        sealed = store.seal_once(HEAD_KEY, names[0], blob, time.time())
    if sealed.instance not in pool.instances:
        raise AnchorError(f"the audit head key is sealed by instance {sealed.instance!r}, "
                          "which this configuration lacks")
    try:
        key = pool.instance(sealed.instance).export_secret(sealed.blob)
    except HsmPoolError as exc:
        raise AnchorError(f"cannot unseal the audit head key (instance "
                          f"{sealed.instance!r}): {exc}") from None
    if len(key) != KEY_BYTES:
        raise AnchorError("the sealed audit head key is malformed")
    return key


def open_log(pool: Pool, store: MetadataStore, directory: str, segment: str | None, *,
             discard_if_empty: bool = False) -> AuditLog:
    """A service process's audit log: keyed with the head key (the caller registers and
    checkpoints it: :meth:`kms.service.Kms.checkpoint_audit`)."""
    from kms.audit import AuditLog

    return AuditLog(directory, segment, head_key=head_key(pool, store),
                    discard_if_empty=discard_if_empty)


def checkpoint(log: AuditLog, store: MetadataStore) -> None:
    """Register ``log``'s segment with its head now (or forget it if its file was discarded
    at close without a record)."""
    head = log.head()
    if head is None:
        store.forget_audit_segment(log.segment, location(log.directory))
        return
    store.checkpoint_audit(log.segment, log.keyed, head[0], head[1], time.time(),
                           location(log.directory))


def location(directory: str) -> str:
    """Where a segment's file lives, as the registry records it: ``<host>:<folder>``."""
    return f"{socket.gethostname()}:{os.path.realpath(directory)}"


@dataclass(frozen=True, slots=True)
class StoreAnchors:
    """What ``hsmpool audit verify`` takes from the store: the registered segments with
    their checkpoints, and the head key (None, with ``note`` saying why, if unavailable)."""

    checkpoints: list[AuditCheckpoint]
    head_key: bytes | None
    note: str


def store_anchors(config: str, directory: str | None = None) -> StoreAnchors:
    """The anchors of the deployment of ``config`` (of the segments that live in
    ``directory`` on this host, when given: the other nodes' are verified on their own
    hosts, or from their shipped copies by :func:`kms.audit_ship.verify_all_nodes`); never
    makes a head key."""
    from kms.config import load
    from kms.store import open_store

    pool_cfg, settings = load(config)
    store = open_store(settings.database)
    try:
        return anchors_in(store, pool_cfg, directory)
    finally:
        store.close()


def anchors_in(store: MetadataStore, pool_cfg: PoolConfig,
               directory: str | None = None) -> StoreAnchors:
    """:func:`store_anchors` on an open store, the pool opened from ``pool_cfg`` (degraded:
    a token down is left out) only to unseal the head key."""
    from hsmpool.config import degraded_default

    checkpoints = store.audit_checkpoints()
    if directory is not None:
        here = location(directory)
        checkpoints = [c for c in checkpoints if c.location in ("", here)]
    if store.get_sealed(HEAD_KEY) is None:
        return StoreAnchors(checkpoints, None, "no head key has been sealed yet")
    try:
        pool = Pool(degraded_default(pool_cfg))
    except HsmPoolError as exc:
        return StoreAnchors(checkpoints, None, f"the HSMs are unavailable: {exc}")
    try:
        return StoreAnchors(checkpoints, head_key(pool, store), "unsealed")
    except AnchorError as exc:
        return StoreAnchors(checkpoints, None, exc.message)
    finally:
        pool.close()
