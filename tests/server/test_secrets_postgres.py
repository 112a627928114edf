"""Rotation of real PostgreSQL credentials (kms.secrets.pgrotators) through a real
``hsmpool serve`` and unmodified boto3, against a throw-away PostgreSQL cluster.

While a client keeps opening connections with the value from aws-secretsmanager-caching, 20
dual-account rotations happen and not one connection fails. Single-account rotation works.
A wrong administrator credential, an unreachable database and a failing test step each
leave the current value working, with the reason visible in DescribeSecret.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from aws_secretsmanager_caching import SecretCache, SecretCacheConfig
from psycopg import sql

from tests.postgres import PostgresCluster
from tests.server.conftest import Server, raises_code


@pytest.fixture(scope="module")
def sm(server: Server) -> Any:
    return server.client(server.creds["admin"], service="secretsmanager")


@pytest.fixture(scope="module")
def master(sm: Any, postgres: PostgresCluster) -> str:
    name = f"pg/master-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps(
        {"engine": "postgres", "host": postgres.host, "port": postgres.port,
         "username": postgres.user, "password": postgres.password, "dbname": "postgres"}))
    return name


def _role(postgres: PostgresCluster, base: str) -> tuple[str, str]:
    user, password = f"{base}_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    postgres.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(user), sql.Literal(password)).as_string())
    return user, password


def _db_secret(sm: Any, postgres: PostgresCluster, master: str, user: str, password: str,
               rotator: str, **extra: Any) -> str:
    name = f"pg/app-{uuid.uuid4().hex[:8]}"
    value = {"engine": "postgres", "host": postgres.host, "port": postgres.port,
             "username": user, "password": password, "dbname": "postgres",
             "masterarn": master, **extra}
    sm.create_secret(Name=name, SecretString=json.dumps(value),
                     Tags=[{"Key": "hsmpool:rotator", "Value": rotator}])
    return name


def _connects(postgres: PostgresCluster, value: dict[str, Any]) -> bool:
    try:
        with psycopg.connect(host=postgres.host, port=postgres.port, dbname="postgres",
                             user=value["username"], password=value["password"],
                             connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def _current(sm: Any, name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(sm.get_secret_value(SecretId=name)["SecretString"])
    return value


def test_twenty_dual_rotations_and_not_one_failed_connection(
        sm: Any, postgres: PostgresCluster, master: str) -> None:
    user, password = _role(postgres, "app")
    name = _db_secret(sm, postgres, master, user, password, "postgresql-dual")
    cache = SecretCache(config=SecretCacheConfig(secret_refresh_interval=1), client=sm)
    stop = threading.Event()
    outcomes: list[tuple[str, bool]] = []

    def client_loop() -> None:
        while not stop.is_set():
            value = json.loads(cache.get_secret_string(name))
            outcomes.append((value["username"], _connects(postgres, value)))
            time.sleep(0.02)

    thread = threading.Thread(target=client_loop)
    thread.start()
    versions = []
    try:
        for _ in range(20):
            time.sleep(1.6)  # longer than the cache's refresh interval
            versions.append(sm.rotate_secret(SecretId=name)["VersionId"])
        time.sleep(1.2)
    finally:
        stop.set()
        thread.join(30)
    assert len(set(versions)) == 20
    failed = [o for o in outcomes if not o[1]]
    assert not failed, (len(failed), len(outcomes))
    users = {u for u, _ in outcomes}
    assert users == {user, user + "_clone"}, users  # the client followed the rotations
    assert len(outcomes) > 200
    current = _current(sm, name)
    previous = json.loads(sm.get_secret_value(SecretId=name,
                                              VersionStage="AWSPREVIOUS")["SecretString"])
    assert current["username"] != previous["username"]
    assert _connects(postgres, current) and _connects(postgres, previous)


def test_single_user_rotation(sm: Any, postgres: PostgresCluster, master: str) -> None:
    user, password = _role(postgres, "single")
    name = _db_secret(sm, postgres, master, user, password, "postgresql")
    sm.rotate_secret(SecretId=name)
    new = _current(sm, name)
    assert new["username"] == user and new["password"] != password
    assert _connects(postgres, new)
    assert not _connects(postgres, {"username": user, "password": password})


def _failed_rotation_keeps_current(sm: Any, postgres: PostgresCluster, name: str,
                                   step: str) -> str:
    before = _current(sm, name)
    with raises_code(sm, "InvalidRequestException") as info:
        sm.rotate_secret(SecretId=name)
    message = info.value.response["Error"]["Message"]
    assert step in message, message
    assert _current(sm, name) == before  # AWSCURRENT untouched
    assert _connects(postgres, before)
    desc = sm.describe_secret(SecretId=name)
    assert any("AWSPENDING" in s for s in desc["VersionIdsToStages"].values())
    # The reason is kept on the secret (DescribeSecret's raw JSON; boto3 drops unmodelled
    # fields) and never holds a password.
    assert before["password"] not in message
    return message


def test_a_wrong_admin_credential_leaves_the_old_value_working(
        sm: Any, postgres: PostgresCluster) -> None:
    bad_master = f"pg/badmaster-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=bad_master, SecretString=json.dumps(
        {"username": postgres.user, "password": "not-the-password", "host": postgres.host,
         "port": postgres.port}))
    user, password = _role(postgres, "wrongadmin")
    name = _db_secret(sm, postgres, bad_master, user, password, "postgresql")
    message = _failed_rotation_keeps_current(sm, postgres, name, "setSecret")
    assert "not-the-password" not in message
    # Once the administrator's secret is fixed, a retry finishes the same rotation.
    sm.put_secret_value(SecretId=bad_master, SecretString=json.dumps(
        {"username": postgres.user, "password": postgres.password, "host": postgres.host,
         "port": postgres.port}))
    pending = [v for v, s in sm.describe_secret(SecretId=name)["VersionIdsToStages"].items()
               if "AWSPENDING" in s]
    done = sm.rotate_secret(SecretId=name)
    assert [done["VersionId"]] == pending
    assert _connects(postgres, _current(sm, name))


def test_an_unreachable_database_leaves_the_old_value_working(
        sm: Any, postgres: PostgresCluster, master: str) -> None:
    unreachable = f"pg/unreachable-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=unreachable, SecretString=json.dumps(
        {"username": postgres.user, "password": postgres.password, "host": "127.0.0.1",
         "port": 1}))
    user, password = _role(postgres, "unreach")
    name = _db_secret(sm, postgres, unreachable, user, password, "postgresql")
    message = _failed_rotation_keeps_current(sm, postgres, name, "setSecret")
    assert "cannot connect" in message


def test_a_failing_test_step_leaves_the_old_value_working(
        sm: Any, postgres: PostgresCluster, master: str) -> None:
    user, password = _role(postgres, "failtest")
    name = _db_secret(sm, postgres, master, user, password, "postgresql-dual")
    sm.rotate_secret(SecretId=name)  # makes <user>_clone, now current
    sm.rotate_secret(SecretId=name)  # back to <user>
    # The next rotation goes to the clone: it may no longer log in, so testSecret fails.
    postgres.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 0").format(
        sql.Identifier(user + "_clone")).as_string())
    _failed_rotation_keeps_current(sm, postgres, name, "testSecret")
