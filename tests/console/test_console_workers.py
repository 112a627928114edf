"""The console on a two-worker server: a sign-in made by one worker holds on the other
(the signed cookie under the shared key), the figures cover both workers, and an operator's
eject and readmit reach the pools of both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.console.conftest import ConsoleClient
from tests.server.conftest import create_credential, run_server, write_server_config


def _tokens(c: ConsoleClient) -> dict[str, Any]:
    status, doc = c.get("/console/api/overview")
    assert status == 200, doc
    return {t["name"]: t for t in doc["tokens"]}


def test_sessions_figures_and_holds_span_the_workers(token_dir: Path, tmp_path: Path) -> None:
    config = write_server_config(tmp_path, token_dir, {"conw": [5, 6, 7]})
    config.write_text(config.read_text() + '[server]\nconsole_admins = ["conw/root"]\n')
    root = create_credential(config, "conw", "root")
    with run_server(config, workers=2) as server:
        c = ConsoleClient(server.port)
        c.sign_in(root)
        # Each request on a fresh connection: the kernel spreads them over both workers.
        assert all(c.get("/console/api/session")[1]["signed_in"] for _ in range(30))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _tokens(c)["t6"]["workers"] < 2:
            time.sleep(0.2)
        assert _tokens(c)["t6"]["workers"] == 2  # the snapshot of the other worker counts

        status, doc = c.post("/console/api/tokens/action", {"token": "t6", "action": "eject"})
        assert status == 200
        deadline = time.monotonic() + 10
        t6: dict[str, Any] = {}
        while time.monotonic() < deadline:
            t6 = _tokens(c)["t6"]
            if t6["workers"] == 2 and t6["workers_healthy"] == 0:
                break
            time.sleep(0.2)
        assert t6["state"] == "ejected" and t6["held"] and t6["workers_healthy"] == 0, t6

        status, doc = c.post("/console/api/tokens/action",
                             {"token": "t6", "action": "readmit"})
        assert status == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            t6 = _tokens(c)["t6"]
            if t6["workers_healthy"] == 2:
                break
            time.sleep(0.2)
        assert t6["state"] == "healthy" and not t6["held"] and t6["workers_healthy"] == 2, t6
