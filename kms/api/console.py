"""The operators' console: ``/console``, a web page over a small JSON API (docs/console.md).

Routes (everything else under ``/console`` is a static file of ``console_static/``)::

    GET  /console                      the page (HTML, CSS, JS shipped in the package)
    POST /console/api/session          sign in: {"access_key_id", "secret_access_key"}
    GET  /console/api/session          who is signed in, the CSRF token
    POST /console/api/session/end      sign out
    GET  /console/api/overview         tokens, instances, request rates, token events
    GET  /console/api/keys?instance=I  the key inventory (compact rows)
    POST /console/api/keys/action      {"instance", "key_id", "action": disable|enable|
                                        cancel-deletion|rotate}
    GET  /console/api/audit?instance=I&n=N   the audit tail and the chains' state
    POST /console/api/audit/verify     verify the audit chains now (administrators)
    GET  /console/api/secrets?instance=I     the secrets panel, if the service has secrets
    POST /console/api/tokens/action    {"token", "action": eject|readmit} (administrators)

Who sees what:

* a principal of an instance (any enabled access key) sees its instance: the tokens of its
  partition, its request rates, the keys its policies let it DescribeKey (listed through its
  own :class:`~kms.KmsClient`, so ListKeys and every action are authorised and audited as
  on the AWS front end), and its own audit records; a principal whose own policies allow
  every KMS action on ``*`` (an *instance administrator*) sees every audit record of the
  instance. Nothing of another instance: other instances, their tokens, keys, requests and
  records are neither listed nor reachable (an instance it does not belong to is "not
  found").
* a *console administrator* (``[server] console_admins``) sees every instance and every
  token, acts in each instance as its administrator (the embedding application's client,
  recorded in the audit trail as ``console:<instance>/<name>``), verifies the audit chains
  and ejects or readmits tokens.

Sessions are signed cookies (:mod:`kms.api.console_session`), CSRF-protected.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import orjson

from kms import errors as E
from kms.api import console_secrets
from kms.api.auth import Authenticator
from kms.api.console_audit import AuditView
from kms.api.console_holds import OperatorHolds
from kms.api.console_session import SessionKeys, cookie_header, cookie_value, load_key
from kms.api.console_view import History, ServerView
from kms.api.logs import auth_log
from kms.api.netaddr import source_address
from kms.api.pipeline import Answer, Call, Headers, Request
from kms.model import KeyRecord, KeyState
from kms.policy import ACTIONS
from kms.policy import Request as PolicyRequest

if TYPE_CHECKING:
    from kms.api.metrics import Metrics
    from kms.service import Kms, KmsClient

log = logging.getLogger("hsmpool.server")

PREFIX: Final = "/console"
_JSON: Final = b"application/json"
_TYPES: Final = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
                 "css": b"text/css; charset=utf-8", "svg": b"image/svg+xml"}
_SECURITY: Final[Headers] = (
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"))
_PAGE: Final = 1000
MAX_FAILURES: Final = 10  # failed sign-ins per source address per minute
KEY_ACTIONS: Final = ("disable", "enable", "cancel-deletion", "rotate")
KEY_FIELDS: Final = ("id", "aliases", "spec", "usage", "state", "origin", "created",
                     "rotation", "next_rotation", "deletion", "description", "rotatable")


class ConsoleError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in caller."""

    access_key_id: str
    instance: str
    name: str
    principal: Any
    admin: bool  # a console administrator: every instance
    instance_admin: bool  # own policies allow every KMS action on "*"
    csrf: str
    expires: float
    peer: str | None
    forwarded_for: str | None

    @property
    def caller(self) -> str:
        return f"{self.instance}/{self.name}"


def _error(status: int, code: str, message: str, op: str) -> Answer:
    return Answer(status, orjson.dumps({"error": code, "message": message}), _JSON, op, code,
                  _SECURITY)


def _ok(doc: Any, op: str, extra: Headers = ()) -> Answer:
    return Answer(200, orjson.dumps(doc), _JSON, op, "ok", _SECURITY + extra)


_STATUS: Final = {"NotFound": 404, "AccessDenied": 403, "KeyUnavailable": 503,
                  "DependencyTimeout": 503, "Internal": 500}


def _status_of(exc: E.KmsError) -> int:
    """The console's HTTP status for a service error (its code is the error's kind)."""
    return _STATUS.get(exc.kind, 400)


def key_row(rec: KeyRecord, aliases: list[str]) -> list[Any]:
    """A key as one compact row (:data:`KEY_FIELDS`)."""
    return [rec.key_id, " ".join(sorted(aliases)), rec.spec.value, rec.usage.value,
            rec.state.value, rec.origin.value, int(rec.created),
            rec.rotation_period_days if rec.rotation_enabled else 0,
            int(rec.next_rotation) if rec.rotation_enabled and rec.next_rotation else 0,
            int(rec.deletion_date) if rec.deletion_date else 0, rec.description[:120],
            int(rec.info.rotatable and rec.origin.value == "AWS_KMS")]


class ConsoleFrontend:
    """The console as a front end of the request pipeline (see the module docstring)."""

    name = "console"

    def __init__(self, kms: Kms, auth: Authenticator, metrics: Metrics, *,
                 now: Callable[[], float] = time.time) -> None:
        server = kms.settings.server
        self.kms = kms
        self.auth = auth
        self.metrics = metrics
        self.now = now
        self.secure = server.tls_cert is not None
        self.admins = frozenset(server.console_admins)
        self._state_dir = server.state_dir
        self._lifetime = server.console_session_hours * 3600.0
        self._sessions: SessionKeys | None = None
        self.view = ServerView(kms, metrics, now=now)
        self.history = History(self.view)
        self.audit = AuditView(kms.settings.audit_dir, kms.settings.secret_context_keys,
                               now=now)
        self._holds: OperatorHolds | None = None
        self._static = _load_static()
        self._admin_clients: dict[tuple[str, str], KmsClient] = {}
        self._failures: dict[str, list[float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        metrics.tick_hooks.append(self.tick)
        self._routes: dict[tuple[str, str], tuple[str, bool, Handler]] = {
            ("GET", "/console/api/session"): ("Console.Session", False, self._session),
            ("POST", "/console/api/session/end"): ("Console.SignOut", False, self._sign_out),
            ("GET", "/console/api/overview"): ("Console.Overview", False, self._overview),
            ("GET", "/console/api/keys"): ("Console.Keys", True, self._keys),
            ("POST", "/console/api/keys/action"): ("Console.KeyAction", True, self._key_action),
            ("GET", "/console/api/audit"): ("Console.Audit", True, self._audit),
            ("POST", "/console/api/audit/verify"): ("Console.VerifyAudit", False,
                                                    self._verify_audit),
            ("GET", "/console/api/secrets"): ("Console.Secrets", True, self._secrets),
            ("POST", "/console/api/tokens/action"): ("Console.TokenAction", True,
                                                     self._token_action),
        }

    # --- the worker's life -----------------------------------------------------------

    @property
    def sessions(self) -> SessionKeys | None:
        """The session keys, read (or made) on first use: None if the state folder has no
        usable console key (logged; the console's API then answers 503)."""
        if self._sessions is None:
            try:
                self._sessions = SessionKeys(load_key(self._state_dir), self._lifetime,
                                             now=self.now)
            except OSError as exc:
                log.error("console: no session key in %s: %s", self._state_dir, exc)
        return self._sessions

    @property
    def holds(self) -> OperatorHolds:
        if self._holds is None:  # the state folder is known once the server set it up
            share = self.metrics.share
            self._holds = OperatorHolds(self.kms, share.directory if share else None)
        return self._holds

    def tick(self) -> None:
        """Once a second: apply other workers' operator holds, sample the history."""
        self.holds.apply()
        self.history.sample()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sample once a second on ``loop`` when no metrics tick does (one worker)."""
        if self.metrics.share is not None or self._timer is not None:
            return

        def tick() -> None:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the sampling must go on
                log.exception("console sampling failed")
            self._timer = loop.call_later(1.0, tick)

        tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- the Frontend protocol -------------------------------------------------------

    def accepts(self, req: Request) -> bool:
        return req.path == PREFIX or req.path.startswith(PREFIX + "/")

    def throttled(self, operation: str) -> Answer:
        return _error(429, "Throttling", "too many requests; retry", operation)

    def timed_out(self, operation: str) -> Answer:
        return _error(503, "Timeout", "the request did not finish in time; retry", operation)

    def internal_error(self, operation: str) -> Answer:
        return _error(500, "InternalError", "internal error", operation)

    def prepare(self, req: Request) -> Call | Answer:
        path = req.path
        if not path.startswith(PREFIX + "/api/"):
            if req.method != "GET":
                return _error(405, "MethodNotAllowed", "GET only", "Console.Static")
            return self._static_file(path)
        if self.sessions is None:
            return _error(503, "ConsoleUnavailable", "the console has no session key",
                          "Console")
        if (req.method, path) == ("POST", "/console/api/session"):
            return self._sign_in(req)
        route = self._routes.get((req.method, path))
        if route is None:
            return _error(404, "NotFound", "no such console resource", "Console")
        op, blocking, handler = route
        viewer = self._viewer(req)
        if isinstance(viewer, Answer):
            if op == "Console.Session" and viewer.status == 401:
                return _ok({"signed_in": False}, op)
            return viewer
        if req.method == "POST":
            refusal = self._check_post(req, viewer, op)
            if refusal is not None:
                return refusal
        try:
            body = orjson.loads(req.body) if req.body else {}
        except (ValueError, UnicodeError, RecursionError):
            return _error(400, "BadRequest", "the body is not valid JSON", op)
        if not isinstance(body, dict):
            return _error(400, "BadRequest", "the body must be a JSON object", op)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(req.query).items()}

        def run() -> Answer:
            try:
                out = handler(viewer, query, body)
            except ConsoleError as exc:
                return _error(exc.status, exc.code, exc.message, op)
            except E.KmsError as exc:
                return _error(_status_of(exc), exc.kind, exc.message, op)
            except Exception:  # noqa: BLE001 - a bug of ours: log the type, never the data
                log.exception("internal error in %s", op)
                return self.internal_error(op)
            if isinstance(out, Answer):
                return out
            return _ok(out, op)

        return Call(op, viewer.principal.id, blocking, run, viewer.caller,
                    source_address(req.peer, req.headers.get("x-forwarded-for"),
                                   self.auth.trusted_proxies))

    # --- static files ----------------------------------------------------------------

    def _static_file(self, path: str) -> Answer:
        name = "index.html" if path in (PREFIX, PREFIX + "/") else path[len(PREFIX) + 1:]
        hit = self._static.get(name)
        if hit is None:
            return _error(404, "NotFound", "no such console resource", "Console.Static")
        data, ctype = hit
        return Answer(200, data, ctype, "Console.Static", "ok", _SECURITY)

    # --- sessions --------------------------------------------------------------------

    def _origin_ok(self, req: Request) -> bool:
        """A browser's ``Origin`` (or ``Referer``), when sent, must be this host."""
        origin = req.headers.get("origin") or req.headers.get("referer")
        if not origin or origin == "null":
            return origin is None
        host = urllib.parse.urlsplit(origin).netloc
        return bool(host) and host == req.headers.get("host")

    def _check_post(self, req: Request, viewer: Viewer, op: str) -> Answer | None:
        assert self.sessions is not None
        if not self._origin_ok(req):
            return _error(403, "Forbidden", "cross-origin request refused", op)
        token = req.headers.get("x-csrf-token")
        if token is None or not hmac.compare_digest(token.encode(), viewer.csrf.encode()):
            return _error(403, "Forbidden", "missing or wrong X-CSRF-Token", op)
        return None

    def _too_many(self, source: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(source, ()) if now - t < 60.0]
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures[source] = recent
        return len(recent) >= MAX_FAILURES

    def _sign_in(self, req: Request) -> Answer:
        op = "Console.SignIn"
        assert self.sessions is not None
        source = source_address(req.peer, req.headers.get("x-forwarded-for"),
                                self.auth.trusted_proxies) or "-"
        if not self._origin_ok(req):
            return _error(403, "Forbidden", "cross-origin request refused", op)
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _error(415, "BadRequest", "send application/json", op)
        if self._too_many(source):
            return _error(429, "Throttling", "too many failed sign-ins; wait a minute", op)
        try:
            body = orjson.loads(req.body)
        except (ValueError, UnicodeError, RecursionError):
            body = None
        akid = body.get("access_key_id") if isinstance(body, dict) else None
        secret = body.get("secret_access_key") if isinstance(body, dict) else None
        if not (isinstance(akid, str) and isinstance(secret, str) and 0 < len(akid) <= 128
                and akid.isalnum() and 0 < len(secret) <= 256):
            return _error(400, "BadRequest", "give access_key_id and secret_access_key", op)
        try:
            self.auth.fresh()
            expected = self.auth.creds.secret_for(akid)
            principal = self.auth.creds.principal_for(akid) if expected is not None else None
        except (E.KeyUnavailable, E.DependencyTimeout) as exc:
            return _error(503, exc.kind, "the secret cannot be checked now; retry", op)
        except E.KmsError:
            expected, principal = None, None
        # Compared in constant time, also for an unknown access key.
        good = hmac.compare_digest(secret.encode(), (expected or "\0" * 40).encode())
        if not good or principal is None:
            self._failures.setdefault(source, []).append(time.monotonic())
            auth_log.warning("console sign-in failed: access key id %s from %s", akid, source)
            return _error(401, "SignInFailed", "unknown access key or wrong secret", op)
        cookie, session = self.sessions.issue(akid)
        max_age = int(session.expires - self.now())
        doc = self._session_doc(self._make_viewer(
            akid, principal, self.sessions.csrf_token(session), session.expires, req))
        return _ok(doc, op, ((b"set-cookie", cookie_header(cookie, max_age, self.secure)),))

    def _make_viewer(self, akid: str, principal: Any, csrf: str, expires: float,
                     req: Request) -> Viewer:
        admin = f"{principal.instance}/{principal.name}" in self.admins
        return Viewer(akid, principal.instance, principal.name, principal, admin,
                      self._instance_admin(principal), csrf, expires, req.peer,
                      req.headers.get("x-forwarded-for"))

    def _instance_admin(self, principal: Any) -> bool:
        authz = self.kms.authorizer
        return all(authz.effect(principal, PolicyRequest(a, (), principal.instance)) == "Allow"
                   for a in sorted(ACTIONS))

    def _viewer(self, req: Request) -> Viewer | Answer:
        op = "Console"
        assert self.sessions is not None
        session = self.sessions.check(cookie_value(req.headers.get("cookie")))
        if session is None:
            return _error(401, "SignInRequired", "sign in first", op)
        try:
            self.auth.fresh()
            if self.auth.creds.secret_for(session.access_key_id) is None:
                return _error(401, "SignInRequired", "the access key is disabled or gone", op)
            principal = self.auth.creds.principal_for(session.access_key_id)
        except (E.KeyUnavailable, E.DependencyTimeout) as exc:
            return _error(503, exc.kind, "the session cannot be checked now; retry", op)
        except E.KmsError:
            return _error(401, "SignInRequired", "the access key is disabled or gone", op)
        return self._make_viewer(session.access_key_id, principal,
                                 self.sessions.csrf_token(session), session.expires, req)

    def _session_doc(self, v: Viewer) -> dict[str, Any]:
        return {"signed_in": True, "access_key_id": v.access_key_id, "instance": v.instance,
                "name": v.name, "admin": v.admin, "instance_admin": v.instance_admin,
                "instances": self._instances(v), "expires": v.expires, "csrf": v.csrf}

    def _session(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        return self._session_doc(v)

    def _sign_out(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        return _ok({"signed_in": False}, "Console.SignOut",
                   ((b"set-cookie", cookie_header("", 0, self.secure)),))

    # --- scope -------------------------------------------------------------------------

    def _instances(self, v: Viewer) -> list[str]:
        return sorted(self.kms.partitions()) if v.admin else [v.instance]

    def _client(self, v: Viewer, instance: str | None) -> KmsClient:
        """The service client through which the viewer sees and acts in ``instance``."""
        inst = instance or v.instance
        if v.admin and inst in self.kms.partitions():
            key = (v.access_key_id, inst)
            client = self._admin_clients.get(key)
            if client is None:
                client = self.kms.client(inst, None, audit_name=f"console:{v.caller}")
                if len(self._admin_clients) > 1000:
                    self._admin_clients.clear()
                self._admin_clients[key] = client
            return client
        if inst != v.instance:
            raise ConsoleError(404, "NotFound", f"no instance {inst!r}")
        return self.auth.client(v.access_key_id, v.peer, v.forwarded_for)

    # --- the overview ----------------------------------------------------------------

    def _overview(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        st = self.view.state()
        visible = set(self._instances(v))
        rates = self.history.token_rates(st)
        health = self.kms.health()
        tokens = [t for t in st.tokens.values()
                  if visible & set(t.instances) or (v.admin and not t.instances)]
        names = [t.name for t in tokens]
        token_rows = []
        for t in tokens:
            ops_s, err = rates.get(t.name, (0.0, 0.0))
            token_rows.append({
                "name": t.name, "label": t.label,
                "instances": [i for i in t.instances if i in visible], "state": t.state,
                "held": t.held, "workers": t.workers, "workers_healthy": t.workers_healthy,
                "in_flight": t.in_flight, "ops": t.ops, "errors": t.errors,
                "ejections": t.ejections, "p50_ms": round(t.p50_ms, 3),
                "p99_ms": round(t.p99_ms, 3), "ops_s": round(ops_s, 1),
                "error_rate": round(err, 4), "missing": health.missing.get(t.name)})
        instances = []
        parts = self.kms.partitions()
        for inst in sorted(visible):
            members = parts.get(inst, ())
            instances.append({
                "name": inst, "tokens": list(members),
                "healthy": sum(1 for m in members if st.tokens.get(m) is not None
                               and st.tokens[m].state == "healthy"),
                "account": self.kms.account(inst)})
        requests = []
        for (fe, inst, op), (rate, failed) in sorted(self.history.call_rates(st).items()):
            if inst in visible or (v.admin and inst == "-"):
                ok, bad = st.calls[(fe, inst, op)]
                requests.append({"frontend": fe, "instance": inst, "operation": op,
                                 "per_s": round(rate, 2), "failed_per_s": round(failed, 2),
                                 "total": ok + bad, "failed": bad})
        events = [{"time": e.time, "token": e.token, "what": e.what}
                  for e in list(self.history.events)[-50:] if e.token in names]
        return {"time": st.time, "workers": st.workers, "store_ok": health.store_ok,
                "tokens": token_rows, "instances": instances, "requests": requests,
                "events": events, "series": self.history.token_series(names)}

    # --- keys --------------------------------------------------------------------------

    def _keys(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        client = self._client(v, q.get("instance"))
        records: list[KeyRecord] = []
        marker: str | None = None
        while True:
            page = client.list_keys(_PAGE, marker)
            records.extend(client.describable(page.items))
            marker = page.next_marker
            if not marker:
                break
        aliases: dict[str, list[str]] = {}
        try:
            marker = None
            while True:
                apage = client.list_aliases(None, _PAGE, marker)
                for a in apage.items:
                    aliases.setdefault(a.key_id, []).append(a.name)
                marker = apage.next_marker
                if not marker:
                    break
        except E.AccessDenied:
            pass  # the keys without their aliases
        return {"instance": client.instance_name,
                "arn_prefix": self.kms.key_arn(client.instance_name, ""),
                "fields": list(KEY_FIELDS),
                "rows": [key_row(r, aliases.get(r.key_id, [])) for r in records]}

    def _key_action(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        client = self._client(v, _text(b, "instance", required=False))
        key_id = _text(b, "key_id")
        action = _text(b, "action")
        if action == "disable":
            client.disable_key(key_id)
        elif action == "enable":
            client.enable_key(key_id)
        elif action == "cancel-deletion":
            client.cancel_key_deletion(key_id)
        elif action == "rotate":
            client.rotate_key_on_demand(key_id)
        else:
            raise ConsoleError(400, "BadRequest", f"action must be one of {KEY_ACTIONS}")
        rec = client.describe_key(key_id)
        names = [a.name for a in client.list_aliases(rec.key_id, 100).items] \
            if rec.state is not KeyState.PENDING_DELETION else []
        return {"instance": client.instance_name, "fields": list(KEY_FIELDS),
                "row": key_row(rec, names)}

    # --- audit, secrets, tokens ---------------------------------------------------------

    def _audit(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        inst = q.get("instance") or v.instance
        if inst not in self._instances(v):
            raise ConsoleError(404, "NotFound", f"no instance {inst!r}")
        try:
            n = int(q.get("n", "50"))
        except ValueError:
            raise ConsoleError(400, "BadRequest", "n must be a number") from None
        mine_only = not (v.admin or v.instance_admin)
        records = self.audit.tail(n, inst, v.name if mine_only else None)
        ver = self.audit.verification()
        state: dict[str, Any] = {"enabled": self.audit.directory is not None,
                                 "checked": ver.checked if ver else None,
                                 "ok": ver.ok if ver else None}
        if ver is not None and v.admin:
            state.update(records=ver.records, segments=ver.segments,
                         seconds=round(ver.seconds, 3), problems=list(ver.problems))
        return {"instance": inst, "own_records_only": mine_only, "records": records,
                "verification": state}

    def _verify_audit(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        if not v.admin:
            raise ConsoleError(403, "Forbidden", "console administrators only")
        self.audit.verification(force=True)
        return {"started": True}

    def _secrets(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        return console_secrets.panel(self._client(v, q.get("instance")))

    def _token_action(self, v: Viewer, q: dict[str, str], b: dict[str, Any]) -> Any:
        if not v.admin:
            raise ConsoleError(403, "Forbidden", "console administrators only")
        token = _text(b, "token")
        action = _text(b, "action")
        if action not in ("eject", "readmit"):
            raise ConsoleError(400, "BadRequest", "action must be eject or readmit")
        changed = self.holds.set(token, action == "eject")
        log.warning("console: %s %s token %r", v.caller,
                    "ejected" if action == "eject" else "readmitted", token)
        return {"token": token, "action": action, "changed": changed}


Handler = Callable[[Viewer, dict[str, str], dict[str, Any]], Any]


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    v = body.get(name)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or not v or len(v) > 2048:
        raise ConsoleError(400, "BadRequest", f"{name!r} must be a non-empty string")
    return v


def _load_static() -> dict[str, tuple[bytes, bytes]]:
    """The console's files, read once from the package."""
    out: dict[str, tuple[bytes, bytes]] = {}
    root = resources.files("kms.api") / "console_static"
    for entry in root.iterdir():
        ext = entry.name.rpartition(".")[2]
        if entry.is_file() and ext in _TYPES:
            out[entry.name] = (entry.read_bytes(), _TYPES[ext])
    return out
