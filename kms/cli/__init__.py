"""The ``hsmpool`` command: the pool's commands (:mod:`hsmpool.cli`) plus the service's.

    hsmpool [--config FILE] status [--self-test] [--json]

    hsmpool key create [--spec SYMMETRIC_DEFAULT] [--usage U] [--origin AWS_KMS]
                       [--description D]
    hsmpool key list | describe KEY | rotate KEY | enable KEY | disable KEY
    hsmpool key schedule-deletion KEY [--days 30] | cancel-deletion KEY
    hsmpool key enable-rotation|disable-rotation|rotation-status|tag|untag|tags|policy|
                sign|verify|public-key|generate-data-key|get-parameters-for-import|
                import-key-material ...                              (:mod:`kms.cli.keys`)
    hsmpool alias create|update NAME KEY | delete NAME | list [--key KEY]
    hsmpool encrypt --key KEY [--context K=V ...] [--chunk-size 1M] [--force] IN OUT
    hsmpool decrypt [--context K=V ...] [--force] IN OUT
    hsmpool serve ... | credentials ...                              (:mod:`kms.cli.server`)
    hsmpool audit verify|tail|show|export ...          (:mod:`kms.cli.audit`)
    hsmpool aap create|list|revoke ...                 (:mod:`kms.cli.aap`)

The key and alias commands and encrypt/decrypt take ``--instance`` (default ``default``) and
``--json``; KEY is a key id, key ARN, alias name or alias ARN; an alias NAME may omit the
``alias/`` prefix. ``encrypt``/``decrypt`` stream files of any size (format:
:mod:`kms.fileenc`); IN or OUT ``-`` is stdin or stdout. A progress bar goes to stderr when
stderr is a terminal or with ``--progress``, never with ``--quiet``. ``decrypt`` writes OUT
only once the whole file verified (to stdout: after spooling to an unlinked temporary file).
An existing OUT is refused (exit status 2, untouched) unless ``--force``.

A command-line run is the embedder of its instance (every permission); its audit records
name the OS user as the principal (``os:<user>``) and go to the segment the runs of this
host and user share (:func:`kms.audit.open_cli_log`).

Errors are one line on stderr: exit status 1 for a failed operation, 2 for bad usage or
configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NoReturn

from hsmpool import cli as pool_cli

if TYPE_CHECKING:
    from kms.audit import AuditLog
    from kms.fileenc import FileResult
    from kms.model import AliasRecord, KeyRecord
    from kms.service import Kms, KmsClient
    from kms.store import MetadataStore


def build_parser() -> argparse.ArgumentParser:
    from kms.cli import server as server_commands

    parser = pool_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    server_commands.add_commands(sub)
    from kms.cli import audit as audit_commands

    audit_commands.add_cli(sub)
    add_commands(sub)
    from kms.cli import pkcs11 as pkcs11_commands

    pkcs11_commands.add_commands(sub)
    from kms.cli import aap as aap_commands

    aap_commands.add_commands(sub)
    from kms.cli import cluster as cluster_commands

    cluster_commands.add_commands(sub)
    _one_line_errors(parser)
    return parser


# --- the service's commands ---------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit status 2), not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (try --help)\n")


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    parser.__class__ = _Parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _one_line_errors(child)


def cli_principal() -> str:
    """The principal the audit trail names for a command-line run: ``os:<user>``."""
    from kms.audit import local_user

    return "os:" + local_user()


def open_service(config: str) -> Kms:
    """The service of ``config`` for one command-line run: as :meth:`Kms.open`, but its
    audit records go to the segment the CLI runs of this host and user share
    (:func:`kms.audit.open_cli_log`; deleted at close if it got no records)."""
    from hsmpool import Pool
    from hsmpool.config import degraded_default
    from kms.audit import open_cli_log
    from kms.config import load
    from kms.service import Kms, domain_key_lock
    from kms.store import open_store

    pool_cfg, settings = load(config)
    store = open_store(settings.database)  # first: its lock covers domain-key set-up
    try:
        # a token that is down: the others serve
        pool = Pool(degraded_default(pool_cfg), setup_lock=domain_key_lock(store))
    except BaseException:
        store.close()
        raise
    audit: AuditLog | None = None
    try:
        if settings.audit_dir is not None:
            from kms.audit_anchor import head_key

            audit = open_cli_log(settings.audit_dir, head_key=head_key(pool, store))
        return Kms(pool, store, settings, audit=audit, owns_pool=True)
    except BaseException:
        if audit is not None:
            audit.close()
        store.close()
        pool.close()
        raise


@contextlib.contextmanager
def open_records(config: str, *, audit: bool = True
                 ) -> Iterator[tuple[MetadataStore, AuditLog | None]]:
    """The metadata store and (with ``audit``) a CLI audit log of ``config``, without the
    HSM pool (for commands that read or change only metadata: a leaked access key can be
    disabled while every token is down)."""
    from kms.audit import open_cli_log
    from kms.audit_anchor import checkpoint
    from kms.config import load
    from kms.store import open_store

    settings = load(config)[1]
    store = open_store(settings.database)
    try:
        log = None if settings.audit_dir is None or not audit else open_cli_log(
            settings.audit_dir)  # no HSM here: its head carries no MAC (kms/audit_anchor)
        if log is not None:
            checkpoint(log, store)
        try:
            yield store, log
        finally:
            if log is not None:
                log.close()
                checkpoint(log, store)
                if settings.audit_ship:
                    from kms.audit_ship import CLOSE_BUDGET, Shipper

                    Shipper(log, store).run(CLOSE_BUDGET)
    finally:
        store.close()


@contextlib.contextmanager
def open_client(args: argparse.Namespace) -> Iterator[KmsClient]:
    """A client of ``--instance`` on the service of ``--config``, closed at the end; its
    audit records name the OS user (:func:`cli_principal`)."""
    with open_service(pool_cli._config_path(args)) as service:
        yield service.client(args.instance, audit_name=cli_principal())


def iso_time(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_json(rec: KeyRecord, aliases: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "KeyId": rec.key_id, "Arn": rec.arn, "KeySpec": str(rec.spec),
        "KeyUsage": str(rec.usage), "Origin": str(rec.origin), "KeyState": str(rec.state),
        "Description": rec.description, "CreationDate": iso_time(rec.created),
        "DeletionDate": iso_time(rec.deletion_date),
        "KeyRotationEnabled": rec.rotation_enabled,
        "RotationPeriodInDays": rec.rotation_period_days,
        "NextRotationDate": iso_time(rec.next_rotation),
        "PrimaryVersion": rec.primary_version,
        "MinDecryptionVersion": rec.min_decrypt_version,
        "Tags": dict(rec.tags), "Aliases": list(aliases),
    }


def _alias_json(client: KmsClient, a: AliasRecord) -> dict[str, Any]:
    return {"AliasName": a.name, "AliasArn": client.kms.alias_arn(a.instance, a.name),
            "TargetKeyId": a.key_id, "CreationDate": iso_time(a.created),
            "LastUpdatedDate": iso_time(a.updated)}


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[("-" if c is None or c == "" else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for r in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_fields(obj: Mapping[str, Any]) -> None:
    width = max(len(k) for k in obj)
    for k, v in obj.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        print(f"{k.ljust(width)}  {'-' if v is None or v == '' else v}")


def _all_pages(fetch: Callable[[str | None], Any]) -> list[Any]:
    items: list[Any] = []
    marker = None
    while True:
        page = fetch(marker)
        items.extend(page.items)
        marker = page.next_marker
        if marker is None:
            return items


def _aliases_by_key(client: KmsClient, key_id: str | None = None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in _all_pages(lambda m: client.list_aliases(key_id, marker=m)):
        out.setdefault(a.key_id, []).append(a.name)
    return out


def emit(args: argparse.Namespace, doc: Mapping[str, Any]) -> int:
    """Print a record: JSON with ``--json``, else ``Field  value`` lines. Exit status 0."""
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_fields(doc)
    return 0


def show_key(args: argparse.Namespace, client: KmsClient, rec: KeyRecord) -> int:
    return emit(args, _key_json(rec, _aliases_by_key(client, rec.key_id).get(rec.key_id, [])))


def cmd_key_create(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec = client.create_key(args.spec, args.usage, args.description or "", args.origin)
        return show_key(args, client, rec)


def cmd_key_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        keys = _all_pages(lambda m: client.list_keys(marker=m))
        aliases = _aliases_by_key(client)
        docs = [_key_json(k, aliases.get(k.key_id, [])) for k in keys]
    if args.json:
        print(json.dumps({"Keys": docs}, indent=2))
    else:
        print_table(("KeyId", "KeySpec", "KeyUsage", "KeyState", "Aliases", "Description"),
               [(d["KeyId"], d["KeySpec"], d["KeyUsage"], d["KeyState"],
                 ",".join(d["Aliases"]), d["Description"]) for d in docs])
    return 0


def cmd_key_describe(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        return show_key(args, client, client.describe_key(args.key))


def cmd_key_rotate(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        v = client.rotate_key_on_demand(args.key)
        rec = client.describe_key(v.key_id)
    doc = {"KeyId": rec.key_id, "Arn": rec.arn, "KeyVersion": v.version_id,
           "VersionNumber": v.number, "CreationDate": iso_time(v.created)}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_fields(doc)
    return 0


def _key_change(method: str, **kw: Any) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with open_client(args) as client:
            extra = {k: getattr(args, v) for k, v in kw.items()}
            return show_key(args, client, getattr(client, method)(args.key, **extra))

    return run


def _alias_name(name: str) -> str:
    return name if name.startswith("alias/") else "alias/" + name


def _alias_set(create: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with open_client(args) as client:
            fn = client.create_alias if create else client.update_alias
            doc = _alias_json(client, fn(_alias_name(args.name), args.key))
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_fields(doc)
        return 0

    return run


def cmd_alias_delete(args: argparse.Namespace) -> int:
    name = _alias_name(args.name)
    with open_client(args) as client:
        client.delete_alias(name)
    if args.json:
        print(json.dumps({"AliasName": name, "Deleted": True}))
    else:
        print(f"deleted {name}")
    return 0


def cmd_alias_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        docs = [_alias_json(client, a)
                for a in _all_pages(lambda m: client.list_aliases(args.key, marker=m))]
    if args.json:
        print(json.dumps({"Aliases": docs}, indent=2))
    else:
        print_table(("AliasName", "TargetKeyId", "LastUpdatedDate"),
               [(d["AliasName"], d["TargetKeyId"], d["LastUpdatedDate"]) for d in docs])
    return 0


# --- file encryption --------------------------------------------------------------------


class _Bar:
    """A progress bar on stderr: percentage (when the input size is known) and MB/s."""

    def __init__(self, label: str, total: int | None, stream: IO[str]) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.start = self.last = time.monotonic()
        self.done = 0
        self.width = 0

    def __call__(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last >= 0.1:
            self.last = now
            self.draw(now)

    def draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9) / 1e6
        mib = self.done / (1 << 20)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = (f"{self.label} {frac * 100:5.1f}% [{bar:30}] {mib:,.1f}/"
                    f"{self.total / (1 << 20):,.1f} MiB {rate:,.0f} MB/s")
        else:
            text = f"{self.label} {mib:,.1f} MiB {rate:,.0f} MB/s"
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def finish(self) -> None:
        self.draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def context_arg(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text.split('=')[0]!r}")
    return k, v


def _size_arg(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20}
    t = text.strip().upper()
    num = t.rstrip("KMIB")
    try:
        return int(num) * units[t[len(num):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536, 64K, 1M)") \
            from None


def context_pairs(pairs: Sequence[tuple[str, str]] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    ctx: dict[str, str] = {}
    for k, v in pairs:
        if k in ctx:
            print(f"hsmpool: error: --context key {k!r} given twice", file=sys.stderr)
            raise SystemExit(2)
        ctx[k] = v
    return ctx


@contextlib.contextmanager
def _input(path: str) -> Iterator[tuple[BinaryIO, int | None]]:
    if path == "-":
        yield sys.stdin.buffer, None
        return
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        yield fh, st.st_size if st.st_size > 0 else None


def _progress(args: argparse.Namespace, label: str, total: int | None) -> _Bar | None:
    if args.quiet or not (args.progress or sys.stderr.isatty()):
        return None
    return _Bar(label, total, sys.stderr)


def _report(args: argparse.Namespace, verb: str, res: FileResult) -> None:
    if args.quiet:
        return
    out = sys.stderr if args.output == "-" else sys.stdout
    doc = {"KeyId": res.key_id, "Cipher": res.cipher, "ChunkSize": res.chunk_size,
           "Chunks": res.chunks, "PlaintextBytes": res.plaintext_bytes,
           "CiphertextBytes": res.ciphertext_bytes, "EncryptionContext": res.context}
    if res.key_version is not None:
        doc["KeyVersion"] = res.key_version
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(f"{verb} {args.input} -> {args.output}: {res.plaintext_bytes} bytes, "
              f"{res.cipher}, key {res.key_id}", file=out)


def _refuse_existing_output(args: argparse.Namespace) -> None:
    """Exit 2 (one line, nothing touched) if OUT exists and ``--force`` was not given."""
    if args.output != "-" and not args.force and os.path.lexists(args.output):
        print(f"hsmpool: error: output {args.output!r} exists (--force overwrites it)",
              file=sys.stderr)
        raise SystemExit(2)


def cmd_encrypt(args: argparse.Namespace) -> int:
    from kms.fileenc import atomic_output, encrypt_file

    context = context_pairs(args.context)
    _refuse_existing_output(args)
    with open_client(args) as client, _input(args.input) as (fin, total):
        bar = _progress(args, "encrypt", total)
        if args.output == "-":
            res = encrypt_file(client, args.key, fin, sys.stdout.buffer, context,
                               args.chunk_size, bar)
        else:
            with atomic_output(args.output, replace=args.force) as fout:
                res = encrypt_file(client, args.key, fin, fout, context, args.chunk_size, bar)
        if bar is not None:
            bar.finish()
    _report(args, "encrypted", res)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from kms.fileenc import atomic_output, decrypt_file

    context = context_pairs(args.context)
    _refuse_existing_output(args)
    with open_client(args) as client, _input(args.input) as (fin, total):
        bar = _progress(args, "decrypt", total)
        if args.output == "-":
            # Nothing reaches stdout before the last chunk verified: spool first.
            with tempfile.TemporaryFile() as spool:
                res = decrypt_file(client, fin, spool, context, bar)
                spool.seek(0)
                while block := spool.read(1 << 20):
                    sys.stdout.buffer.write(block)
                sys.stdout.buffer.flush()
        else:
            with atomic_output(args.output, replace=args.force) as fout:
                res = decrypt_file(client, fin, fout, context, bar)
        if bar is not None:
            bar.finish()
    _report(args, "decrypted", res)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the service's commands: key, alias, encrypt, decrypt, secret."""
    from kms.cli.keys import add_key_commands
    from kms.cli.secrets import add_secret_commands
    from kms.fileenc import DEFAULT_CHUNK_SIZE
    from kms.model import KeySpec, KeyUsage, Origin

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--instance", default="default",
                        help="the pool instance (tenant); default: default")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    def leaf(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    key = sub.add_parser("key", help="create, list, rotate and delete keys")
    ks = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    p = leaf(ks, "create", "create a key", cmd_key_create)
    p.add_argument("--spec", default="SYMMETRIC_DEFAULT", choices=[s.value for s in KeySpec],
                   help="key spec (default %(default)s)")
    p.add_argument("--usage", choices=[u.value for u in KeyUsage],
                   help="default: the spec's first usage")
    p.add_argument("--origin", default="AWS_KMS", choices=[o.value for o in Origin],
                   help="AWS_KMS: material made in the HSMs; EXTERNAL: imported later with "
                        "import-key-material (default %(default)s)")
    p.add_argument("--description", default="", help="free text (default: none)")
    leaf(ks, "list", "list the instance's keys", cmd_key_list)
    for name, help_, func in (
            ("describe", "show a key", cmd_key_describe),
            ("rotate", "rotate a symmetric key now (new primary version)", cmd_key_rotate),
            ("enable", "enable a key", _key_change("enable_key")),
            ("disable", "disable a key", _key_change("disable_key")),
            ("schedule-deletion", "delete a key after a waiting period",
             _key_change("schedule_key_deletion", pending_window_days="days")),
            ("cancel-deletion", "cancel a scheduled deletion (the key stays disabled)",
             _key_change("cancel_key_deletion"))):
        p = leaf(ks, name, help_, func)
        p.add_argument("key", metavar="KEY", help="key id, key ARN, alias name or alias ARN")
        if name == "schedule-deletion":
            p.add_argument("--days", type=int, default=30, help="7..30 (default 30)")
    add_key_commands(ks, leaf)

    alias = sub.add_parser("alias", help="create, update, delete and list aliases")
    als = alias.add_subparsers(dest="alias_command", required=True, metavar="COMMAND")
    for name, create in (("create", True), ("update", False)):
        p = leaf(als, name, f"{name} an alias (alias/NAME -> KEY)", _alias_set(create))
        p.add_argument("name", metavar="NAME")
        p.add_argument("key", metavar="KEY")
    p = leaf(als, "delete", "delete an alias", cmd_alias_delete)
    p.add_argument("name", metavar="NAME")
    p = leaf(als, "list", "list aliases", cmd_alias_list)
    p.add_argument("--key", help="only the aliases of this key")

    io_opts = argparse.ArgumentParser(add_help=False)
    io_opts.add_argument("--context", action="append", type=context_arg, metavar="KEY=VALUE",
                         help="encryption context entry; repeatable; stored in the clear")
    shown = io_opts.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="progress bar on stderr even when it is not a terminal")
    shown.add_argument("--quiet", "-q", action="store_true", help="no progress, no summary")
    io_opts.add_argument("--force", "-f", action="store_true",
                         help="overwrite OUT if it exists (default: refuse, exit status 2)")
    io_opts.add_argument("input", metavar="IN", help="input file, or - for stdin")
    io_opts.add_argument("output", metavar="OUT", help="output file, or - for stdout")

    enc = sub.add_parser("encrypt", parents=[common, io_opts],
                         help="encrypt a file (envelope encryption, streamed)",
                         description="Encrypt IN to OUT under a fresh data key of KEY.")
    enc.add_argument("--key", required=True, help="key id, ARN or alias (e.g. alias/backups)")
    enc.add_argument("--chunk-size", type=_size_arg, default=DEFAULT_CHUNK_SIZE,
                     help="plaintext bytes per authenticated chunk (default 1M)")
    enc.set_defaults(func=cmd_encrypt)
    dec = sub.add_parser("decrypt", parents=[common, io_opts],
                         help="decrypt a file made by encrypt",
                         description="Decrypt IN to OUT; OUT appears only if all of IN "
                                     "verified.")
    dec.set_defaults(func=cmd_decrypt)
    add_secret_commands(sub, leaf)


def main(argv: Sequence[str] | None = None) -> int:
    from kms.errors import KmsError

    try:
        return pool_cli.main(argv, build_parser())
    except KmsError as exc:
        print(f"hsmpool: {exc.kind}: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return 1
    except OSError as exc:
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"hsmpool: {exc.strerror or type(exc).__name__}:{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
