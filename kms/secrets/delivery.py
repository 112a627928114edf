"""Secrets delivered without code change: to a command's environment, to files, to a
PostgreSQL connection that follows rotations.

A :class:`Source` reads a secret's current value: :class:`ServiceSource` through the
embedded service (an operator's ``--config``), :class:`HttpSource` through the Secrets
Manager API of a running server with any boto3-style client (the usual way for an
application: ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` and an access key in its environment).

A reference names a secret and optionally one field of a JSON secret: ``NAME[:FIELD]``, or
``ARN[:FIELD]`` (an ARN has six colons; a seventh starts the field).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["HttpSource", "Reference", "ServiceSource", "Source", "connect_postgres",
           "parse_reference", "resolve", "write_file"]


class DeliveryError(Exception):
    """A secret or field that cannot be delivered (the message names it, never a value)."""


class Source(Protocol):
    def current(self, secret_id: str) -> tuple[str, bytes]:
        """(version id, value) of the secret's AWSCURRENT version."""
        ...


class ServiceSource:
    """Through a :class:`kms.KmsClient` (the embedded service)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def current(self, secret_id: str) -> tuple[str, bytes]:
        sv = self.client.get_secret_value(secret_id)
        return sv.version.version_id, sv.value


class HttpSource:
    """Through a boto3 ``secretsmanager`` client (or anything with its
    ``get_secret_value(SecretId=...)``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def current(self, secret_id: str) -> tuple[str, bytes]:
        out = self.client.get_secret_value(SecretId=secret_id)
        if "SecretString" in out:
            return out["VersionId"], out["SecretString"].encode()
        blob = out["SecretBinary"]
        return out["VersionId"], blob if isinstance(blob, bytes) else base64.b64decode(blob)


@dataclass(frozen=True, slots=True)
class Reference:
    secret_id: str
    field: str | None = None


def parse_reference(text: str) -> Reference:
    if text.startswith("arn:"):
        parts = text.split(":", 7)
        if len(parts) == 8:
            return Reference(":".join(parts[:7]), parts[7] or None)
        return Reference(text)
    name, sep, field = text.partition(":")
    if not name:
        raise DeliveryError(f"{text!r} names no secret")
    return Reference(name, field if sep and field else None)


def pick(ref: Reference, value: bytes) -> bytes:
    """The value, or one field of a JSON secret."""
    if ref.field is None:
        return value
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or ref.field not in doc:
        raise DeliveryError(f"the secret {ref.secret_id} has no JSON field {ref.field!r}")
    v = doc[ref.field]
    return (v if isinstance(v, str) else json.dumps(v)).encode()


def resolve(source: Source, refs: Mapping[str, Reference]) -> dict[str, tuple[str, bytes]]:
    """Each name's (version id, value), reading each secret once."""
    seen: dict[str, tuple[str, bytes]] = {}
    out: dict[str, tuple[str, bytes]] = {}
    for name, ref in refs.items():
        if ref.secret_id not in seen:
            seen[ref.secret_id] = source.current(ref.secret_id)
        version, value = seen[ref.secret_id]
        out[name] = (version, pick(ref, value))
    return out


def write_file(path: Path, data: bytes) -> None:
    """Write atomically (a temporary file in the same folder, mode 0600, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


# --- PostgreSQL ------------------------------------------------------------------------


def connect_postgres(secret_id: str, client: Any, *,
                     fetch: Callable[[Any, str], Mapping[str, Any]] | None = None,
                     **connect_kwargs: Any) -> Any:
    """A psycopg connection with the credentials of a database secret (JSON: host, port,
    username, password, dbname). The value is remembered per secret; when the database
    refuses it (a rotation happened since), the secret is read again and the connection
    retried once. ``client``: a boto3 ``secretsmanager`` client or a :class:`kms.KmsClient`.
    """
    import psycopg

    read = fetch or _read_json
    key = (id(client), secret_id)
    doc = _remembered.get(key)
    fresh = doc is None
    if doc is None:
        doc = _remembered[key] = read(client, secret_id)
    try:
        return _pg_connect(psycopg, doc, connect_kwargs)
    except psycopg.OperationalError:
        if fresh:
            raise
        doc = _remembered[key] = read(client, secret_id)
        return _pg_connect(psycopg, doc, connect_kwargs)


_remembered: dict[tuple[int, str], Mapping[str, Any]] = {}


def _read_json(client: Any, secret_id: str) -> Mapping[str, Any]:
    source: Source = ServiceSource(client) if hasattr(client, "instance_name") \
        else HttpSource(client)
    _, value = source.current(secret_id)
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise DeliveryError(f"the secret {secret_id} is not a JSON database secret")
    return doc


def _pg_connect(psycopg: Any, doc: Mapping[str, Any], kw: Mapping[str, Any]) -> Any:
    params = {"host": doc.get("host"), "port": int(doc.get("port", 5432)),
              "dbname": doc.get("dbname", "postgres"), "user": doc.get("username"),
              "password": doc.get("password"), "connect_timeout": 10, **kw}
    return psycopg.connect(**params)
