"""Who sees ``/metrics`` and the health details (token and instance names): callers in
``[server] ops_networks`` (default: loopback) on the API ports, anyone on the operators'
listener (``--ops-port``); everyone else gets the health status only and no ``/metrics``.
A request through a local proxy that is not a trusted one is not an operator's. Through a
real ``hsmpool serve`` with one and with two workers."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from pathlib import Path

import pytest

from tests.server.conftest import serving, write_server_config


def _get(url: str, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _ops_url(line: str) -> str:
    return line.rsplit(" on ", 1)[1].strip()


@pytest.mark.parametrize("workers", [1, 2])
def test_details_only_to_operators(token_dir: Path, tmp_path: Path, workers: int) -> None:
    cfg = write_server_config(tmp_path, token_dir, {"opsx": [5]})
    with cfg.open("a") as f:  # loopback is not an operators' network here
        f.write('[server]\nops_networks = ["10.9.0.0/16"]\n')
    with serving(["--port", "0", "--ops-port", "0", "--workers", str(workers)],
                 tmp_path / "serve.log", config=cfg) as (run, url):
        ops = _ops_url(run.wait_for("operators' listener"))
        status, body = _get(url, "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok"}  # no names
        status, body = _get(url, "/readyz")
        assert status == 200 and json.loads(body) == {"status": "ready"}
        assert _get(url, "/metrics")[0] == 404
        assert _get(url, "/livez")[0] == 200
        status, body = _get(ops, "/healthz")
        assert status == 200 and json.loads(body)["healthy_tokens_per_instance"] == {"opsx": 1}
        status, body = _get(ops, "/metrics")
        assert status == 200 and b"hsmpool_build_info" in body
        assert b'token="t5"' in body  # the per-token series
        assert _get(ops, "/")[0] == 404  # the operators' listener serves nothing else
        assert _get(ops, "/console")[0] == 404


def test_an_untrusted_local_proxy_is_not_an_operator(token_dir: Path, tmp_path: Path) -> None:
    cfg = write_server_config(tmp_path, token_dir, {"opsy": [6]})  # default: loopback
    with serving(["--port", "0", "--workers", "1"], tmp_path / "serve.log",
                 config=cfg) as (_, url):
        status, body = _get(url, "/healthz")
        assert json.loads(body)["healthy_tokens_per_instance"] == {"opsy": 1}  # local
        assert _get(url, "/metrics")[0] == 200
        proxied = {"X-Forwarded-For": "203.0.113.7"}  # a local proxy passing a client on
        status, body = _get(url, "/healthz", proxied)
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert _get(url, "/metrics", proxied)[0] == 404
