"""Secrets delivered without code change (kms.secrets.delivery): ``hsmpool secret exec``
and ``hsmpool secret agent`` reading a real server's Secrets Manager API (and the embedded
service), and ``connect_postgres`` following a rotation of a real PostgreSQL role."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from kms.secrets.delivery import connect_postgres
from tests.postgres import PostgresCluster
from tests.server.conftest import HSMPOOL, REGION, Server


@pytest.fixture(scope="module")
def sm(server: Server) -> Any:
    return server.client(server.creds["admin"], service="secretsmanager")


def _env(server: Server) -> dict[str, str]:
    cred = server.creds["admin"]
    return {**os.environ, "AWS_ENDPOINT_URL_SECRETS_MANAGER": server.url,
            "AWS_ACCESS_KEY_ID": cred.access_key_id, "AWS_SECRET_ACCESS_KEY": cred.secret,
            "AWS_DEFAULT_REGION": REGION}


def test_exec_puts_secrets_in_the_environment(server: Server, sm: Any) -> None:
    name = f"deliver/{uuid.uuid4().hex[:8]}"
    arn = sm.create_secret(Name=name, SecretString=json.dumps(
        {"username": "app", "password": "pw-exec"}))["ARN"]
    sm_plain = f"deliver/plain-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=sm_plain, SecretString="plain-value")
    show = "import os; print(os.environ['DB_USER'], os.environ['DB_PASSWORD'], os.environ['T'])"
    out = subprocess.run(
        [HSMPOOL, "secret", "exec", "--env", f"DB_USER={name}:username",
         "--env", f"DB_PASSWORD={arn}:password", "--env", f"T={sm_plain}", "--",
         sys.executable, "-c", show], env=_env(server), capture_output=True, text=True,
        timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["app", "pw-exec", "plain-value"]
    # Through the embedded service of --config (an operator on the server's machine).
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL_SECRETS_MANAGER"}
    out = subprocess.run(
        [HSMPOOL, "--config", str(server.config), "secret", "exec", "--instance", "srv",
         "--env", f"P={name}:password", "--", sys.executable, "-c",
         "import os; print(os.environ['P'])"], env=env, capture_output=True, text=True,
        timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "pw-exec", out.stderr
    # A missing field fails before the command runs, naming the field, not the value.
    out = subprocess.run([HSMPOOL, "secret", "exec", "--env", f"X={name}:nope", "--",
                          "true"], env=_env(server), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "'nope'" in out.stderr and "pw-exec" not in out.stderr


def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_agent_rewrites_files_after_each_rotation(server: Server, sm: Any,
                                                  tmp_path: Path) -> None:
    name = f"deliver/agent-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps({"password": "first"}))
    out = tmp_path / "secrets"
    proc = subprocess.Popen(
        [HSMPOOL, "secret", "agent", "--to", str(out), "--interval", "0.2",
         f"db.json={name}", f"password={name}:password"], env=_env(server),
        stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "password").exists())
        assert (out / "password").read_text() == "first"
        assert stat.S_IMODE((out / "password").stat().st_mode) == 0o600
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        sm.rotate_secret(SecretId=name, RotationLambdaARN="arn:hsmpool:rotator:generic")
        new = json.loads(sm.get_secret_value(SecretId=name)["SecretString"])["password"]
        _wait_for(lambda: (out / "password").read_text() == new)
        assert json.loads((out / "db.json").read_text())["password"] == new
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "first" not in err and new not in err


def test_connect_postgres_follows_a_rotation(sm: Any, postgres: PostgresCluster) -> None:
    user, password = f"conn_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    postgres.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(user), sql.Literal(password)).as_string())
    master = f"pg/conn-master-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=master, SecretString=json.dumps(
        {"username": postgres.user, "password": postgres.password, "host": postgres.host,
         "port": postgres.port}))
    name = f"pg/conn-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps(
        {"engine": "postgres", "host": postgres.host, "port": postgres.port, "username": user,
         "password": password, "dbname": "postgres", "masterarn": master}))
    reads: list[str] = []

    def fetch(client: Any, secret_id: str) -> dict[str, Any]:
        reads.append(secret_id)
        doc: dict[str, Any] = json.loads(client.get_secret_value(
            SecretId=secret_id)["SecretString"])
        return doc

    with connect_postgres(name, sm, fetch=fetch) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    sm.rotate_secret(SecretId=name, RotationLambdaARN="arn:hsmpool:rotator:postgresql")
    # The remembered password is refused now: the helper reads the secret again.
    with connect_postgres(name, sm, fetch=fetch) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert reads == [name, name]
    with connect_postgres(name, sm) as conn:  # the default reader (boto3 client)
        assert conn.execute("SELECT 1").fetchone() == (1,)
