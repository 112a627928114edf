"""What ``hsmpool serve`` checks before it serves: the configuration, the TLS files, the
pool (tokens, logins, domain keys), the store and the audit directory, and the listening
socket; and the startup summary it prints.

Every failure is a :class:`StartupError`: one line naming the problem (and the file), and
the exit status of the command:

* **2** for configuration and usage: the configuration file (TOML syntax, unknown or
  mistyped keys, an unknown instance or module), the TLS certificate or key, the seed file;
* **1** for the environment: a token or HSM that fails (no token of an instance could be
  opened, a module that does not load), the store or audit directory that cannot be opened,
  the address that cannot be bound (port in use), a worker that fails to start.

Nothing here prints a traceback; no secret (PIN, key) is ever part of a message.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import ssl
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import UnsupportedAlgorithm

import hsmpool
from hsmpool.config import PoolConfig, degraded_default, parse_config, read_toml
from kms.config import KmsSettings, ServerSettings, parse_kms_settings

if TYPE_CHECKING:
    from kms.service import Kms

EXIT_CONFIG: Final = 2
EXIT_FAILURE: Final = 1


class StartupError(Exception):
    """``hsmpool serve`` cannot start: ``message`` is the one line to print."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def load_settings(config: str, overrides: Mapping[str, Any] | None = None
                  ) -> tuple[PoolConfig, KmsSettings]:
    """The configuration file, validated, with the command line's ``[server]`` overrides
    (already absolute paths) applied over the file's values."""
    try:
        doc, base = read_toml(config)
        pool_cfg = parse_config(doc, base, config)
        settings = parse_kms_settings(doc, base)
        if overrides:
            settings = replace(settings, server=replace(settings.server, **overrides))
    except hsmpool.ConfigError as exc:
        raise StartupError(f"configuration error: {exc}", EXIT_CONFIG) from None
    except (TypeError, ValueError) as exc:  # a mistyped value in a dataclass
        raise StartupError(f"configuration error: {config}: {exc}", EXIT_CONFIG) from None
    except OSError as exc:
        raise StartupError(f"cannot read configuration {config!r}: {exc.strerror}",
                           EXIT_CONFIG) from None
    return degraded_default(pool_cfg), settings


def _no_password() -> str:
    raise ValueError("the key is encrypted (give an unencrypted PEM key)")


def check_tls(server: ServerSettings) -> ssl.SSLContext | None:
    """Load the certificate chain and key as the workers will (``None`` without TLS)."""
    if server.tls_cert is None or server.tls_key is None:
        return None
    for what, path in (("certificate", server.tls_cert), ("key", server.tls_key)):
        if not os.path.isfile(path):
            raise StartupError(f"TLS {what} file {path!r} does not exist", EXIT_CONFIG)
        if not os.access(path, os.R_OK):
            raise StartupError(f"TLS {what} file {path!r} is not readable", EXIT_CONFIG)
    _check_pem_files(server.tls_cert, server.tls_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key, password=_no_password)
    except ValueError as exc:
        raise StartupError(f"TLS key {server.tls_key!r}: {exc}", EXIT_CONFIG) from None
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc.strerror or exc)
        if "MISMATCH" in reason.upper():
            what = f"key {server.tls_key!r} does not match certificate {server.tls_cert!r}"
        else:
            what = (f"cannot load certificate {server.tls_cert!r} with key "
                    f"{server.tls_key!r} ({reason})")
        raise StartupError(f"TLS: {what}", EXIT_CONFIG) from None
    except OSError as exc:
        raise StartupError(f"TLS: cannot read {exc.filename or server.tls_cert!r}: "
                           f"{exc.strerror}", EXIT_CONFIG) from None
    return ctx


def check_instance_tls(server: ServerSettings) -> Path | None:
    """The KMS-instance API's TLS folder, its files made if missing and loadable (None when
    ``kms_instance_port`` is -1: the API is off)."""
    if server.kms_instance_port < 0:
        return None
    from kms.server import instance_tls

    try:
        folder = instance_tls.ensure(server.kms_instance_tls_dir, server.host)
        instance_tls.context(str(folder))
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise StartupError(f"KMS-instance API TLS folder {server.kms_instance_tls_dir!r}: "
                           f"{exc}", EXIT_CONFIG) from None
    return folder


def _check_pem_files(cert: str, key: str) -> None:
    """Say which file is wrong (OpenSSL's own error names neither)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        with open(cert, "rb") as fh:
            x509.load_pem_x509_certificates(fh.read())
    except ValueError:
        raise StartupError(f"TLS certificate file {cert!r} holds no PEM certificate",
                           EXIT_CONFIG) from None
    except OSError as exc:
        raise StartupError(f"TLS: cannot read {cert!r}: {exc.strerror}", EXIT_CONFIG) from None
    try:
        with open(key, "rb") as fh:
            serialization.load_pem_private_key(fh.read(), password=None)
    except TypeError:
        raise StartupError(f"TLS key file {key!r} is encrypted (give an unencrypted PEM key)",
                           EXIT_CONFIG) from None
    except (ValueError, UnsupportedAlgorithm):
        raise StartupError(f"TLS key file {key!r} holds no PEM private key",
                           EXIT_CONFIG) from None
    except OSError as exc:
        raise StartupError(f"TLS: cannot read {key!r}: {exc.strerror}", EXIT_CONFIG) from None


def open_service(pool_cfg: PoolConfig, settings: KmsSettings, *, segment: str,
                 discard_if_empty: bool = False) -> Kms:
    """The service over the store, the (degraded-start) pool and an audit segment. The
    store opens first: the instances' first domain-key set-up runs under its cluster-wide
    lock (:meth:`kms.store.MetadataStore.exclusive`)."""
    from hsmpool import Pool
    from kms.audit import AuditError
    from kms.audit_anchor import AnchorError, open_log
    from kms.service import Kms, domain_key_lock
    from kms.store import open_store, redacted

    try:
        store = open_store(settings.database)
    except (sqlite3.Error, OSError) as exc:
        raise StartupError(f"cannot open the store {redacted(settings.database)!r}: {exc}"
                           ) from None
    except Exception as exc:  # noqa: BLE001 - PostgreSQL: the driver's errors, one line
        raise StartupError(f"cannot open the store {redacted(settings.database)}: "
                           f"{type(exc).__name__}: {str(exc).strip()[:200]}") from None
    pool = None
    try:
        try:
            pool = Pool(pool_cfg, setup_lock=domain_key_lock(store))
        except hsmpool.ConfigError as exc:
            raise StartupError(f"configuration error: {exc}", EXIT_CONFIG) from None
        except hsmpool.HsmPoolError as exc:
            raise StartupError(f"HSM: {exc}") from None
        audit = None
        if settings.audit_dir is not None:
            try:
                audit = open_log(pool, store, settings.audit_dir, segment,
                                 discard_if_empty=discard_if_empty)
            except AnchorError as exc:
                raise StartupError(f"audit: {exc}") from None
            except (AuditError, sqlite3.Error, OSError) as exc:
                raise StartupError(f"cannot open the audit directory "
                                   f"{settings.audit_dir!r}: {exc}") from None
        return Kms(pool, store, settings, audit=audit, owns_pool=True)
    except BaseException:
        if pool is not None:
            pool.close()
        store.close()
        raise


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (inheritable: workers are handed it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}",
                           EXIT_CONFIG) from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        why = "the address is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def listen_url(sock: socket.socket, host: str, tls: bool) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def summary(kms: Kms, workers: int, url: str) -> list[str]:
    """The startup summary: per instance its tokens and their state, then the store,
    audit, workers and address (never a secret: a PostgreSQL URL's password is masked)."""
    from kms.store import redacted

    pool = kms.pool
    stats = pool.stats()
    lines = []
    for name, inst_cfg in pool.config.instances.items():
        parts = []
        healthy = 0
        for t in inst_cfg.tokens:
            if t in pool.missing:
                parts.append(f"{t} MISSING ({pool.missing[t]})")
                continue
            st = stats[t]
            keys = pool.instances[name].domain_key_state.get(t, {})
            note = "" if all(v in ("hardened", "present") for v in keys.values()) \
                else " (domain keys " + ", ".join(f"{d} {v}" for d, v in keys.items()) + ")"
            healthy += st.state == "healthy"
            parts.append(f"{t} {st.label} {st.state}{note}")
        lines.append(f"instance {name}: {healthy} of {len(inst_cfg.tokens)} tokens healthy: "
                     + "; ".join(parts))
    s = kms.settings
    lines.append(f"store {redacted(s.database)}, audit {s.audit_dir or 'off'}, access log "
                 f"{s.server.access_log}, {workers} worker{'s' if workers != 1 else ''}, "
                 f"listening on {url}")
    return lines
