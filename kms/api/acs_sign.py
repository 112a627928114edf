"""Alibaba Cloud OpenAPI request signatures: ACS3-HMAC-SHA256 (the SDKs' default) and the
RPC v1 HMAC-SHA1 signature (``signature_algorithm="v2"`` in the Tea SDKs).

**ACS3-HMAC-SHA256**: ``Authorization: ACS3-HMAC-SHA256 Credential=<AK>,
SignedHeaders=<a;b;...>,Signature=<hex>``; the canonical request is::

    METHOD \\n PATH \\n canonical query \\n canonical headers \\n signed headers \\n payload hash

(query: keys sorted, values percent-encoded, ``~`` kept; headers: the signed ones, lower
case, values trimmed, ``name:value\\n`` each; payload hash: ``x-acs-content-sha256``, which
must be the SHA-256 of the body), and the signature is HMAC-SHA256(secret,
``"ACS3-HMAC-SHA256\\n" + hex(SHA-256(canonical request))``). ``x-acs-date`` must be within
15 minutes and ``x-acs-signature-nonce`` new.

**v1 (HMAC-SHA1)**: the parameters ``AccessKeyId``, ``SignatureMethod=HMAC-SHA1``,
``SignatureVersion=1.0``, ``SignatureNonce``, ``Timestamp`` and ``Signature`` in the query;
the string to sign is ``METHOD&%2F&`` + the percent-encoded, sorted ``k=v&...`` of every
other parameter (query and form body), the key ``secret + "&"``, the signature base64.

Nonces are remembered per process for the timestamp window (a replay to another worker of
the same server is not caught: the store is not touched per request).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from kms.api.sigv4 import AuthError

ACS3: Final = "ACS3-HMAC-SHA256"
WINDOW: Final = 15 * 60.0
MAX_NONCES: Final = 200_000


#: What percent-encoding leaves as it is (RFC 3986 unreserved characters).
_UNRESERVED: Final = re.compile(r"[A-Za-z0-9_.~-]*")
_UNRESERVED_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-")
_PERCENT: Final = {chr(c): f"%{c:02X}" for c in range(128)}


def _enc(text: str) -> str:
    """Percent-encoding, ``~`` kept: quote's, with fast paths for what requests carry (an
    id or a name is usually all unreserved; base64 has a few ASCII characters to encode:
    one replace each, ``%`` first so that no escape is escaped again)."""
    if _UNRESERVED.fullmatch(text):
        return text
    if not text.isascii():
        return quote(text, safe="~", encoding="utf-8")
    reserved = set(text) - _UNRESERVED_CHARS
    if "%" in reserved:
        text = text.replace("%", "%25")
        reserved.discard("%")
    for ch in reserved:
        text = text.replace(ch, _PERCENT[ch])
    return text


@functools.lru_cache(maxsize=256)  # an SDK's requests share their second
def _parse_time(text: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        raise AuthError("InvalidTimeStamp.Format",
                        "the timestamp is not yyyy-MM-ddTHH:mm:ssZ") from None


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two strings from a request, which may hold any latin-1 or
    decoded character (``hmac.compare_digest`` raises TypeError for non-ASCII text)."""
    return a.isascii() and b.isascii() and hmac.compare_digest(a, b)


class NonceCache:
    """Nonces seen within the window (oldest dropped first)."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, nonce: str, now: float) -> bool:
        with self._lock:
            while self._seen:
                oldest, t = next(iter(self._seen.items()))
                if now - t <= self.window and len(self._seen) < MAX_NONCES:
                    break
                self._seen.popitem(last=False)
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


class AcsVerifier:
    def __init__(self, secret_for: Callable[[str], str | None],
                 now: Callable[[], float] = time.time) -> None:
        self._secret_for = secret_for
        self._now = now
        self.nonces = NonceCache()

    def _secret(self, access_key_id: str) -> str:
        secret = self._secret_for(access_key_id) if access_key_id else None
        if secret is None:
            raise AuthError("InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        return secret

    def _check_time_and_nonce(self, timestamp: str | None, nonce: str | None) -> None:
        if not timestamp:
            raise AuthError("MissingTimestamp", "the request has no timestamp")
        now = self._now()
        if abs(now - _parse_time(timestamp)) > WINDOW:
            raise AuthError("InvalidTimeStamp.Expired",
                            "the request's timestamp is more than 15 minutes off")
        if not nonce or len(nonce) > 256:
            raise AuthError("MissingSignatureNonce", "the request has no signature nonce")
        if not self.nonces.fresh(nonce, now):
            raise AuthError("SignatureNonceUsed", "the signature nonce has been used")

    def verify_acs3(self, method: str, path: str, params: Mapping[str, str],
                    headers: Mapping[str, str], body: bytes) -> str:
        """The access key id of a valid ACS3 request, or :class:`AuthError`."""
        auth = headers.get("authorization", "")
        scheme, _, rest = auth.partition(" ")
        if scheme != ACS3:
            raise AuthError("IncompleteSignature", f"the Authorization is not {ACS3}")
        fields: dict[str, str] = {}
        for part in rest.split(","):
            k, sep, v = part.strip().partition("=")
            if sep:
                fields[k] = v
        akid, signed, signature = (fields.get("Credential", ""), fields.get("SignedHeaders"),
                                   fields.get("Signature", ""))
        if not akid or not signed or not signature:
            raise AuthError("IncompleteSignature", "the Authorization is incomplete")
        names = signed.split(";")
        if names != sorted(names) or not {"x-acs-date", "x-acs-signature-nonce",
                                          "x-acs-content-sha256"} <= set(names):
            raise AuthError("IncompleteSignature", "the signed headers are incomplete")
        payload = headers.get("x-acs-content-sha256", "")
        if not _same(payload, hashlib.sha256(body).hexdigest()):
            raise AuthError("ContentSHA256NotMatched", "x-acs-content-sha256 does not match "
                            "the body")
        canonical_headers = "".join([f"{n}:{headers.get(n, '').strip()}\n" for n in names])
        query = "&".join([f"{k}={_enc(v)}" for k, v in sorted(params.items())])
        # Each canonical header line ends with a newline, and the lines are then joined to
        # the rest by newlines: an empty line precedes the signed headers.
        canonical = f"{method}\n{path or '/'}\n{query}\n{canonical_headers}\n{signed}\n{payload}"
        to_sign = f"{ACS3}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        secret = self._secret(akid)
        want = hmac.digest(secret.encode(), to_sign.encode(), "sha256").hex()
        if not _same(want, signature):
            raise AuthError("SignatureDoesNotMatch",
                            "Specified signature does not match our calculation.")
        self._check_time_and_nonce(headers.get("x-acs-date"),
                                   headers.get("x-acs-signature-nonce"))
        return akid

    def verify_v1(self, method: str, params: Mapping[str, str]) -> str:
        """The access key id of a valid v1 (HMAC-SHA1) RPC request, or :class:`AuthError`."""
        if params.get("SignatureMethod") != "HMAC-SHA1" or \
                params.get("SignatureVersion") != "1.0":
            raise AuthError("InvalidSignatureMethod", "SignatureMethod must be HMAC-SHA1, "
                            "SignatureVersion 1.0")
        akid, signature = params.get("AccessKeyId", ""), params.get("Signature", "")
        if not akid or not signature:
            raise AuthError("IncompleteSignature", "the request is not signed")
        signed = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(params.items())
                          if k != "Signature")
        to_sign = f"{method}&%2F&{_enc(signed)}"
        secret = self._secret(akid)
        want = base64.b64encode(hmac.new((secret + "&").encode(), to_sign.encode(),
                                         hashlib.sha1).digest()).decode()
        if not _same(want, signature):
            raise AuthError("SignatureDoesNotMatch",
                            "Specified signature does not match our calculation.")
        self._check_time_and_nonce(params.get("Timestamp"), params.get("SignatureNonce"))
        return akid
