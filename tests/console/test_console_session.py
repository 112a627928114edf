"""Console session cookies and CSRF tokens (kms/api/console_session.py), with an injected
clock: forged, altered, expired and foreign cookies are refused; the key file is shared."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kms.api.console_session import (
    COOKIE,
    SessionKeys,
    cookie_header,
    cookie_value,
    load_key,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_a_cookie_is_valid_until_it_expires() -> None:
    clock = Clock()
    keys = SessionKeys(b"k" * 32, 3600, now=clock)
    value, session = keys.issue("HSMPABC123")
    assert keys.check(value) == session
    assert session.access_key_id == "HSMPABC123" and session.expires == clock.t + 3600
    clock.t += 3599
    assert keys.check(value) == session
    clock.t += 1
    assert keys.check(value) is None


def test_altered_or_foreign_cookies_are_refused() -> None:
    keys = SessionKeys(b"k" * 32, 3600, now=Clock())
    value, _ = keys.issue("HSMPABC123")
    body, _, mac = value.rpartition(".")
    parts = body.split(".")
    for i in range(1, 4):
        changed = list(parts)
        changed[i] = changed[i][:-1] + ("A" if changed[i][-1] != "A" else "B")
        assert keys.check(".".join(changed) + "." + mac) is None
    assert keys.check(body + "." + mac[:-1]) is None
    assert keys.check(body) is None
    assert keys.check("") is None and keys.check(None) is None
    assert keys.check("v1." + value) is None
    assert SessionKeys(b"j" * 32, 3600, now=Clock()).check(value) is None
    with pytest.raises(ValueError):
        keys.issue("HSMP.evil")


def test_csrf_tokens_are_per_session() -> None:
    keys = SessionKeys(b"k" * 32, 3600, now=Clock())
    _, a = keys.issue("HSMPA")
    _, b = keys.issue("HSMPA")
    assert a.session_id != b.session_id
    assert keys.csrf_ok(a, keys.csrf_token(a))
    assert not keys.csrf_ok(a, keys.csrf_token(b))
    assert not keys.csrf_ok(a, None) and not keys.csrf_ok(a, "")


def test_cookie_headers() -> None:
    h = cookie_header("v", 60, secure=True).decode()
    assert h == f"{COOKIE}=v; Path=/console; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
    assert "Secure" not in cookie_header("v", 60, secure=False).decode()
    assert cookie_value(f"a=1; {COOKIE}=xyz; b=2") == "xyz"
    assert cookie_value("a=1") is None and cookie_value(None) is None


def test_the_key_file_is_private_and_shared(tmp_path: Path) -> None:
    d = tmp_path / "state"
    k1 = load_key(d)
    k2 = load_key(d)
    assert k1 == k2 and len(k1) == 32
    mode = stat.S_IMODE(os.stat(d / "console.key").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    (d / "console.key").write_bytes(b"short")
    with pytest.raises(OSError, match="not a console key"):
        load_key(d)
