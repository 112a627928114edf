"""The PostgreSQL rotators: a real role's password, changed with ``ALTER ROLE``.

A database secret is JSON as AWS's rotation functions expect it: ``engine``
(``postgres``/``postgresql``), ``host``, ``port``, ``username``, ``password``, ``dbname``,
and ``masterarn``: the name or ARN of another secret holding an administrator's
``username`` and ``password`` (and optionally its own ``host``/``port``/``dbname``), which
setSecret connects as.

* ``postgresql`` (single user): the role's password changes; clients holding the old value
  fail from then on until they fetch the new one (use it where a brief failure is fine);
* ``postgresql-dual`` (alternating users): ``<user>`` and ``<user>_clone`` take turns.
  Each rotation sets a new password on the role that is *not* current (made on first use as
  a member of ``<user>``, so it has the same privileges) and makes it current; the previous
  value stays valid until the rotation after, so a client with a cached value keeps
  working if it refreshes within one rotation interval.

testSecret connects with the new value and runs ``SELECT 1``. Errors name the step's cause
(the exception type and PostgreSQL's message, with the passwords removed), never a value.
Needs ``psycopg`` 3 (the ``postgres`` extra).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kms.secrets.rotation import RotationContext

CONNECT_TIMEOUT: Final = 5
CLONE_SUFFIX: Final = "_clone"
_ENGINES: Final = ("postgres", "postgresql", "aurora-postgresql")


def _error(message: str) -> Exception:
    from kms.secrets.rotation import RotationError

    return RotationError(message)


def _doc(value: str | None, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(value) if value is not None else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise _error(f"the {what} secret is not a JSON object")
    return doc


def _check(doc: dict[str, Any], *fields: str) -> None:
    missing = [f for f in fields if not isinstance(doc.get(f), str | int) or doc.get(f) == ""]
    if missing:
        raise _error(f"the secret lacks {', '.join(missing)}")
    engine = doc.get("engine", "postgres")
    if engine not in _ENGINES:
        raise _error(f"engine {engine!r} is not PostgreSQL")


def _connect(doc: dict[str, Any], *, user: str | None = None,
             password: str | None = None) -> Any:
    try:
        import psycopg
    except ImportError:
        raise _error("psycopg is not installed (pip install hsmpool[postgres])") from None
    pw = password if password is not None else str(doc["password"])
    try:
        return psycopg.connect(host=str(doc["host"]), port=int(doc.get("port", 5432)),
                               dbname=str(doc.get("dbname", "postgres")),
                               user=user if user is not None else str(doc["username"]),
                               password=pw, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
    except psycopg.Error as exc:
        raise _error(_scrub(f"cannot connect to {doc['host']}:{doc.get('port', 5432)}: "
                            f"{type(exc).__name__}: {str(exc).strip()[:300]}", pw)) from None
    except (ValueError, TypeError):
        raise _error("the secret's host, port or dbname is not valid") from None


def _scrub(text: str, *secrets: str) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    return text


def _master(ctx: RotationContext, doc: dict[str, Any]) -> dict[str, Any]:
    arn = doc.get("masterarn")
    if not isinstance(arn, str) or not arn:
        raise _error("the secret has no masterarn (the administrator's secret)")
    try:
        master = _doc(ctx.secret_string(arn), "administrator's")
    except Exception as exc:
        if type(exc).__name__ == "RotationError":
            raise
        raise _error(f"cannot read the administrator's secret {arn}: "
                     f"{getattr(exc, 'kind', type(exc).__name__)}") from None
    _check(master, "username", "password")
    return {**doc, **{k: master[k] for k in ("host", "port", "dbname") if k in master},
            "username": master["username"], "password": master["password"]}


def _alter_password(ctx: RotationContext, doc: dict[str, Any], role: str, password: str,
                    *, clone_of: str | None = None) -> None:
    from psycopg import Error, sql

    admin = _master(ctx, doc)
    conn = _connect(admin)
    try:
        with conn:
            if clone_of is not None:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                      (role,)).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)))
                    conn.execute(sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(clone_of), sql.Identifier(role)))
                    return
            conn.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
    except Error as exc:
        raise _error(_scrub(f"{type(exc).__name__}: {str(exc).strip()[:300]}", password,
                            str(admin["password"]))) from None


def single_create(current: str | None) -> str:
    from kms.secrets.rotation import new_password

    doc = _doc(current, "database")
    _check(doc, "host", "username", "password")
    return json.dumps({**doc, "password": new_password()})


def single_set(ctx: RotationContext, current: str | None, pending: str) -> None:
    doc = _doc(pending, "pending")
    _alter_password(ctx, doc, str(doc["username"]), str(doc["password"]))


def _base_user(username: str) -> str:
    return username[:-len(CLONE_SUFFIX)] if username.endswith(CLONE_SUFFIX) else username


def dual_create(current: str | None) -> str:
    from kms.secrets.rotation import new_password

    doc = _doc(current, "database")
    _check(doc, "host", "username", "password")
    user = str(doc["username"])
    base = _base_user(user)
    other = base if user != base else base + CLONE_SUFFIX
    return json.dumps({**doc, "username": other, "password": new_password()})


def dual_set(ctx: RotationContext, current: str | None, pending: str) -> None:
    doc = _doc(pending, "pending")
    user = str(doc["username"])
    base = _base_user(user)
    _alter_password(ctx, doc, user, str(doc["password"]),
                    clone_of=base if user != base else None)


def test(ctx: RotationContext, pending: str) -> None:
    doc = _doc(pending, "pending")
    conn = _connect(doc)
    try:
        with conn:
            row = conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        raise _error(_scrub(f"the new value does not work: {type(exc).__name__}",
                            str(doc["password"]))) from None
    if row != (1,):
        raise _error("the new value does not work: SELECT 1 failed")
