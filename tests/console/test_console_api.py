"""The console's JSON API over a real ``hsmpool serve``: sign-in and sessions, CSRF, what each
principal sees (instance isolation, policies), key and token actions, and that no secret
or plaintext is ever in an answer."""

from __future__ import annotations

import base64
import subprocess
import time
from typing import Any

from tests.console.conftest import ConsoleClient
from tests.server.conftest import HSMPOOL, Server


def _key(server: Server, cred: str, alias: str | None = None, **kw: Any) -> str:
    kms = server.client(server.creds[cred])
    key_id = str(kms.create_key(**kw)["KeyMetadata"]["KeyId"])
    if alias is not None:
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return key_id


def _row(doc: dict[str, Any], key_id: str) -> dict[str, Any] | None:
    fields = doc["fields"]
    for r in doc["rows"]:
        if r[0] == key_id:
            return dict(zip(fields, r, strict=True))
    return None


def test_page_and_files_are_served_with_strict_headers(console: ConsoleClient) -> None:
    status, body = console.get("/console")
    assert status == 200 and b"<title>hsmpool console</title>" in body
    h = console.last_headers
    assert h["content-type"].startswith("text/html")
    csp = h["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp \
        and "frame-ancestors 'none'" in csp
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    for name, ctype in (("console.js", "text/javascript"), ("console.css", "text/css")):
        status, body = console.get(f"/console/{name}")
        assert status == 200 and len(body) > 1000
        assert console.last_headers["content-type"].startswith(ctype)
    assert console.get("/console/../pyproject.toml")[0] == 404
    assert console.get("/console/nothing.js")[0] == 404


def test_sign_in_checks_the_secret_and_sets_a_strict_cookie(
        console_server: Server, console: ConsoleClient) -> None:
    cred = console_server.creds["admin"]
    wrong = cred.secret[:-1] + ("A" if cred.secret[-1] != "A" else "B")
    status, doc = console.request("POST", "/console/api/session",
                                  {"access_key_id": cred.access_key_id,
                                   "secret_access_key": wrong})
    assert status == 401 and doc["error"] == "SignInFailed"
    assert "set-cookie" not in console.last_headers
    status, _ = console.request("POST", "/console/api/session",
                                {"access_key_id": "HSMPNOSUCHKEY", "secret_access_key": "x"})
    assert status == 401
    log = console_server.log_text()
    assert f"console sign-in failed: access key id {cred.access_key_id}" in log
    assert wrong not in log and cred.secret not in log

    # Not JSON (what a cross-site form can send): refused before any check.
    status, _ = console.request("POST", "/console/api/session", b"access_key_id=x",
                                {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415

    doc = console.sign_in(cred)
    assert doc["instance"] == "con" and doc["name"] == "admin" and not doc["admin"]
    assert doc["instance_admin"] and doc["instances"] == ["con"]
    cookie = console.last_headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; under TLS it carries Secure
    assert cred.secret not in cookie and cred.secret not in str(doc)
    status, doc = console.get("/console/api/session")
    assert status == 200 and doc["signed_in"] and doc["csrf"] == console.csrf


def test_the_api_needs_a_valid_session(console_server: Server, console: ConsoleClient) -> None:
    assert console.get("/console/api/overview")[0] == 401
    assert console.get("/console/api/session") == (200, {"signed_in": False})
    console.sign_in(console_server.creds["admin"])
    name, _, value = console.cookie.partition("=")  # type: ignore[union-attr]
    body, _, mac = value.rpartition(".")
    forged = body.replace("v1.", "v1.", 1).split(".")
    forged[2] = str(int(forged[2]) + 86400)  # a later expiry, the old signature
    for bad in (f"{name}={'.'.join(forged)}.{mac}", f"{name}={body}.{mac[::-1]}",
                f"{name}=v1.{value}"):
        status, doc = ConsoleClient(console.port, cookie=bad).get("/console/api/overview")
        assert status == 401, bad
    assert console.get("/console/api/overview")[0] == 200


def test_state_changes_need_the_csrf_token_and_the_same_origin(
        console_server: Server, console: ConsoleClient) -> None:
    key_id = _key(console_server, "admin")
    console.sign_in(console_server.creds["admin"])
    body = {"instance": "con", "key_id": key_id, "action": "disable"}
    status, doc = console.request("POST", "/console/api/keys/action", body, csrf=False)
    assert status == 403 and "CSRF" in doc["message"]
    status, _ = console.request("POST", "/console/api/keys/action", body,
                                {"X-CSRF-Token": "A" * 43}, csrf=False)
    assert status == 403
    status, _ = console.request("POST", "/console/api/keys/action", body,
                                {"Origin": "http://evil.example"})
    assert status == 403
    kms = console_server.client(console_server.creds["admin"])
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    status, doc = console.request("POST", "/console/api/keys/action", body,
                                  {"Origin": f"http://127.0.0.1:{console.port}"})
    assert status == 200 and dict(zip(doc["fields"], doc["row"], strict=True))["state"] \
        == "Disabled"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    # Another session's token does not do.
    other = ConsoleClient(console.port)
    other.sign_in(console_server.creds["admin"])
    assert other.csrf != console.csrf
    status, _ = console.request("POST", "/console/api/keys/action",
                                {**body, "action": "enable"}, {"X-CSRF-Token": other.csrf},
                                csrf=False)
    assert status == 403


def test_a_principal_of_one_instance_sees_nothing_of_another(
        console_server: Server, console: ConsoleClient) -> None:
    alias_a = f"alias/con-only-{time.monotonic_ns()}"
    key_a = _key(console_server, "admin", alias_a, Description="instance A's key")
    key_b = _key(console_server, "admin2", f"alias/con2-{time.monotonic_ns()}")
    a = ConsoleClient(console.port)
    a.sign_in(console_server.creds["admin"])
    a.get("/console/api/overview")  # A's traffic, counted under A
    b = console
    doc = b.sign_in(console_server.creds["admin2"])
    assert doc["instances"] == ["con2"]
    answers = []
    status, ov = b.get("/console/api/overview")
    assert status == 200
    answers.append(b.last_raw)
    assert [t["name"] for t in ov["tokens"]] == ["t3", "t4"]
    assert [i["name"] for i in ov["instances"]] == ["con2"]
    assert {r["instance"] for r in ov["requests"]} <= {"con2"}
    assert set(ov["series"]) == {"t3", "t4"}
    status, keys = b.get("/console/api/keys")
    answers.append(b.last_raw)
    assert status == 200 and _row(keys, key_b) is not None and _row(keys, key_a) is None
    for path in ("/console/api/keys?instance=con", "/console/api/audit?instance=con",
                 "/console/api/secrets?instance=con"):
        status, doc = b.get(path)
        answers.append(b.last_raw)
        assert status == 404, (path, doc)
    status, audit = b.get("/console/api/audit?n=500")
    answers.append(b.last_raw)
    assert status == 200 and audit["records"]
    assert {r["instance"] for r in audit["records"]} == {"con2"}
    refusals = []
    for action in ("disable", "enable", "rotate"):
        for instance in ("con", "con2"):
            status, doc = b.post("/console/api/keys/action",
                                 {"instance": instance, "key_id": key_a, "action": action})
            refusals.append(b.last_raw)
            assert status == 404, (action, instance, doc)
    # A refusal names only what was asked (the key id sent), nothing it found.
    assert alias_a.encode() not in b"".join(refusals)
    assert b"instance A" not in b"".join(refusals)
    status, doc = b.post("/console/api/tokens/action", {"token": "t0", "action": "eject"})
    assert status == 403
    everything = b"".join(answers)
    for secret in (key_a, alias_a.encode(), b"instance A's key", b'"t0"', b'"t1"', b'"t2"',
                   b'"con"'):
        assert (secret if isinstance(secret, bytes) else secret.encode()) not in everything
    kms = console_server.client(console_server.creds["admin"])
    assert kms.describe_key(KeyId=key_a)["KeyMetadata"]["KeyState"] == "Enabled"


def test_a_limited_principal_sees_the_keys_its_policy_covers(
        console_server: Server, console: ConsoleClient) -> None:
    app_key = _key(console_server, "admin", f"alias/app-{time.monotonic_ns()}")
    other_key = _key(console_server, "admin", f"alias/other-{time.monotonic_ns()}")
    doc = console.sign_in(console_server.creds["app"])
    assert not doc["instance_admin"] and not doc["admin"]
    status, keys = console.get("/console/api/keys")
    assert status == 200
    assert _row(keys, app_key) is not None and _row(keys, other_key) is None
    status, doc = console.post("/console/api/keys/action",
                               {"key_id": other_key, "action": "disable"})
    assert status == 404
    status, doc = console.post("/console/api/keys/action",
                               {"key_id": app_key, "action": "disable"})
    assert status == 200
    status, audit = console.get("/console/api/audit?n=200")
    assert status == 200 and audit["own_records_only"]
    assert audit["records"] and {r["principal"] for r in audit["records"]} == {"app"}
    assert "records" not in audit["verification"]  # counts are for administrators


def test_a_console_administrator_sees_every_instance_and_ejects_tokens(
        console_server: Server, console: ConsoleClient) -> None:
    key_b = _key(console_server, "admin2")
    doc = console.sign_in(console_server.creds["root"])
    assert doc["admin"] and doc["instances"] == ["con", "con2"]
    status, ov = console.get("/console/api/overview")
    assert [t["name"] for t in ov["tokens"]] == ["t0", "t1", "t2", "t3", "t4"]
    status, keys = console.get("/console/api/keys?instance=con2")
    assert status == 200 and _row(keys, key_b) is not None
    status, doc = console.post("/console/api/keys/action",
                               {"instance": "con2", "key_id": key_b, "action": "rotate"})
    assert status == 200
    kms2 = console_server.client(console_server.creds["admin2"])
    assert len(kms2.list_key_rotations(KeyId=key_b)["Rotations"]) >= 1

    status, doc = console.post("/console/api/tokens/action", {"token": "tx", "action": "eject"})
    assert status == 404 and doc["error"] == "NotFound"
    status, doc = console.post("/console/api/tokens/action", {"token": "t2", "action": "pause"})
    assert status == 400
    status, doc = console.post("/console/api/tokens/action", {"token": "t2", "action": "eject"})
    assert status == 200 and doc["changed"]
    states = {t["name"]: t for t in console.get("/console/api/overview")[1]["tokens"]}
    assert states["t2"]["state"] == "ejected" and states["t2"]["held"]
    time.sleep(1.0)  # the prober leaves a held token out
    states = {t["name"]: t for t in console.get("/console/api/overview")[1]["tokens"]}
    assert states["t2"]["state"] == "ejected"
    kms = console_server.client(console_server.creds["admin"])
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    for _ in range(20):  # served by the other two meanwhile
        kms.encrypt(KeyId=key, Plaintext=b"x")
    status, doc = console.post("/console/api/tokens/action",
                               {"token": "t2", "action": "readmit"})
    assert status == 200 and doc["changed"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = {t["name"]: t for t in console.get("/console/api/overview")[1]["tokens"]}
        if states["t2"]["state"] == "healthy":
            break
        time.sleep(0.1)
    assert states["t2"]["state"] == "healthy" and not states["t2"]["held"]
    deadline = time.monotonic() + 5  # the history samples once a second
    whats: list[str] = []
    while time.monotonic() < deadline and "readmitted" not in whats:
        events = console.get("/console/api/overview")[1]["events"]
        whats = [e["what"] for e in events if e["token"] == "t2"]
        time.sleep(0.2)
    assert whats[-2:] == ["ejected by an operator", "readmitted"]
    status, audit = console.get("/console/api/audit?instance=con2&n=50")
    assert any(r["principal"] == "console:con/root" and r["action"] == "kms:RotateKeyOnDemand"
               for r in audit["records"])
    assert console.post("/console/api/audit/verify", {})[0] == 200


def test_answers_hold_no_secret_or_plaintext(console_server: Server,
                                              console: ConsoleClient) -> None:
    kms = console_server.client(console_server.creds["admin"])
    key = kms.create_key(Description="canary key")["KeyMetadata"]["KeyId"]
    plaintext = b"console-plaintext-canary-7f3a9c"
    ct = kms.encrypt(KeyId=key, Plaintext=plaintext,
                     EncryptionContext={"secret:pin": "ctx-canary-5521"})["CiphertextBlob"]
    dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    console.sign_in(console_server.creds["root"])
    raw = b""
    for path in ("/console/api/session", "/console/api/overview", "/console/api/keys",
                 "/console/api/audit?n=500", "/console/api/secrets",
                 "/console/api/keys?instance=con2", "/console/api/audit?instance=con2&n=500"):
        status, _ = console.get(path)
        assert status == 200, path
        raw += console.last_raw
    forbidden = [plaintext, base64.b64encode(plaintext), b"ctx-canary-5521",
                 base64.b64encode(ct), base64.b64encode(dk["Plaintext"]), dk["Plaintext"],
                 base64.b64encode(dk["CiphertextBlob"])]
    forbidden += [c.secret.encode() for c in console_server.creds.values()]
    for f in forbidden:
        assert f not in raw
    assert key.encode() in raw  # the answers were the real ones


def test_a_disabled_access_key_ends_its_sessions(console_server: Server,
                                                 console: ConsoleClient) -> None:
    from tests.server.conftest import create_credential
    cred = create_credential(console_server.config, "con", f"temp{time.monotonic_ns()}")
    console.sign_in(cred)
    assert console.get("/console/api/overview")[0] == 200
    subprocess.run([str(HSMPOOL), "--config", str(console_server.config), "credentials",
                    "disable", cred.access_key_id], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 5
    status = 200
    while time.monotonic() < deadline and status == 200:
        status = console.get("/console/api/overview")[0]
        time.sleep(0.05)
    assert status == 401
