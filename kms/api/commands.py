"""CLI commands of the server: ``hsmpool serve`` and ``hsmpool credentials create``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's names

ADMIN_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}],
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


def cmd_serve(args: argparse.Namespace) -> int:
    from kms.api.server import serve

    config = _config(args)
    if not Path(config).exists():
        print(f"hsmpool: configuration file {config!r} does not exist", file=sys.stderr)
        return 2
    scheme = "https" if args.tls_cert else "http"
    print(f"hsmpool: serving AWS KMS on {scheme}://{args.host}:{args.port} "
          f"({args.workers or os.cpu_count()} workers)", file=sys.stderr, flush=True)
    serve(config, args.host, args.port, args.workers, args.tls_cert, args.tls_key,
          args.log_level)
    return 0


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


def cmd_credentials_create(args: argparse.Namespace) -> int:
    from kms.credentials import create_access_key
    from kms.service import Kms

    with Kms.open(_config(args)) as kms:
        key = create_access_key(kms, args.instance, args.name, _policies(args.policy))
    if args.json:
        print(json.dumps({"AccessKeyId": key.access_key_id,
                          "SecretAccessKey": key.secret_access_key,
                          "Instance": key.instance, "Principal": key.principal_name}))
    else:
        print(f"AccessKeyId={key.access_key_id}")
        print(f"SecretAccessKey={key.secret_access_key}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the HTTP server (AWS KMS wire protocol)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=_int_in(1, 65535), default=8080,
                       help="TCP port (default %(default)s)")
    serve.add_argument("--workers", type=_int_in(1, 256), default=None,
                       help="worker processes (default: one per core)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (default: HTTP)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--log-level", default="warning", choices=LOG_LEVELS,
                       help="server log level (default %(default)s)")
    serve.set_defaults(func=cmd_serve)

    creds = sub.add_parser("credentials", help="access keys for the HTTP API")
    csub = creds.add_subparsers(dest="credentials_command", required=True)
    create = csub.add_parser("create", help="create an access key pair for a principal")
    create.add_argument("--instance", default="default")
    create.add_argument("--name", default="admin", help="principal name (created if new)")
    create.add_argument("--policy", action="append",
                        help="policy JSON, or @FILE; repeatable (default: kms:* on *)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_credentials_create)
