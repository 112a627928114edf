"""Console sign-ins: signed, expiring session cookies and their CSRF tokens.

A sign-in (an access key id and its secret, checked against the credential store) gets a
cookie that every worker of the server can check without shared memory::

    v1.<access key id>.<expires>.<session id>.<mac>

``mac`` is HMAC-SHA256, under the server's console key, of everything before it; the session
id is 16 random bytes. The console key is 32 random bytes in ``<state_dir>/console.key``
(0600, in a 0700 folder), made by the first worker that needs it and read by the others, so
a sign-in holds across workers and restarts until it expires. Deleting the file (and
restarting) signs everybody out.

The cookie holds no secret: the access key's secret is only compared (in constant time) at
sign-in. Each request re-checks that the access key is still enabled, so ``credentials
disable|delete`` ends its console sessions too (within the credential cache's 50 ms).

CSRF: state-changing calls must carry ``X-CSRF-Token``, a synchronizer token derived from the
session (HMAC of the session id under the same key): the console's JavaScript receives it
in the JSON of its session, which another origin cannot read. The cookie is also
``SameSite=Strict`` and ``HttpOnly`` (``Secure`` under TLS), and the console refuses
state-changing calls whose ``Origin`` names another host.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

COOKIE: Final = "hsmpool_console"
KEY_FILE: Final = "console.key"
_VERSION: Final = "v1"


@dataclass(frozen=True, slots=True)
class Session:
    access_key_id: str
    expires: float
    session_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_key(state_dir: str | os.PathLike[str]) -> bytes:
    """The server's console key: read from ``<state_dir>/console.key``, or made there (0600)
    by whichever process comes first (the others read the winner's)."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / KEY_FILE
    for _attempt in range(50):
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = b""
        if len(key) == 32:
            return key
        if not key:
            tmp = d / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic: fails if another process made it first
            except FileExistsError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            continue
        time.sleep(0.01)
    raise OSError(f"{path}: not a console key (32 bytes): delete it to make a new one")


class SessionKeys:
    """Issues and checks session cookies under one key. ``now`` is injectable."""

    def __init__(self, key: bytes, lifetime: float, *, now: Callable[[], float] = time.time
                 ) -> None:
        if len(key) < 32:
            raise ValueError("the console key must be at least 32 bytes")
        self._key = key
        self.lifetime = lifetime
        self.now = now

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def issue(self, access_key_id: str) -> tuple[str, Session]:
        """A new cookie value for a verified access key, and its session."""
        if not access_key_id.isalnum():
            raise ValueError("access key ids are letters and digits")
        session = Session(access_key_id, float(int(self.now() + self.lifetime)),
                          _b64(secrets.token_bytes(16)))
        body = f"{_VERSION}.{access_key_id}.{int(session.expires)}.{session.session_id}"
        return f"{body}.{self._mac(body)}", session

    def check(self, value: str | None) -> Session | None:
        """The session of a cookie value, or None (malformed, forged or expired)."""
        if not value or len(value) > 512:
            return None
        body, _, mac = value.rpartition(".")
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        _, akid, expires, sid = parts
        if not expires.isdigit() or float(expires) <= self.now():
            return None
        return Session(akid, float(expires), sid)

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf." + session.session_id)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode(), self.csrf_token(session).encode())


def cookie_header(value: str, max_age: int, secure: bool) -> bytes:
    """The ``Set-Cookie`` value of a session (``max_age`` 0: delete it)."""
    attrs = f"{COOKIE}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return (attrs + ("; Secure" if secure else "")).encode()


def cookie_value(header: str | None) -> str | None:
    """The session cookie's value in a ``Cookie`` request header (the first one)."""
    if not header:
        return None
    for part in header.replace(",", ";").split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name == COOKIE:
            return value.strip()
    return None
