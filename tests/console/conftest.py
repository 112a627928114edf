"""Fixtures of the console tests: a real ``hsmpool serve`` with the console, real SoftHSM2
tokens and store, credentials made by the real CLI, and a console API client over HTTP.

Instances: "con" on tokens 0, 1, 2 and "con2" on tokens 3, 4. Principals: "con/admin" and
"con2/admin2" (the default policy, kms:* on *: instance administrators), "con/app" (only
keys with an ``app-`` alias), and "con/root", a console administrator
(``[server] console_admins``).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import (
    Cred,
    Server,
    create_credential,
    run_server,
    write_server_config,
)

INSTANCES: dict[str, list[int]] = {"con": [0, 1, 2], "con2": [3, 4]}
APP_POLICY: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["kms:ListKeys", "kms:ListAliases"], "Resource": "*"},
    {"Effect": "Allow", "Action": ["kms:DescribeKey", "kms:Encrypt", "kms:Decrypt",
                                   "kms:DisableKey", "kms:EnableKey"],
     "Resource": "arn:aws:kms:*:*:alias/app-*"}]}


@dataclass
class ConsoleClient:
    """The console's JSON API as a browser would use it: a cookie and the CSRF token."""

    port: int
    cookie: str | None = None
    csrf: str | None = None
    last_headers: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None, *, csrf: bool = True
                ) -> tuple[int, Any]:
        h = {"Host": f"127.0.0.1:{self.port}"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if self.cookie:
            h["Cookie"] = self.cookie
        if csrf and self.csrf and method != "GET":
            h["X-CSRF-Token"] = self.csrf
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            raw = r.read()
            self.last_headers = {k.lower(): v for k, v in r.getheaders()}
            self.last_raw = raw
        finally:
            conn.close()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw

    def sign_in(self, cred: Cred) -> dict[str, Any]:
        status, doc = self.request("POST", "/console/api/session",
                                   {"access_key_id": cred.access_key_id,
                                    "secret_access_key": cred.secret})
        assert status == 200, doc
        set_cookie = self.last_headers["set-cookie"]
        self.cookie = set_cookie.split(";", 1)[0]
        self.csrf = doc["csrf"]
        return dict(doc)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)


@pytest.fixture(scope="session")
def console_server(token_dir: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Server]:
    config = write_server_config(tmp_path_factory.mktemp("console"), token_dir, INSTANCES)
    config.write_text(config.read_text() + '[server]\nconsole_admins = ["con/root"]\n')
    creds = {"admin": create_credential(config, "con", "admin"),
             "admin2": create_credential(config, "con2", "admin2"),
             "app": create_credential(config, "con", "app", APP_POLICY),
             "root": create_credential(config, "con", "root",
                                       {"Version": "2012-10-17", "Statement": [
                                           {"Effect": "Allow", "Action": "kms:DescribeKey",
                                            "Resource": "*"}]})}
    with run_server(config, workers=1) as srv:
        srv.creds.update(creds)
        yield srv


@pytest.fixture
def console(console_server: Server) -> ConsoleClient:
    return ConsoleClient(console_server.port)
