"""``hsmpool secret`` commands: the secrets manager from the command line.

    hsmpool secret create NAME (--value-file F | --value V | --binary-file F)
                   [--description D] [--kms-key KEY] [--tag K=V ...]
    hsmpool secret get SECRET [--version-id ID | --stage STAGE] [--field KEY] [--out F]
    hsmpool secret put SECRET (--value-file F | --value V | --binary-file F) [--stage S ...]
    hsmpool secret list | describe SECRET
    hsmpool secret rotate SECRET [--rotator NAME] [--every-days N | --schedule EXPR]
                   [--later]
    hsmpool secret delete SECRET [--days 7..30 | --force] | restore SECRET
    hsmpool secret exec [--endpoint URL] --env NAME=REF ... -- COMMAND [ARG ...]
    hsmpool secret agent --to DIR [--interval S] [--once] [--endpoint URL] FILE=REF ...

Each calls the :class:`~kms.service.KmsClient` method of the same name (``SECRET``: a name
or an ARN). ``get`` prints the value alone (a JSON secret's ``--field``, binary values in
base64 unless ``--out``); ``--value`` is visible in the process list, ``--value-file -``
reads stdin.

``exec`` and ``agent`` deliver secrets without code change (:mod:`kms.secrets.delivery`):
``exec`` runs COMMAND with the secrets in its environment (``REF`` is ``NAME[:FIELD]``);
``agent`` writes them to files in DIR (0600, atomic rename) and rewrites each file when its
secret's current version changes (a rotation), until stopped. Both read through the
server's Secrets Manager API with boto3 when ``--endpoint`` (or
``AWS_ENDPOINT_URL_SECRETS_MANAGER``) is set, with the credentials of the environment;
else through the embedded service of ``--config``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kms.cli import context_arg, emit, iso_time, open_client, print_table

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



def cmd_create(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec, v = client.create_secret(args.name, description=args.description,
                                      kms_key_id=args.kms_key, tags=args.tag or None,
                                      **_value(args))
        return emit(args, {"ARN": rec.arn, "Name": rec.name,
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
        return emit(args, {"ARN": rec.arn, "VersionId": v.version_id,
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
        return emit(args, _describe(*client.describe_secret(args.secret)))


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
        return emit(args, {"ARN": rec.arn, "VersionId": version,
                            "NextRotationDate": iso_time(rec.next_rotation)})


def cmd_delete(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec = client.delete_secret(args.secret, recovery_window_in_days=args.days,
                                   force_delete_without_recovery=args.force)
        return emit(args, {"ARN": rec.arn, "DeletionDate": iso_time(rec.deletion_date)})


def cmd_restore(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec = client.restore_secret(args.secret)
        return emit(args, {"ARN": rec.arn, "Name": rec.name})


# --- delivery --------------------------------------------------------------------------


@contextlib.contextmanager
def _source(args: argparse.Namespace) -> Iterator[Any]:
    from kms.secrets.delivery import HttpSource, ServiceSource

    endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL_SECRETS_MANAGER")
    if endpoint:
        try:
            import boto3
        except ImportError:
            print("hsmpool: error: --endpoint needs boto3 (pip install boto3)", file=sys.stderr)
            raise SystemExit(2) from None
        yield HttpSource(boto3.client("secretsmanager", endpoint_url=endpoint))
        return
    with open_client(args) as client:
        yield ServiceSource(client)


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    from kms.secrets.delivery import parse_reference

    out: dict[str, Any] = {}
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            print(f"hsmpool: error: {what} {item!r} is not NAME=SECRET[:FIELD]",
                  file=sys.stderr)
            raise SystemExit(2)
        out[name] = parse_reference(ref)
    return out


def cmd_exec(args: argparse.Namespace) -> int:
    from kms.secrets.delivery import DeliveryError, resolve

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("hsmpool: error: give the command after --", file=sys.stderr)
        return 2
    refs = _pairs(args.env or [], "--env")
    try:
        with _source(args) as source:
            values = resolve(source, refs)
        env = dict(os.environ)
        for name, (_, value) in values.items():
            env[name] = value.decode()
    except (DeliveryError, UnicodeDecodeError) as exc:
        print(f"hsmpool: error: {exc}", file=sys.stderr)
        return 1
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"hsmpool: error: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


def cmd_agent(args: argparse.Namespace) -> int:
    from kms.secrets.delivery import DeliveryError, resolve, write_file

    refs = _pairs(args.files, "FILE")
    bad = [f for f in refs if "/" in f or f in (".", "..")]
    if bad:
        print(f"hsmpool: error: file names are plain names in --to: {bad}", file=sys.stderr)
        return 2
    to = Path(args.to)
    to.mkdir(mode=0o700, parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    written: dict[str, str] = {}
    with _source(args) as source:
        while True:
            try:
                for name, (version, value) in resolve(source, refs).items():
                    if written.get(name) != version:
                        write_file(to / name, value)
                        written[name] = version
                        print(f"hsmpool: wrote {to / name} (version {version})",
                              file=sys.stderr, flush=True)
            except DeliveryError as exc:
                print(f"hsmpool: error: {exc}", file=sys.stderr, flush=True)
                if args.once:
                    return 1
            except Exception as exc:  # noqa: BLE001 - the agent keeps going; says why
                kind = getattr(exc, "kind", type(exc).__name__)
                print(f"hsmpool: cannot read the secrets now ({kind}); retrying",
                      file=sys.stderr, flush=True)
                if args.once:
                    return 1
            if args.once or stop.wait(args.interval):
                return 0


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

    p = leaf(ss, "exec", "run a command with secrets in its environment", cmd_exec)
    p.add_argument("--env", action="append", metavar="NAME=SECRET[:FIELD]",
                   help="an environment variable from a secret (or a JSON field); repeatable")
    p.add_argument("--endpoint", metavar="URL",
                   help="the server's URL (default: AWS_ENDPOINT_URL_SECRETS_MANAGER, else "
                        "the embedded service of --config)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    p = leaf(ss, "agent", "keep secrets in files, rewritten after each rotation", cmd_agent)
    p.add_argument("--to", required=True, metavar="DIR", help="the folder (made 0700)")
    p.add_argument("--interval", type=float, default=30.0, metavar="S",
                   help="seconds between checks (default %(default)s)")
    p.add_argument("--once", action="store_true", help="write once and exit")
    p.add_argument("--endpoint", metavar="URL", help="as for exec")
    p.add_argument("files", nargs="+", metavar="FILE=SECRET[:FIELD]",
                   help="a file in DIR from a secret (or a JSON field)")
