"""The server's logs: where the ``hsmpool`` loggers write, the access log, and failed
authentications.

* ``hsmpool.*`` (the pool's token ejections and readmissions, the server's errors): one
  line each on stderr, ``TIME LEVEL [pid] logger: message``, at ``[server] log_level``.
* ``hsmpool.auth``: a WARNING per failed authentication, with the access key id the
  request named (if any) and the reason; never the signature, a secret or the body.
* the access log (``[server] access_log = "json" | "text"``): one line per request on
  stderr, written directly (not through :mod:`logging`, which costs about 6 µs a line):
  time, principal (instance/name, once authenticated), access key id, operation, key id,
  HTTP status, error code, latency in ms, source address, worker pid. Never plaintext, key
  material, secrets or encryption-context values: of the bodies only the ``KeyId`` (what
  the response names, else what the request named) is read.

Cost: with the access log off, a request pays one ``None`` check and one integer compare in
the request pipeline's answer; with it on, about 4 µs per request (both measured in
``docs/decisions.md``). The work here runs only for logged requests and 400s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Final

import orjson

TRACE: Final = 5
_LEVELS: Final = {"critical": logging.CRITICAL, "error": logging.ERROR,
                  "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG,
                  "trace": TRACE}

#: Results of ``KmsApp._handle`` that are an authentication failure.
AUTH_FAILURES: Final = frozenset({
    "MissingAuthenticationTokenException", "IncompleteSignatureException",
    "InvalidSignatureException", "UnrecognizedClientException",
    "NotFound", "InstanceNotFound", "InstanceNotFoundError"})
_AKID: Final = re.compile(r"Credential=([A-Za-z0-9]{1,128})/")
_MAX_FIELD: Final = 256

auth_log = logging.getLogger("hsmpool.auth")


def configure(level: str) -> None:
    """The handler of the ``hsmpool`` loggers (idempotent): stderr, at ``level``."""
    root = logging.getLogger("hsmpool")
    for h in list(root.handlers):
        if getattr(h, "_hsmpool", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s"))
    handler._hsmpool = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    root.propagate = False


class AccessLog:
    """Writes one access-log line per request (``"json"`` or ``"text"``) to ``stream``
    (stderr: line-buffered, so each line is one write)."""

    def __init__(self, fmt: str, stream: IO[str] | None = None) -> None:
        if fmt not in ("json", "text"):
            raise ValueError(f"access log format {fmt!r}")
        self.json = fmt == "json"
        self.stream = stream
        self._second = -1
        self._stamp = ""

    def line(self, fields: Mapping[str, Any]) -> str:
        if self.json:
            return orjson.dumps(fields).decode()
        return " ".join(f"{k}={_text(v)}" for k, v in fields.items())

    def write(self, fields: Mapping[str, Any]) -> None:
        stream = self.stream or sys.stderr
        try:
            stream.write(self.line(fields) + "\n")
        except (OSError, ValueError):  # stderr closed: the request still succeeds
            pass

    def now(self) -> str:
        """ISO 8601 UTC with milliseconds (the seconds part formatted once a second)."""
        t = time.time()
        sec = int(t)
        if sec != self._second:
            self._second = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._stamp}.{int((t - sec) * 1000):03d}Z"


def _text(v: Any) -> str:
    if v is None:
        return "-"
    s = str(v)
    return json.dumps(s) if not s or any(c.isspace() or c in '"=' for c in s) else s


def _short(v: object) -> str | None:
    return v[:_MAX_FIELD] if isinstance(v, str) and v else None


def _key_id(body: bytes, out: bytes) -> str | None:
    """The key a request was about: the response's ``KeyId`` (or ``KeyMetadata.Arn``),
    else the request's ``KeyId``/``TargetKeyId``. Nothing else of either body is kept."""
    for raw, names in ((out, ("KeyId",)), (body, ("KeyId", "TargetKeyId"))):
        try:
            doc = orjson.loads(raw) if raw else None
        except (ValueError, UnicodeError, RecursionError):
            continue
        if not isinstance(doc, dict):
            continue
        for n in names:
            v = _short(doc.get(n))
            if v is not None:
                return v
        meta = doc.get("KeyMetadata")
        if raw is out and isinstance(meta, dict):
            v = _short(meta.get("Arn")) or _short(meta.get("KeyId"))
            if v is not None:
                return v
    return None


def _error_code(out: bytes) -> str | None:
    try:
        doc = orjson.loads(out)
    except (ValueError, UnicodeError, RecursionError):
        return None
    return _short(doc.get("__type")) if isinstance(doc, dict) else None


def log_request(access: AccessLog | None, op: str, status: int, result: str,
                seconds: float, source: str | None, caller: str | None,
                headers: Mapping[str, str], body: bytes, out: bytes) -> None:
    """Called by the request pipeline when a request is answered, if the access log is on
    or the status is 400 (which is where authentication failures are). ``caller`` is the
    authenticated principal (``instance/name``), None before or without authentication."""
    m = _AKID.search(headers.get("authorization", ""))
    akid = m.group(1) if m else None
    if status == 400 and result in AUTH_FAILURES:
        auth_log.warning("authentication failed: access key id %s from %s: %s (%s)",
                         akid or "-", source or "-", _error_code(out) or result,
                         _reason(out))
    if access is None:
        return
    error = None if status == 200 else (_error_code(out) or result)
    access.write({
        "time": access.now(), "principal": caller, "access_key_id": akid,
        "operation": op or "-", "key_id": _key_id(body, out), "status": status,
        "error": error, "latency_ms": round(seconds * 1e3, 3), "source": source,
        "worker": os.getpid()})


def _reason(out: bytes) -> str:
    try:
        doc = orjson.loads(out)
    except (ValueError, UnicodeError, RecursionError):
        return "-"
    msg = doc.get("message") if isinstance(doc, dict) else None
    return msg[:200] if isinstance(msg, str) else "-"
