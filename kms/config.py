"""The ``[kms]`` section of the configuration file (the pool's TOML file).

::

    [kms]
    database = "kms.db"          # SQLite metadata file, relative to the config file,
                                 # or postgresql://user:password@host:port/dbname
    audit_dir = "audit"          # hash-chained audit segments
    audit_ship = false           # also copy each process's segment into the store (several
                                 # nodes: ``hsmpool audit verify --all-nodes``)
    region = "us-east-1"         # used in ARNs
    max_plaintext = 4096         # Encrypt limit, bytes (AWS: 4096)
    import_token_ttl = 86400     # seconds a GetParametersForImport token stays valid
    secret_context_keys = []     # encryption-context keys whose values never reach the audit
    store_grace = 30             # seconds a node cut off from its store serves from its caches
    [kms.accounts]
    default = "111122223333"     # account id of an instance (ARNs); else one is generated

    [server]                     # how ``hsmpool serve`` runs; its options override these
    host = "127.0.0.1"           # address to listen on
    port = 8080                  # TCP port (0: any free port)
    workers = 0                  # worker processes; 0: one per core
    tls_cert = ""                # PEM certificate (chain): serve HTTPS; "" for HTTP
    tls_key = ""                 # PEM private key of tls_cert (unencrypted)
    log_level = "warning"        # critical, error, warning, info, debug, trace
    access_log = "off"           # "json" (JSON lines), "text", or "off"
    state_dir = "run"            # per-server folder of the workers' metrics files
    seed = ""                    # a seed file of keys and aliases made at start if absent
    request_timeout = 10.0       # seconds a request may take; past it: a retryable 503
    rate_limit = 0               # requests/s per principal (0: none); ThrottlingException past it
    rate_burst = 0               # requests above the rate a principal may send at once
    max_blocking_per_principal = 8   # state-writing operations in progress per principal
    trusted_proxies = []         # IPs/CIDRs whose X-Forwarded-For is believed (see
                                 # kms/api/netaddr.py); empty: the TCP peer is the source
    console_admins = []          # "instance/name" principals that are console administrators
                                 # of every instance (docs/console.md)
    console_session_hours = 8.0  # a console sign-in lasts this long
    kms_instance_port = -1       # TCP port of the KMS-instance API (HTTPS, protobuf; the
                                 # Alibaba KMS-instance SDKs): -1 off, 0 any free port
    kms_instance_tls_dir = "kms-instance-tls"  # its CA (ca.pem), certificate and key,
                                 # made at first start if missing
    ops_networks = ["127.0.0.1/32", "::1/128"]  # who sees /metrics and health details on
                                 # the API ports (others: status only, no /metrics)
    ops_host = "127.0.0.1"       # the operators' listener (/metrics, health; plain HTTP)
    ops_port = -1                # its port: -1 off, 0 any free port

Relative paths (``tls_cert``, ``tls_key``, ``state_dir``, ``seed``,
``kms_instance_tls_dir``) are relative to the
configuration file. The full reference is ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsmpool.config import PoolConfig, parse_config, read_toml
from hsmpool.errors import ConfigError


@dataclass(frozen=True, slots=True)
class KmsSettings:
    database: str
    audit_dir: str | None
    region: str = "us-east-1"
    max_plaintext: int = 4096
    import_token_ttl: float = 86400.0
    #: Seconds after its last word from the store that a node that lost it goes on serving
    #: what it has cached (0: fail every request at once); see docs/decisions.md.
    store_grace: float = 30.0
    secret_context_keys: frozenset[str] = frozenset()
    accounts: Mapping[str, str] = field(default_factory=dict)
    #: Ship each service process's audit segment into the store at its checkpoints
    #: (:mod:`kms.audit_ship`), so that one ``audit verify --all-nodes`` checks every node.
    audit_ship: bool = False
    server: ServerSettings = field(default_factory=lambda: ServerSettings())

    def __post_init__(self) -> None:
        if not self.region or not all(c.isalnum() or c == "-" for c in self.region):
            raise ConfigError(f"kms.region {self.region!r} is not a region name")
        for inst, acct in self.accounts.items():
            if not (len(acct) == 12 and acct.isdigit()):
                raise ConfigError(f"kms.accounts.{inst} must be 12 digits")
        if not 1 <= self.max_plaintext <= 65536:
            raise ConfigError("kms.max_plaintext must be 1..65536")
        if not 0 <= self.store_grace <= 3600:
            raise ConfigError("kms.store_grace must be 0..3600 seconds")


LOG_LEVELS: tuple[str, ...] = ("critical", "error", "warning", "info", "debug", "trace")
ACCESS_LOGS: tuple[str, ...] = ("off", "json", "text")
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The ``[server]`` section: how ``hsmpool serve`` runs (its command-line options
    override each of these). Paths are absolute once parsed from a file."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: Worker processes; 0 means one per core.
    workers: int = 0
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "warning"
    access_log: str = "off"
    #: The folder under which each running server keeps its workers' metrics files.
    state_dir: str = "run"
    #: A seed file: keys and aliases created at start when absent (:mod:`kms.server.seed`).
    seed: str | None = None
    request_timeout: float = 10.0
    #: Per principal: requests per second (0: no limit) and the burst above that rate;
    #: past it, a throttling error the SDKs retry with backoff.
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    #: Per principal: operations that write state or generate keys in progress at once in
    #: one worker (they run on its thread pool: one principal cannot take all of it).
    max_blocking_per_principal: int = 8
    #: Per worker: requests in progress at once (read, being run or waiting for a token or a
    #: thread); more are refused at once with a throttling error the SDKs retry.
    max_requests_in_progress: int = 1024
    #: Request bodies larger than this (bytes) are refused with a 413 before they are read.
    max_body: int = 256 * 1024
    #: The reverse proxies (IP addresses or CIDR networks) whose ``X-Forwarded-For`` the
    #: server believes; by default none, and the TCP peer is the request's source address.
    trusted_proxies: tuple[str, ...] = ()
    #: Principals (``"instance/name"``) that are administrators of the operators' console:
    #: they see and act in every instance and eject or readmit tokens (docs/console.md).
    console_admins: tuple[str, ...] = ()
    #: How long a console sign-in lasts (hours).
    console_session_hours: float = 8.0
    #: The KMS-instance API's port (:mod:`kms.api.kms_instance`): -1 off, 0 any free port.
    kms_instance_port: int = -1
    #: Its TLS folder: ``ca.pem``, ``server.pem``, ``server.key`` (made at start if missing;
    #: replace the last two with a certificate of your own CA to use it).
    kms_instance_tls_dir: str = "kms-instance-tls"
    #: Source networks that see ``/metrics`` and the health endpoints' details (token and
    #: instance names) on the API ports; everyone else gets the status only and no
    #: ``/metrics``. A request through a proxy that is not a ``trusted_proxies`` entry is
    #: never one of them.
    ops_networks: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    #: The operators' listener: ``/metrics`` and detailed health to whoever reaches it
    #: (plain HTTP; bind it to a private interface). -1: off.
    ops_host: str = "127.0.0.1"
    ops_port: int = -1
    #: ``ops_networks`` parsed.
    ops_nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False)
    #: ``trusted_proxies`` parsed.
    proxy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = self.request_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.1 <= t <= 600:
            raise ConfigError("server.request_timeout must be 0.1..600 seconds")
        for name in ("rate_limit", "rate_burst"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"server.{name} must be a number >= 0")
        b = self.max_blocking_per_principal
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 1024:
            raise ConfigError("server.max_blocking_per_principal must be 1..1024")
        for name, lo, hi in (("max_requests_in_progress", 1, 1_000_000),
                             ("max_body", 1024, 64 * 1024 * 1024)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"server.{name} must be an integer {lo}..{hi}")
        if not isinstance(self.host, str) or not self.host.strip() or any(
                c.isspace() for c in self.host):
            raise ConfigError("server.host must be a host name or an IP address")
        for name, lo, hi in (("port", 0, 65535), ("workers", 0, MAX_WORKERS),
                             ("kms_instance_port", -1, 65535), ("ops_port", -1, 65535)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"server.{name} must be an integer {lo}..{hi}")
        for name in ("tls_cert", "tls_key", "seed"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"server.{name} must be a file name")
            if v == "":
                object.__setattr__(self, name, None)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("server.tls_cert and server.tls_key go together: give both "
                              "or neither")
        for name in ("state_dir", "kms_instance_tls_dir"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"server.{name} must be a folder name")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"server.log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.access_log not in ACCESS_LOGS:
            raise ConfigError(f"server.access_log must be one of {', '.join(ACCESS_LOGS)}")
        nets = _networks("trusted_proxies", self.trusted_proxies, strict=True)
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        admins = self.console_admins
        if not isinstance(admins, list | tuple) or not all(
                isinstance(a, str) and a.count("/") == 1 and all(a.split("/")) for a in admins):
            raise ConfigError('server.console_admins must be a list of "instance/name" '
                              "principals")
        object.__setattr__(self, "console_admins", tuple(admins))
        h = self.console_session_hours
        if isinstance(h, bool) or not isinstance(h, int | float) or not 0.05 <= h <= 168:
            raise ConfigError("server.console_session_hours must be 0.05..168")
        object.__setattr__(self, "proxy_networks", tuple(nets))
        ops_nets = _networks("ops_networks", self.ops_networks, strict=False)
        object.__setattr__(self, "ops_networks", tuple(self.ops_networks))
        object.__setattr__(self, "ops_nets", ops_nets)
        if not isinstance(self.ops_host, str) or not self.ops_host.strip():
            raise ConfigError("server.ops_host must be a host name or an IP address")

    @property
    def worker_count(self) -> int:
        """``workers``, with 0 resolved to the number of cores."""
        return self.workers or os.cpu_count() or 1


def _networks(name: str, entries: Any, *, strict: bool
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A ``[server]`` list of IP addresses and CIDR networks, parsed (``strict``: no host
    bits set)."""
    if not isinstance(entries, list | tuple):
        raise ConfigError(f"server.{name} must be a list of IP addresses or CIDR networks")
    nets = []
    for entry in entries:
        try:
            if not isinstance(entry, str):
                raise ValueError(entry)
            nets.append(ipaddress.ip_network(entry.strip(), strict=strict))
        except ValueError:
            raise ConfigError(f"server.{name}: {entry!r} is not an IP address or a CIDR "
                              "network" + (" without host bits" if strict else "")) from None
    return tuple(nets)


_SERVER_PATHS = ("tls_cert", "tls_key", "state_dir", "seed", "kms_instance_tls_dir")


def parse_server_settings(doc: Mapping[str, Any], base: Path | None = None) -> ServerSettings:
    """The ``[server]`` table; relative paths are made absolute against ``base`` (the
    configuration file's folder)."""
    raw = doc.get("server", {})
    if not isinstance(raw, dict):
        raise ConfigError("[server] must be a table")
    known = set(ServerSettings.__dataclass_fields__) - {"proxy_networks", "ops_nets"}
    bad = set(raw) - known
    if bad:
        raise ConfigError(f"unknown [server] key(s) {sorted(bad)}")
    kw = dict(raw)
    for key in _SERVER_PATHS:
        value = kw.get(key)
        if isinstance(value, str) and value:
            kw[key] = resolve_path(value, base or Path.cwd())
    for key, default in (("state_dir", "run"), ("kms_instance_tls_dir", "kms-instance-tls")):
        if key not in kw:
            kw[key] = resolve_path(default, base or Path.cwd())
    return ServerSettings(**kw)


def resolve_path(value: str, base: Path) -> str:
    """``value`` (``~`` expanded) as an absolute path, relative ones against ``base``."""
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else base / p)


def parse_kms_settings(doc: Mapping[str, Any], base: Path) -> KmsSettings:
    raw = doc.get("kms", {})
    if not isinstance(raw, dict):
        raise ConfigError("[kms] must be a table")
    known = {"database", "audit_dir", "audit_ship", "region", "max_plaintext",
             "import_token_ttl", "store_grace", "secret_context_keys", "accounts"}
    bad = set(raw) - known
    if bad:
        raise ConfigError(f"unknown [kms] key(s) {sorted(bad)}")

    def path(value: object, default: str) -> str:
        s = str(value if value is not None else default)
        if s == ":memory:" or s.startswith(("postgresql://", "postgres://")):
            return s
        p = Path(os.path.expanduser(s))
        return str(p if p.is_absolute() else base / p)

    audit = raw.get("audit_dir", "audit")
    server = parse_server_settings(doc, base)
    for key, kind in (("database", str), ("region", str), ("max_plaintext", int),
                      ("import_token_ttl", int | float), ("store_grace", int | float),
                      ("secret_context_keys", list),
                      ("accounts", dict)):
        if key in raw and (not isinstance(raw[key], kind) or isinstance(raw[key], bool)):
            raise ConfigError(f"kms.{key} has the wrong type ({type(raw[key]).__name__})")
    if not isinstance(audit, str | bool) or audit is True:
        raise ConfigError("kms.audit_dir must be a folder name, or false for no audit")
    ship = raw.get("audit_ship", False)
    if not isinstance(ship, bool):
        raise ConfigError("kms.audit_ship must be true or false")
    ttl = _seconds(raw, "import_token_ttl", 86400)
    if not ttl > 0:
        raise ConfigError("kms.import_token_ttl must be a positive number of seconds")
    return KmsSettings(
        server=server,
        database=path(raw.get("database"), "kms.db"),
        audit_dir=None if audit in (False, "") else path(audit, "audit"),
        region=str(raw.get("region", "us-east-1")),
        max_plaintext=int(raw.get("max_plaintext", 4096)),
        import_token_ttl=ttl,
        store_grace=_seconds(raw, "store_grace", 30),
        secret_context_keys=frozenset(str(k) for k in raw.get("secret_context_keys", [])),
        accounts={str(k): str(v) for k, v in raw.get("accounts", {}).items()},
        audit_ship=ship,
    )


def _seconds(raw: Mapping[str, Any], key: str, default: float) -> float:
    """A finite number of seconds of ``[kms]`` (TOML integers may be of any size: one past
    what a float holds is an error here, not an OverflowError)."""
    try:
        value = float(raw.get(key, default))
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ConfigError(f"kms.{key} must be a finite number of seconds")
    return value


def load(path: str | os.PathLike[str]) -> tuple[PoolConfig, KmsSettings]:
    """The pool's configuration and the service's settings, from one TOML file."""
    doc, base = read_toml(path)
    return parse_config(doc, base, str(path)), parse_kms_settings(doc, base)
