"""AWS Signature Version 4 verification (header form), exactly as the SDKs sign.

The canonical request is rebuilt from the raw request: method, path, query, the signed
headers as received (the ``host`` header with its port), and the SHA-256 of the body. The
credential scope must name the ``kms`` service and a configured region, its date must match
``X-Amz-Date``, and that must be within the allowed clock skew. The derived signing key is
cached per access key, day and region; signatures are compared in constant time.

Every header that changes what a request means must be covered by the signature: ``host``,
``x-amz-date``, and, when the request carries them, ``content-type``, ``x-amz-target`` and
any other ``x-amz-*`` header (as AWS requires of SigV4 signers; the SDKs sign them all).
Otherwise a request signed as one operation could be replayed as another by changing an
unsigned ``X-Amz-Target``. A request that carries such a header unsigned is refused with
``IncompleteSignatureException`` before its signature is checked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, unquote

ALGORITHM: Final = "AWS4-HMAC-SHA256"
MAX_SKEW: Final = 300.0
_AUTH_RE: Final = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,"
    r"\s*Signature=([0-9a-f]{64})\s*$")
# Parsed dates (X-Amz-Date -> epoch): a signer sends the same value for a whole second.
_EPOCHS: dict[str, float] = {}
_EPOCHS_MAX: Final = 64
#: Headers that must be signed when present (besides every ``x-amz-*`` header).
MUST_SIGN: Final = frozenset({"host", "content-type", "x-amz-target", "x-amz-date"})


class AuthError(Exception):
    """Authentication failed; ``code`` is the AWS error name, the message is for the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Credential:
    access_key_id: str
    date: str
    region: str
    service: str


@dataclass(frozen=True, slots=True)
class ParsedAuth:
    credential: Credential
    signed_headers: tuple[str, ...]
    signature: str


# Parsed Authorization headers without their signature: a client sends the same credential
# scope and signed headers for a whole day, so the parse (a regex, two dataclasses) is done
# once per such prefix.
_PARSED: dict[str, tuple[Credential, tuple[str, ...], str]] = {}
_PARSED_MAX: Final = 4096
_HEX64: Final = frozenset("0123456789abcdef")


def parse_authorization(value: str | None) -> ParsedAuth:
    if value:
        cut = value.rfind("Signature=")
        if cut > 0:
            hit = _PARSED.get(value[:cut])
            signature = value[cut + 10:]
            if hit is not None and len(signature) == 64 and _HEX64.issuperset(signature):
                return ParsedAuth(hit[0], hit[1], signature)
    parsed = _parse_authorization(value)
    if value:
        cut = value.rfind("Signature=")
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[value[:cut]] = (parsed.credential, parsed.signed_headers, "")
    return parsed


def _parse_authorization(value: str | None) -> ParsedAuth:
    if not value:
        raise AuthError("MissingAuthenticationTokenException",
                        "Request is missing Authentication Token")
    m = _AUTH_RE.match(value)
    if m is None:
        raise AuthError("IncompleteSignatureException",
                        "Authorization header is not a valid AWS4-HMAC-SHA256 signature")
    cred, signed, signature = m.groups()
    parts = cred.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise AuthError("IncompleteSignatureException", "Credential scope is malformed")
    headers = tuple(signed.split(";"))
    if list(headers) != sorted(headers) or "host" not in headers:
        raise AuthError("IncompleteSignatureException",
                        "SignedHeaders must be sorted and include host")
    return ParsedAuth(Credential(parts[0], parts[1], parts[2], parts[3]), headers, signature)


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        k, _, v = item.partition("=")
        pairs.append((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def unsigned_headers(headers: Iterable[str], signed: Iterable[str]) -> list[str]:
    """The (lower-case) header names of a request that must be signed but are not."""
    key = (tuple(headers), tuple(signed))
    hit = _UNSIGNED.get(key)
    if hit is None:
        covered = set(key[1])
        hit = sorted(name for name in key[0]
                     if (name in MUST_SIGN or name.startswith("x-amz-")) and name not in covered)
        if len(_UNSIGNED) >= _PARSED_MAX:
            _UNSIGNED.clear()
        _UNSIGNED[key] = hit
    return hit


# (request header names, signed header names) -> the unsigned ones: the SDKs send the same
# headers in the same order every time.
_UNSIGNED: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}


def canonical_request(method: str, path: str, query: str,
                      headers: Mapping[str, str], signed: Iterable[str],
                      body_sha256: str) -> str:
    lines = [method, "/" if path == "/" else quote(path or "/", safe="/-_.~%"),
             _canonical_query(query)]
    for name in signed:
        # trim, and collapse inner whitespace runs to one space
        lines.append(name + ":" + " ".join(headers.get(name, "").split()))
    lines += ["", ";".join(signed), body_sha256]
    return "\n".join(lines)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


def amz_date_to_epoch(value: str) -> float:
    when = _EPOCHS.get(value)
    if when is not None:
        return when
    try:
        when = datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise AuthError("IncompleteSignatureException", "X-Amz-Date is malformed") from None
    if len(_EPOCHS) >= _EPOCHS_MAX:
        _EPOCHS.clear()
    _EPOCHS[value] = when
    return when


class Verifier:
    """Checks SigV4 signatures; ``secret_for(access_key_id)`` returns the secret or None."""

    def __init__(self, secret_for: Callable[[str], str | None], regions: Iterable[str],
                 service: str = "kms", *, now: Callable[[], float] = time.time,
                 max_skew: float = MAX_SKEW) -> None:
        self._secret_for = secret_for
        self.regions = frozenset(regions)
        self.service = service
        self.now = now
        self.max_skew = max_skew
        self._keys: dict[tuple[str, str, str], bytes] = {}

    def verify(self, method: str, path: str, query: str, headers: Mapping[str, str],
               body: bytes) -> Credential:
        """Return the verified credential or raise :class:`AuthError`."""
        auth = parse_authorization(headers.get("authorization"))
        cred = auth.credential
        if cred.service != self.service:
            raise AuthError("InvalidSignatureException",
                            f"Credential should be scoped to correct service: '{self.service}'")
        if cred.region not in self.regions:
            raise AuthError("InvalidSignatureException",
                            "Credential should be scoped to a valid region")
        amz_date = headers.get("x-amz-date")
        if not amz_date:
            raise AuthError("IncompleteSignatureException", "X-Amz-Date header is missing")
        when = amz_date_to_epoch(amz_date)
        if abs(self.now() - when) > self.max_skew:
            raise AuthError("InvalidSignatureException",
                            "Signature expired: the request time is too far from the "
                            "server time (5 minutes allowed)")
        if amz_date[:8] != cred.date:
            raise AuthError("InvalidSignatureException",
                            "Credential date does not match X-Amz-Date")
        if "x-amz-date" not in auth.signed_headers:
            raise AuthError("IncompleteSignatureException", "x-amz-date must be signed")
        unsigned = unsigned_headers(headers, auth.signed_headers)
        if unsigned:
            raise AuthError("IncompleteSignatureException",
                            "Header(s) " + ", ".join(f"'{h}'" for h in unsigned)
                            + " must be named in SignedHeaders (content-type, x-amz-target "
                            "and every x-amz-* header of a request must be signed)")
        cache_key = (cred.access_key_id, cred.date, cred.region)
        key = self._keys.get(cache_key)
        if key is None:
            secret = self._secret_for(cred.access_key_id)
            if secret is None:
                raise AuthError("UnrecognizedClientException",
                                "The security token included in the request is invalid.")
            key = signing_key(secret, cred.date, cred.region, cred.service)
            if len(self._keys) > 10000:
                self._keys.clear()
            self._keys[cache_key] = key
        creq = canonical_request(method, path, query, headers, auth.signed_headers,
                                 hashlib.sha256(body).hexdigest())
        scope = f"{cred.date}/{cred.region}/{cred.service}/aws4_request"
        to_sign = "\n".join((ALGORITHM, amz_date, scope,
                             hashlib.sha256(creq.encode()).hexdigest()))
        expected = hmac.digest(key, to_sign.encode(), "sha256").hex()
        if not hmac.compare_digest(expected, auth.signature):
            raise AuthError("InvalidSignatureException",
                            "The request signature we calculated does not match the "
                            "signature you provided.")
        return cred

    def forget(self, access_key_id: str | None = None) -> None:
        if access_key_id is None:
            self._keys.clear()
        else:
            for k in [k for k in self._keys if k[0] == access_key_id]:
                self._keys.pop(k, None)
