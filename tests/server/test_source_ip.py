"""``aws:SourceIp`` through the real server: ``X-Forwarded-For`` is believed only from the
``[server] trusted_proxies``, and then only the part those proxies appended.

The requests come from 127.0.0.1 (the test process) with real boto3 clients that add an
``X-Forwarded-For`` header before signing, as a caller with its own credential would."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.server.conftest import Server, create_credential, run_server, write_server_config


def _only_from(cidr: str) -> dict[str, Any]:
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",
                           "Condition": {"IpAddress": {"aws:SourceIp": [cidr]}}}]}


def _deny_unless_from(cidr: str) -> dict[str, Any]:
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
                          {"Effect": "Deny", "Action": "kms:*", "Resource": "*",
                           "Condition": {"NotIpAddress": {"aws:SourceIp": [cidr]}}}]}


def _forwarding(client: Any, value: str | None) -> Any:
    """``client`` with ``X-Forwarded-For: value`` on every request (signed with it)."""
    def add(request: Any, **_: Any) -> None:
        if value is not None:
            request.headers["X-Forwarded-For"] = value

    client.meta.events.register("before-sign.kms.*", add)
    return client


def _encrypts(server: Server, cred: Any, key_id: str, forwarded: str | None) -> bool:
    """Whether an Encrypt with that header succeeds; a refusal must be the usual
    NotFoundException of a principal the policy does not allow."""
    client = _forwarding(server.client(cred), forwarded)
    try:
        client.encrypt(KeyId=key_id, Plaintext=b"from where?")
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NotFoundException", exc.response
        assert isinstance(exc, client.exceptions.NotFoundException)
        return False
    return True


def _expect(server: Server, cred: Any, key_id: str, forwarded: str | None, *,
            allowed: bool) -> None:
    # The message names the header only: pytest would print the call's arguments, and the
    # credential's secret with them.
    got = _encrypts(server, cred, key_id, forwarded)
    assert got is allowed, f"X-Forwarded-For {forwarded!r}: allowed={got}, wanted {allowed}"


# --- the default: no trusted proxies ------------------------------------------------------


def test_forwarded_for_cannot_claim_an_allowed_network(server: Server, kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    cred = server.credential("srv", "xff-allow-" + uuid.uuid4().hex[:6], _only_from("10.0.0.0/8"))
    _expect(server, cred, key, None, allowed=False)
    for spoof in ("10.1.2.3", "10.1.2.3, 10.4.5.6", "127.0.0.1, 10.1.2.3"):
        _expect(server, cred, key, spoof, allowed=False)
    # The same credential from inside its network is allowed (the policy itself works).
    local = server.credential("srv", "xff-local-" + uuid.uuid4().hex[:6],
                              _only_from("127.0.0.0/8"))
    _expect(server, local, key, "10.1.2.3", allowed=True)


def test_forwarded_for_cannot_escape_a_deny(server: Server, kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    cred = server.credential("srv", "xff-deny-" + uuid.uuid4().hex[:6],
                             _deny_unless_from("192.168.0.0/16"))
    for spoof in (None, "192.168.1.1", "10.0.0.1, 192.168.1.1"):
        _expect(server, cred, key, spoof, allowed=False)


# --- a server behind a trusted proxy (here: 127.0.0.1, where the tests connect from) ------


@pytest.fixture(scope="module")
def proxied(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("proxied")
    config = write_server_config(directory, token_dir, {"srv": [0, 1, 2]})
    with config.open("a") as fh:
        fh.write('[server]\ntrusted_proxies = ["127.0.0.1", "10.200.0.0/16"]\n')
    admin = create_credential(config, "srv", "admin")
    with run_server(config) as srv:
        srv.creds["admin"] = admin
        yield srv


@pytest.fixture(scope="module")
def proxied_key(proxied: Server) -> str:
    return str(proxied.client(proxied.creds["admin"]).create_key()["KeyMetadata"]["KeyId"])


def test_a_trusted_proxy_names_the_source(proxied: Server, proxied_key: str) -> None:
    cred = proxied.credential("srv", "via-proxy-" + uuid.uuid4().hex[:6],
                              _only_from("10.0.0.0/8"))
    _expect(proxied, cred, proxied_key, "10.1.2.3", allowed=True)
    # Trusted hops are skipped from the right.
    _expect(proxied, cred, proxied_key, "10.1.2.3, 10.200.3.4", allowed=True)
    # Without the header the source is the proxy itself (127.0.0.1): outside 10/8.
    _expect(proxied, cred, proxied_key, None, allowed=False)
    # Whatever a client wrote left of what the proxy appended is not believed.
    _expect(proxied, cred, proxied_key, "10.1.2.3, 192.0.2.50", allowed=False)
    # An entry that is not an address: the source is unknown, and the Allow does not apply.
    _expect(proxied, cred, proxied_key, "10.1.2.3, unknown", allowed=False)


def test_a_trusted_proxy_and_a_deny(proxied: Server, proxied_key: str) -> None:
    cred = proxied.credential("srv", "deny-proxy-" + uuid.uuid4().hex[:6],
                              _deny_unless_from("192.168.0.0/16"))
    _expect(proxied, cred, proxied_key, "192.168.1.1", allowed=True)
    _expect(proxied, cred, proxied_key, "192.168.1.1, 10.1.2.3", allowed=False)
    _expect(proxied, cred, proxied_key, None, allowed=False)
    # An unknown source: the Deny applies (fail closed).
    _expect(proxied, cred, proxied_key, "192.168.1.1:4000", allowed=False)
