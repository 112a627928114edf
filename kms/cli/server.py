"""CLI commands of the server: ``hsmpool serve`` and ``hsmpool credentials``.

    hsmpool serve [--host H] [--port P] [--kms-instance-port P] [--ops-port P] [--workers N]
                  [--tls-cert C --tls-key K]
                  [--log-level critical|error|warning|info|debug|trace]
                  [--access-log json|text|off] [--seed FILE] [--dev]
    hsmpool credentials create [--instance I] [--name N] [--policy JSON|@FILE ...]
    hsmpool credentials list [--instance I] [--name N]
    hsmpool credentials disable|enable|delete ACCESS_KEY_ID
    hsmpool credentials rotate ACCESS_KEY_ID [--disable-old]

``serve`` options override the configuration's ``[server]`` values (``kms/config.py``); each
``--help`` line says the default. ``serve --dev`` needs no configuration: an in-memory store,
ephemeral SoftHSM2 tokens, one worker, and an admin credential printed at start
(:mod:`kms.server.devenv`).

Every credentials command takes ``--json``. Secrets are printed by ``create`` and ``rotate``
only; ``list``, ``disable``, ``enable`` and ``delete`` need no HSM (metadata only). Each
change is in the audit trail, by principal ``os:<user>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kms.config import ACCESS_LOGS, LOG_LEVELS, MAX_WORKERS

if TYPE_CHECKING:
    from kms.credentials import AccessKey, AccessKeyInfo

ADMIN_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["kms:*", "secretsmanager:*"], "Resource": "*"}],
}


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in lo..hi."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}, not {value}")
        return value

    return parse


def _config(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("HSMPOOL_CONFIG") or "var/hsmpool.toml")


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[server]`` values given on the command line (paths made absolute)."""
    out: dict[str, Any] = {}
    for name in ("host", "port", "workers", "log_level", "access_log", "kms_instance_port",
                 "ops_port"):
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    for name in ("tls_cert", "tls_key", "seed"):
        value = getattr(args, name)
        if value is not None:
            out[name] = os.path.abspath(os.path.expanduser(value))
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    from kms.server.run import serve

    overrides = _serve_overrides(args)
    if args.dev:
        from kms.server.devenv import serve_dev

        if args.config:
            print("hsmpool: serve --dev makes its own configuration: drop --config",
                  file=sys.stderr)
            return 2
        return serve_dev(overrides)
    config = _config(args)
    if not Path(config).exists():
        print(f"hsmpool: configuration file {config!r} does not exist", file=sys.stderr)
        return 2
    return serve(config, overrides)


def _policies(values: list[str] | None) -> list[Any]:
    if not values:
        return [ADMIN_POLICY]
    out = []
    for v in values:
        text = Path(v[1:]).read_text() if v.startswith("@") else v
        try:
            out.append(json.loads(text))
        except ValueError:
            raise SystemExit(f"hsmpool: --policy is not valid JSON: {v[:40]}") from None
    return out


def _key_json(key: AccessKey, old: AccessKeyInfo | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"AccessKeyId": key.access_key_id,
                           "SecretAccessKey": key.secret_access_key,
                           "Instance": key.instance, "Principal": key.principal_name}
    if old is not None:
        doc.update(OldAccessKeyId=old.access_key_id, OldAccessKeyEnabled=old.enabled)
    return doc


def _print_new_key(args: argparse.Namespace, key: AccessKey,
                   old: AccessKeyInfo | None = None) -> None:
    if args.json:
        print(json.dumps(_key_json(key, old)))
        return
    print(f"AccessKeyId={key.access_key_id}")
    print(f"SecretAccessKey={key.secret_access_key}")
    if old is not None:
        state = "enabled" if old.enabled else "disabled"
        print(f"# the old access key {old.access_key_id} is {state}", file=sys.stderr)


def _info_json(info: AccessKeyInfo) -> dict[str, Any]:
    from kms.cli import iso_time

    return {"AccessKeyId": info.access_key_id, "Instance": info.instance,
            "Principal": info.principal_name, "PrincipalId": info.principal_id,
            "CreateDate": iso_time(info.created), "Enabled": info.enabled}


def cmd_credentials_create(args: argparse.Namespace) -> int:
    from kms.cli import cli_principal, open_service
    from kms.credentials import create_access_key

    policies = _policies(args.policy)
    with open_service(_config(args)) as kms:
        key = create_access_key(kms, args.instance, args.name, policies,
                                actor=cli_principal())
    _print_new_key(args, key)
    return 0


def cmd_credentials_rotate(args: argparse.Namespace) -> int:
    from kms.cli import cli_principal, open_service
    from kms.credentials import describe_access_key, rotate_access_key

    with open_service(_config(args)) as kms:
        key = rotate_access_key(kms, args.access_key_id, disable_old=args.disable_old,
                                actor=cli_principal())
        old = describe_access_key(kms.store, args.access_key_id)
    _print_new_key(args, key, old)
    return 0


def cmd_credentials_list(args: argparse.Namespace) -> int:
    from kms.cli import open_records, print_table
    from kms.credentials import list_access_keys

    with open_records(_config(args), audit=False) as (store, _):
        docs = [_info_json(k) for k in list_access_keys(store, instance=args.instance,
                                                         principal=args.name)]
    if args.json:
        print(json.dumps({"AccessKeys": docs}, indent=2))
    else:
        print_table(("AccessKeyId", "Instance", "Principal", "CreateDate", "State"),
                    [(d["AccessKeyId"], d["Instance"], d["Principal"], d["CreateDate"],
                      "enabled" if d["Enabled"] else "disabled") for d in docs])
    return 0


def _credentials_change(operation: str) -> Callable[[argparse.Namespace], int]:
    """``credentials enable|disable|delete ACCESS_KEY_ID``: metadata only, no HSM."""

    def run(args: argparse.Namespace) -> int:
        from kms import credentials
        from kms.cli import cli_principal, open_records, print_fields

        change = {"disable": credentials.disable_access_key,
                  "enable": credentials.enable_access_key,
                  "delete": credentials.delete_access_key}[operation]
        with open_records(_config(args)) as (store, audit):
            info = change(store, args.access_key_id, audit=audit, actor=cli_principal())
        doc = _info_json(info)
        if operation == "delete":
            doc["Deleted"] = True
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_fields(doc)
        return 0

    return run


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve", help="run the HTTP server (AWS KMS wire protocol)",
        description="Run the HTTP server. Each option overrides the configuration's [server] "
                    "value; the default is that value, else the one shown.")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_int_in(0, 65535),
                       help="TCP port, 0 for any free one (default 8080)")
    serve.add_argument("--kms-instance-port", type=_int_in(-1, 65535),
                       help="HTTPS port of the KMS-instance API (Alibaba's KMS-instance "
                            "SDKs), 0 for any free one, -1 off (default -1)")
    serve.add_argument("--ops-port", type=_int_in(-1, 65535),
                       help="port of the operators' listener (/metrics, detailed health; "
                            "plain HTTP on [server] ops_host), 0 any free one, -1 off "
                            "(default -1)")
    serve.add_argument("--workers", type=_int_in(1, MAX_WORKERS),
                       help="worker processes (default: one per core)")
    serve.add_argument("--tls-cert", metavar="FILE",
                       help="PEM certificate (chain): serve HTTPS (default: none, HTTP)")
    serve.add_argument("--tls-key", metavar="FILE",
                       help="unencrypted PEM private key of --tls-cert (default: none)")
    serve.add_argument("--log-level", choices=LOG_LEVELS,
                       help="server log level (default warning)")
    serve.add_argument("--access-log", choices=ACCESS_LOGS,
                       help="one line per request on stderr, as JSON or text (default off)")
    serve.add_argument("--seed", metavar="FILE",
                       help="keys and aliases to create at start if absent (default: none)")
    serve.add_argument("--dev", action="store_true",
                       help="a throw-away server with no configuration: in-memory store, "
                            "ephemeral SoftHSM2 tokens, one worker, an admin credential "
                            "printed at start (default: off)")
    serve.set_defaults(func=cmd_serve)

    creds = sub.add_parser("credentials", help="access keys for the HTTP API")
    csub = creds.add_subparsers(dest="credentials_command", required=True,
                                metavar="COMMAND")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output")
    create = csub.add_parser("create", parents=[as_json],
                             help="create an access key pair for a principal (the secret is "
                                  "shown only now)")
    create.add_argument("--instance", default="default",
                        help="the principal's instance (default %(default)s)")
    create.add_argument("--name", default="admin",
                        help="principal name, created if new (default %(default)s)")
    create.add_argument("--policy", action="append",
                        help="policy JSON, or @FILE; repeatable; replaces the principal's "
                             "policies (default: kms:* and secretsmanager:* on *)")
    create.set_defaults(func=cmd_credentials_create)

    listing = csub.add_parser("list", parents=[as_json],
                              help="list access keys (never their secrets)")
    listing.add_argument("--instance", help="only this instance's (default: every instance)")
    listing.add_argument("--name", help="only this principal's (default: every principal)")
    listing.set_defaults(func=cmd_credentials_list)

    for name, help_ in (("disable", "refuse an access key from now on (reversible)"),
                        ("enable", "accept a disabled access key again"),
                        ("delete", "delete an access key for good")):
        p = csub.add_parser(name, parents=[as_json], help=help_, description=help_)
        p.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
        p.set_defaults(func=_credentials_change(name))

    rotate = csub.add_parser("rotate", parents=[as_json],
                             help="a new access key for the same principal (the secret is "
                                  "shown only now)")
    rotate.add_argument("access_key_id", metavar="ACCESS_KEY_ID", help="the key to replace")
    rotate.add_argument("--disable-old", action="store_true",
                        help="disable ACCESS_KEY_ID once the new key is stored (default: "
                             "keep it enabled until you disable or delete it)")
    rotate.set_defaults(func=cmd_credentials_rotate)
