"""``hsmpool secret`` commands: the secrets manager from the command line.

    hsmpool secret create NAME (--value-file F | --value V | --binary-file F)
                   [--description D] [--kms-key KEY] [--tag K=V ...]
    hsmpool secret get SECRET [--version-id ID | --stage STAGE] [--field KEY] [--out F]
    hsmpool secret put SECRET (--value-file F | --value V | --binary-file F) [--stage S ...]
    hsmpool secret list | describe SECRET
    hsmpool secret rotate SECRET [--rotator NAME] [--every-days N | --schedule EXPR]
                   [--later]
    hsmpool secret delete SECRET [--days 7..30 | --force] | restore SECRET

Each calls the :class:`~kms.service.KmsClient` method of the same name (``SECRET``: a name
or an ARN). ``get`` prints the value alone (a JSON secret's ``--field``, binary values in
base64 unless ``--out``); ``--value`` is visible in the process list, ``--value-file -``
reads stdin.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable
from typing import Any

from kms.cli import context_arg, iso_time, open_client, print_fields, print_table

Leaf = Callable[[Any, str, str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]
MAX_VALUE = 65536


def _value(args: argparse.Namespace) -> dict[str, Any]:
    if args.value is not None:
        return {"secret_string": args.value}
    path = args.value_file if args.value_file is not None else args.binary_file
    if path == "-":
        data = sys.stdin.buffer.read(MAX_VALUE + 1)
    else:
        with open(path, "rb") as fh:
            data = fh.read(MAX_VALUE + 1)
    if args.binary_file is not None:
        return {"secret_binary": data}
    try:
        return {"secret_string": data.decode()}
    except UnicodeDecodeError:
        print("hsmpool: error: --value-file is not UTF-8 text (use --binary-file)",
              file=sys.stderr)
        raise SystemExit(2) from None


def _describe(rec: Any, versions: Any) -> dict[str, Any]:
    return {"ARN": rec.arn, "Name": rec.name, "Description": rec.description,
            "KmsKeyId": rec.kms_key_id or "(the default secrets key)",
            "CreatedDate": iso_time(rec.created), "LastChangedDate": iso_time(rec.last_changed),
            "DeletedDate": iso_time(rec.deletion_date),
            "RotationEnabled": rec.rotation_enabled, "Rotator": rec.rotator,
            "RotationRules": json.loads(rec.rotation_rules) if rec.rotation_rules else None,
            "LastRotatedDate": iso_time(rec.last_rotated),
            "NextRotationDate": iso_time(rec.next_rotation if rec.rotation_enabled else None),
            "LastRotationError": rec.rotation_error, "Tags": dict(rec.tags),
            "Versions": {v.version_id: list(v.stages) for v in versions}}


def _emit(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_fields(doc)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec, v = client.create_secret(args.name, description=args.description,
                                      kms_key_id=args.kms_key, tags=args.tag or None,
                                      **_value(args))
        return _emit(args, {"ARN": rec.arn, "Name": rec.name,
                            "VersionId": v.version_id if v else None})


def cmd_get(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        sv = client.get_secret_value(args.secret, args.version_id, args.stage)
    data = sv.value
    if args.field is not None:
        try:
            doc = json.loads(data)
            data = str(doc[args.field]).encode() if isinstance(doc, dict) else b""
        except (ValueError, KeyError):
            print(f"hsmpool: error: the secret has no JSON field {args.field!r}",
                  file=sys.stderr)
            return 1
    if args.out is not None:
        with open(args.out, "xb") as fh:
            fh.write(data)
        return 0
    if args.json:
        print(json.dumps({"ARN": sv.secret.arn, "VersionId": sv.version.version_id,
                          "VersionStages": list(sv.version.stages),
                          "SecretBinary" if sv.binary else "SecretString":
                              base64.b64encode(data).decode() if sv.binary
                              else data.decode()}))
    elif sv.binary and args.field is None:
        print(base64.b64encode(data).decode())
    else:
        sys.stdout.write(data.decode())
        sys.stdout.write("\n" if sys.stdout.isatty() else "")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec, v = client.put_secret_value(args.secret, version_stages=args.stage,
                                         **_value(args))
        return _emit(args, {"ARN": rec.arn, "VersionId": v.version_id,
                            "VersionStages": list(v.stages)})


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[Any] = []
    with open_client(args) as client:
        token = None
        while True:
            page = client.list_secrets(next_token=token,
                                       include_planned_deletion=args.include_deleted)
            rows += page.items
            token = page.next_token
            if token is None:
                break
    if args.json:
        print(json.dumps([_describe(r, vs) for r, vs in rows], indent=2))
    else:
        print_table(["Name", "ARN", "Rotation", "Deleted"],
                    [[r.name, r.arn, r.rotator or "-" if r.rotation_enabled else "off",
                      iso_time(r.deletion_date) or "-"] for r, _ in rows])
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        return _emit(args, _describe(*client.describe_secret(args.secret)))


def cmd_rotate(args: argparse.Namespace) -> int:
    rules: dict[str, Any] | None = None
    if args.every_days is not None:
        rules = {"AutomaticallyAfterDays": args.every_days}
    elif args.schedule is not None:
        rules = {"ScheduleExpression": args.schedule}
    with open_client(args) as client:
        rec, version = client.rotate_secret(
            args.secret, rotation_lambda_arn=args.rotator, rotation_rules=rules,
            rotate_immediately=not args.later)
        return _emit(args, {"ARN": rec.arn, "VersionId": version,
                            "NextRotationDate": iso_time(rec.next_rotation)})


def cmd_delete(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec = client.delete_secret(args.secret, recovery_window_in_days=args.days,
                                   force_delete_without_recovery=args.force)
        return _emit(args, {"ARN": rec.arn, "DeletionDate": iso_time(rec.deletion_date)})


def cmd_restore(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec = client.restore_secret(args.secret)
        return _emit(args, {"ARN": rec.arn, "Name": rec.name})


def _value_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--value-file", metavar="F", help="the value, UTF-8 text (- for stdin)")
    g.add_argument("--value", metavar="V", help="the value (visible in the process list)")
    g.add_argument("--binary-file", metavar="F", help="a binary value (- for stdin)")


def add_secret_commands(sub: Any, leaf: Leaf) -> None:
    """Register ``hsmpool secret`` (``leaf`` adds a command with ``--instance``/``--json``)."""
    secret = sub.add_parser("secret", help="create, read, rotate and delete secrets")
    ss = secret.add_subparsers(dest="secret_command", required=True, metavar="COMMAND")

    def named(name: str, help_: str, func: Callable[[argparse.Namespace], int]
              ) -> argparse.ArgumentParser:
        p = leaf(ss, name, help_, func)
        p.add_argument("secret", metavar="SECRET", help="the secret's name or ARN")
        return p

    p = leaf(ss, "create", "create a secret", cmd_create)
    p.add_argument("name", metavar="NAME")
    _value_options(p)
    p.add_argument("--description", default="", help="free text (default: none)")
    p.add_argument("--kms-key", metavar="KEY",
                   help="the KMS key of its envelopes (default: the instance's default "
                        "secrets key)")
    p.add_argument("--tag", action="append", type=context_arg, metavar="K=V",
                   help="a tag; repeatable (hsmpool:rotator=generic names its rotator)")
    p = named("get", "print a secret's value", cmd_get)
    p.add_argument("--version-id", metavar="ID", help="this version (default: AWSCURRENT)")
    p.add_argument("--stage", metavar="STAGE", help="the version with this label")
    p.add_argument("--field", metavar="KEY", help="one field of a JSON secret")
    p.add_argument("--out", metavar="F", help="write the raw value to F (a new file)")
    p = named("put", "store a new value (it becomes AWSCURRENT)", cmd_put)
    _value_options(p)
    p.add_argument("--stage", action="append", metavar="S",
                   help="its labels; repeatable (default: AWSCURRENT)")
    p = leaf(ss, "list", "list the instance's secrets", cmd_list)
    p.add_argument("--include-deleted", action="store_true",
                   help="also secrets scheduled for deletion")
    named("describe", "show a secret (never its value)", cmd_describe)
    p = named("rotate", "rotate a secret now and/or set its schedule", cmd_rotate)
    p.add_argument("--rotator", metavar="NAME",
                   help="the built-in rotator (e.g. generic; default: the secret's)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--every-days", type=int, metavar="N", help="rotate every N days")
    when.add_argument("--schedule", metavar="EXPR", help="rate(N hours) or rate(N days)")
    p.add_argument("--later", action="store_true",
                   help="only set the schedule (default: also rotate now)")
    p = named("delete", "delete a secret after a recovery window", cmd_delete)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--days", type=int, metavar="N", help="recovery window, 7..30 (30)")
    how.add_argument("--force", action="store_true",
                     help="delete at once, without recovery")
    named("restore", "cancel a scheduled deletion", cmd_restore)
