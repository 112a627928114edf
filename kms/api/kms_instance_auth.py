"""Authentication of KMS-instance requests: client keys of application access points.

A request names its client key in ``x-kms-acccesskeyid`` (the SDKs' spelling) and carries
``Authorization: Bearer <base64 signature>``: RSA PKCS#1 v1.5 with SHA-256, by the client
key's private key, over::

    POST \\n <content-sha256> \\n <content-type> \\n <date> \\n
    <each x-kms-* header, sorted, as "name:value\\n"> /

``content-sha256`` (upper-case hex) must be the body's SHA-256, so the body is signed too.
The checks, in order, each with its own refusal (:class:`Refused`): the client key is known
(``Unauthorized``), valid now and not revoked (``Unauthorized``); the ``Date`` is within
±15 minutes (``InvalidParam``, "The Param Date is invalid."); the body hash and the
signature hold (``InvalidParam``, "The Param Authorization is invalid."); the request is not
a replay (below); the source address is inside the access point's network rules
(``Forbidden.NoPermission``).

Replays: the same signature (the same request, signed in the same second) is served again
only within :data:`REPLAY_GRACE` seconds of its first arrival — identical requests of one
application in one second are legitimate — and refused after that, for as long as its Date
is acceptable. The record of signatures seen is per worker process, like the OpenAPI
front end's nonces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

from kms.access_points import AccessPoint, find_client_key

if TYPE_CHECKING:
    from kms.credentials import CredentialStore
    from kms.service import Kms

MAX_SKEW: Final = 900.0
REPLAY_GRACE: Final = 2.0
MAX_SEEN: Final = 500_000
DATE_INVALID: Final = "The Param Date is invalid."
AUTH_INVALID: Final = "The Param Authorization is invalid."


class Refused(Exception):
    """A request refused before anything runs: an error code, an HTTP status, a message."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ClientKey:
    """A client key as a worker checks it."""

    client_key_id: str
    public_key: Any  # cryptography's RSAPublicKey
    access_point: AccessPoint
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    principal: Any  # kms.policy.Principal
    not_before: float
    not_after: float
    revoked: bool


def string_to_sign(method: str, headers: Mapping[str, str]) -> bytes:
    kms_headers = sorted((k, v.strip()) for k, v in headers.items() if k.startswith("x-kms-"))
    return (f"{method}\n{headers.get('content-sha256', '')}\n"
            f"{headers.get('content-type', '')}\n{headers.get('date', '')}\n"
            + "".join(f"{k}:{v}\n" for k, v in kms_headers) + "/").encode()


class ClientKeyVerifier:
    """Per worker: client keys (cached until :meth:`forget`) and the signatures seen."""

    def __init__(self, kms: Kms, creds: CredentialStore) -> None:
        self.kms = kms
        self.creds = creds
        self._keys: dict[str, ClientKey | None] = {}
        self._seen: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes]] = deque()
        self._dates: dict[str, float] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop the cached client keys (a revocation or an access point changed)."""
        self._keys.clear()

    def _load(self, client_key_id: str) -> ClientKey | None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        found = find_client_key(self.kms, client_key_id)
        if found is None:
            return None
        rec, point = found
        principal = self.creds.load_principal(point.principal_id)
        public_key = load_der_public_key(rec.public_key)
        if principal is None or not isinstance(public_key, rsa.RSAPublicKey):
            return None
        nets = tuple(ipaddress.ip_network(n) for n in point.networks)
        return ClientKey(client_key_id, public_key, point, nets, principal, rec.not_before,
                         rec.not_after, rec.revoked is not None)

    def key(self, client_key_id: str) -> ClientKey:
        if client_key_id in self._keys:
            found = self._keys[client_key_id]
        else:
            found = self._load(client_key_id)
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[client_key_id] = found
        if found is None:
            raise Refused("Unauthorized", 401, "the client key is not known")
        return found

    def verify(self, method: str, headers: Mapping[str, str], body: bytes,
               source_ip: str | None) -> ClientKey:
        """The request's client key once every check holds (else :class:`Refused`)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        client_key_id = headers.get("x-kms-acccesskeyid", "")
        if not client_key_id:
            raise Refused("Unauthorized", 401, "the request names no client key")
        key = self.key(client_key_id)
        now = time.time()
        if key.revoked:
            raise Refused("Unauthorized", 401, "the client key has been revoked")
        if now > key.not_after:
            raise Refused("Unauthorized", 401, "the client key has expired")
        if now < key.not_before:
            raise Refused("Unauthorized", 401, "the client key is not valid yet")
        when = self._date(headers.get("date", ""))
        if abs(now - when) > MAX_SKEW:
            raise Refused("InvalidParam", 400, DATE_INVALID)
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise Refused("InvalidParam", 400, AUTH_INVALID)
        try:
            signature = base64.b64decode(auth[7:], validate=True)
        except (binascii.Error, ValueError):
            raise Refused("InvalidParam", 400, AUTH_INVALID) from None
        digest = hashlib.sha256(body).hexdigest().upper()
        if headers.get("content-sha256", "") != digest:
            raise Refused("InvalidParam", 400, AUTH_INVALID)
        try:
            key.public_key.verify(signature, string_to_sign(method, headers),
                                  padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise Refused("InvalidParam", 400, AUTH_INVALID) from None
        self._check_replay(signature, now)
        if source_ip is None or not self._admitted(key, source_ip):
            raise Refused("Forbidden.NoPermission", 403,
                          "the source address is outside the access point's network rules")
        return key

    def _date(self, text: str) -> float:
        """The Date header's time (parsed once per distinct value: it changes each second)."""
        when = self._dates.get(text)
        if when is None:
            try:
                when = parsedate_to_datetime(text).timestamp()
            except (TypeError, ValueError, IndexError):
                raise Refused("InvalidParam", 400, DATE_INVALID) from None
            if len(self._dates) > 4096:
                self._dates.clear()
            self._dates[text] = when
        return when

    @staticmethod
    def _admitted(key: ClientKey, source_ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in key.networks)

    def _check_replay(self, signature: bytes, now: float) -> None:
        mark = hashlib.sha256(signature).digest()[:16]
        with self._lock:
            horizon = now - 2 * MAX_SKEW
            order = self._order
            while order and (order[0][0] < horizon or len(order) > MAX_SEEN):
                _, old = order.popleft()
                self._seen.pop(old, None)
            first = self._seen.get(mark)
            if first is None:
                self._seen[mark] = now
                order.append((now, mark))
                return
        if now - first > REPLAY_GRACE:
            raise Refused("InvalidParam", 400,
                          "this signed request was already served (a replay): sign a new one")
