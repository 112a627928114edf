"""``hsmpool aap``: application access points and their client keys (:mod:`kms.access_points`).

    hsmpool aap create --instance I --name N --role CryptoServiceKeyUser|SecretUser ...
                       --resource 'key/*' ... --network 10.0.0.0/8,127.0.0.1/32
                       [--valid-days 365] [--description D] --out DIR
    hsmpool aap list [--instance I] [--json]
    hsmpool aap revoke CLIENT_KEY_ID | --instance I --name N      (every key of N)

``create`` makes the access point (or replaces its roles, resources and networks) and issues
one new client key: ``DIR/clientKey_<id>.json`` and ``DIR/clientKey_<id>_Password.txt``
(0600), the files the KMS-instance SDKs read. The private key exists only in them. Each
command's changes are in the audit trail, by principal ``os:<user>``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from kms.private_files import private_dir


def _config(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("HSMPOOL_CONFIG") or "var/hsmpool.toml")


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for raw in values or () for v in raw.split(",") if v.strip()]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def cmd_create(args: argparse.Namespace) -> int:
    from kms.access_points import create_access_point, issue_client_key
    from kms.cli import cli_principal, iso_time, open_service

    out = Path(args.out)
    private_dir(out)
    with open_service(_config(args)) as kms:
        point = create_access_point(kms, args.instance, args.name, _split(args.role),
                                    _split(args.resource), _split(args.network),
                                    description=args.description or "", actor=cli_principal())
        key = issue_client_key(kms, args.instance, point.name, valid_days=args.valid_days,
                               actor=cli_principal())
    key_file = out / f"clientKey_{key.client_key_id}.json"
    password_file = out / f"clientKey_{key.client_key_id}_Password.txt"
    _write_private(key_file, key.key_file())
    _write_private(password_file, key.password)
    doc = {"AccessPoint": point.name, "Instance": point.instance,
           "ClientKeyId": key.client_key_id, "KeyFile": str(key_file),
           "PasswordFile": str(password_file), "NotAfter": iso_time(key.not_after)}
    if args.json:
        print(json.dumps(doc))
    else:
        for k, v in doc.items():
            print(f"{k}={v}")
    return 0


def _key_state(revoked: float | None, not_before: float, not_after: float) -> str:
    now = time.time()
    if revoked is not None:
        return "revoked"
    if now > not_after:
        return "expired"
    return "not-yet-valid" if now < not_before else "valid"


def cmd_list(args: argparse.Namespace) -> int:
    from kms.access_points import list_access_points
    from kms.cli import iso_time, open_records, print_table

    with open_records(_config(args), audit=False) as (store, _):
        points = list_access_points(store, args.instance)
    docs: list[dict[str, Any]] = [
        {"Instance": p.instance, "Name": p.name, "Roles": list(p.roles),
         "Resources": list(p.resources), "Networks": list(p.networks),
         "Description": p.description, "CreateDate": iso_time(p.created),
         "ClientKeys": [{"ClientKeyId": k.client_key_id, "NotAfter": iso_time(k.not_after),
                         "State": _key_state(k.revoked, k.not_before, k.not_after)}
                        for k in keys]}
        for p, keys in points]
    if args.json:
        print(json.dumps({"AccessPoints": docs}, indent=2))
        return 0
    print_table(("Instance", "AccessPoint", "Roles", "Networks", "ClientKeyId", "NotAfter",
                 "State"),
                [(d["Instance"], d["Name"], ",".join(d["Roles"]), ",".join(d["Networks"]),
                  k["ClientKeyId"], k["NotAfter"], k["State"])
                 for d in docs for k in d["ClientKeys"] or [{"ClientKeyId": None,
                                                             "NotAfter": None,
                                                             "State": None}]])
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from kms.access_points import describe, revoke_client_key
    from kms.cli import cli_principal, open_service

    with open_service(_config(args)) as kms:
        if args.client_key_id:
            ids = [args.client_key_id]
        else:
            if not args.name:
                raise SystemExit("hsmpool: give CLIENT_KEY_ID, or --name (every key of it)")
            describe(kms.store, args.instance, args.name)
            ids = [k.client_key_id for k in kms.store.list_client_keys(args.instance,
                                                                        args.name)]
        for client_key_id in ids:
            revoke_client_key(kms, client_key_id, actor=cli_principal())
            print(f"revoked {client_key_id}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from kms.access_points import MAX_VALID_DAYS, ROLES
    from kms.cli.server import _int_in

    aap = sub.add_parser("aap", help="application access points (KMS-instance API clients)")
    asub = aap.add_subparsers(dest="aap_command", required=True, metavar="COMMAND")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output")

    create = asub.add_parser("create", parents=[as_json],
                             help="create or update an access point and issue a client key")
    create.add_argument("--instance", default="default", help="(default %(default)s)")
    create.add_argument("--name", required=True, help="the access point's name")
    create.add_argument("--role", action="append", required=True,
                        help=f"repeatable or comma-separated: {', '.join(sorted(ROLES))}")
    create.add_argument("--resource", action="append", required=True,
                        help="repeatable: key/*, key/<id>, alias/<name>, secret/<name>, *")
    create.add_argument("--network", action="append", required=True,
                        help="source addresses admitted, comma-separated CIDR blocks")
    create.add_argument("--valid-days", type=_int_in(1, MAX_VALID_DAYS), default=365,
                        help="the client key's validity (default %(default)s)")
    create.add_argument("--description", help="free text")
    create.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the client key file and its password file")
    create.set_defaults(func=cmd_create)

    listing = asub.add_parser("list", parents=[as_json],
                              help="access points and their client keys")
    listing.add_argument("--instance", help="only this instance's (default: every instance)")
    listing.set_defaults(func=cmd_list)

    revoke = asub.add_parser("revoke", help="refuse a client key (or every key of an access "
                                            "point) from now on, for good")
    revoke.add_argument("client_key_id", nargs="?", metavar="CLIENT_KEY_ID")
    revoke.add_argument("--instance", default="default", help="(default %(default)s)")
    revoke.add_argument("--name", help="revoke every client key of this access point")
    revoke.set_defaults(func=cmd_revoke)
