"""``hsmpool audit verify|tail|show|export``: check and read the audit trail.

The chain itself and its verification are :mod:`kms.audit`; reading records across
segments is :mod:`kms.audit_reader`. Every command finds the audit directory the same way
(:func:`audit_location`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from kms.audit import DEFAULT_DIR, AuditError, parse_anchor, verify
from kms.audit_reader import (
    AuditRecord,
    Filter,
    Reader,
    follow,
    parse_time,
    ref_filter,
)

# --- where the trail is, and verify -----------------------------------------------------

DEFAULT_CONFIG = "var/hsmpool.toml"


def audit_location(args: argparse.Namespace) -> tuple[str, frozenset[str]]:
    """The audit directory of an ``audit`` command, and the secret context keys of its
    configuration: ``--dir``; else the ``[kms] audit_dir`` of ``--config``; else
    ``$HSMPOOL_AUDIT_DIR``; else that of ``$HSMPOOL_CONFIG`` or ``var/hsmpool.toml`` (if it
    exists); else ``var/audit``. A configuration error is one line and exit status 2."""
    config = getattr(args, "config", None)
    if args.dir is None and config is None:
        if os.environ.get("HSMPOOL_AUDIT_DIR"):
            return os.environ["HSMPOOL_AUDIT_DIR"], frozenset()
        config = os.environ.get("HSMPOOL_CONFIG") or (
            DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
        if config is None:
            return DEFAULT_DIR, frozenset()
    if config is None:
        return args.dir, frozenset()
    audit_dir, secret = _configured(config)
    if args.dir is not None:
        return args.dir, secret
    if audit_dir is None:
        _usage(f"configuration error: {config}: [kms] audit_dir is off (no audit trail)")
    return audit_dir, secret


def _configured(config: str) -> tuple[str | None, frozenset[str]]:
    from hsmpool.config import read_toml
    from hsmpool.errors import ConfigError
    from kms.config import parse_kms_settings

    try:
        doc, base = read_toml(config)
        settings = parse_kms_settings(doc, base)
    except (ConfigError, ValueError, TypeError) as exc:
        _usage(f"configuration error: {exc}")
    return settings.audit_dir, settings.secret_context_keys


def _config_path(args: argparse.Namespace) -> str | None:
    """The configuration whose store anchors the trail (as :func:`audit_location` finds it):
    ``--config``, else ``$HSMPOOL_CONFIG`` or ``var/hsmpool.toml`` when no ``--dir`` or
    ``$HSMPOOL_AUDIT_DIR`` is given."""
    config = getattr(args, "config", None)
    if config is not None:
        return str(config)
    if args.dir is not None or os.environ.get("HSMPOOL_AUDIT_DIR"):
        return None
    config = os.environ.get("HSMPOOL_CONFIG") or (
        DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    return config


def _usage(message: str) -> NoReturn:
    print(f"hsmpool: {message}", file=sys.stderr)
    raise SystemExit(2)


def _cmd_verify(args: argparse.Namespace) -> int:
    directory = audit_location(args)[0]
    try:
        key = None
        if args.head_key_file:
            with open(args.head_key_file, "rb") as f:
                key = f.read()
        texts = list(args.anchor or [])
        for name in args.anchor_file or []:
            with open(name, encoding="utf-8") as f:
                texts += [ln for ln in (x.split("#")[0].strip() for x in f) if ln]
        anchors = [parse_anchor(t) for t in texts]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keyed = None
    note = "none given"
    config = _config_path(args)
    if args.all_nodes:
        if config is None:
            print("error: --all-nodes needs the configuration (--config, $HSMPOOL_CONFIG or "
                  f"{DEFAULT_CONFIG}): the other nodes' segments are in its store",
                  file=sys.stderr)
            return 2
        return _verify_all_nodes(args, config, directory, key, anchors)
    if config is not None:
        from kms.audit_anchor import store_anchors

        try:
            found = store_anchors(config, directory)
        except Exception as exc:  # noqa: BLE001 - the store's driver errors: one line
            print(f"error: cannot read the audit anchors of {config}: {exc}", file=sys.stderr)
            return 2
        anchors += [(c.segment, c.seq, c.hash.hex()) for c in found.checkpoints]
        keyed = {c.segment for c in found.checkpoints if c.keyed}
        if key is None:
            key = found.head_key
        note = found.note
        print(f"store: {len(found.checkpoints)} registered segments here; head key {note}")
    started = time.perf_counter()
    report = verify(directory, head_key=key, segments=args.segment or None, anchors=anchors,
                    keyed=keyed if key is not None and not args.head_key_file else None)
    took = time.perf_counter() - started
    for h in report.heads:
        print(f"segment {h.segment}: {h.records} records, head seq {h.seq}, "
              f"anchor {h.segment}:{h.seq}:{h.hash}")
    for p in report.problems:
        print(f"PROBLEM: {p}")
    state = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"audit {directory}: {report.segments} segments, {report.records} records, "
          f"{len(anchors)} anchors, {state} in {took:.2f} s")
    return 0 if report.ok else 1


def _verify_all_nodes(args: argparse.Namespace, config: str, directory: str,
                      key: bytes | None, anchors: list[tuple[str, int, str]]) -> int:
    """``audit verify --all-nodes``: this folder's segments from their files, every other
    location's from the copies shipped into the store (:func:`kms.audit_ship.verify_all_nodes`)."""
    from kms.audit_ship import verify_all_nodes

    started = time.perf_counter()
    try:
        report = verify_all_nodes(config, directory, head_key=key, anchors=anchors,
                                  segments=args.segment or None)
    except Exception as exc:  # noqa: BLE001 - the store's driver errors: one line
        print(f"error: cannot read the audit anchors of {config}: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - started
    print(f"store: {report.registered} registered segments, here and at "
          f"{len(report.locations)} other locations; head key {report.note}")
    for h in report.heads:
        if h.source == "file":
            how = "verified from its file"
        elif h.source.startswith("shipped from "):
            how = f"verified from its copy {h.source}"
        else:
            how = f"nothing to verify: {h.source}"
        print(f"segment {h.segment}: {h.records} records, head seq {h.seq}, "
              f"anchor {h.segment}:{h.seq}:{h.hash} ({how})")
    for p in report.problems:
        print(f"PROBLEM: {p}")
    state = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    empty = f", {report.empty} registered without records" if report.empty else ""
    print(f"audit of every node: {report.segments} segments ({report.from_files} from the "
          f"files of {directory}, {report.from_shipped} from shipped copies{empty}), "
          f"{report.records} records, {state} in {took:.2f} s")
    return 0 if report.ok else 1


def add_cli(subparsers: Any) -> None:
    """Register ``audit verify|tail|show|export`` on an ``argparse`` subparsers object."""
    audit = subparsers.add_parser("audit", help="the audit trail: verify and read it")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", default=argparse.SUPPRESS,  # as hsmpool --config
                       help="configuration (TOML): its [kms] audit_dir and store; default "
                            f"$HSMPOOL_CONFIG or {DEFAULT_CONFIG}")
    where.add_argument("--dir", default=None,
                       help="audit directory (default: the [kms] audit_dir of --config; "
                            "else $HSMPOOL_AUDIT_DIR; else that of $HSMPOOL_CONFIG or "
                            f"{DEFAULT_CONFIG}; else {DEFAULT_DIR})")
    v = sub.add_parser("verify", parents=[where],
                       help="check every audit segment's hash chain and head")
    v.add_argument("--segment", action="append",
                   help="check only this segment (repeatable); a named segment that is "
                        "absent is a problem")
    v.add_argument("--head-key-file", help="file holding the head HMAC key")
    v.add_argument("--anchor", action="append", metavar="SEGMENT:SEQ:HASH",
                   help="a head printed by an earlier verify and kept elsewhere; it must "
                        "still be in its chain (repeatable)")
    v.add_argument("--anchor-file", action="append", metavar="FILE",
                   help="file of anchors, one SEGMENT:SEQ:HASH per line ('#' comments)")
    v.add_argument("--all-nodes", action="store_true",
                   help="also every segment the store knows at other locations (nodes), "
                        "from the copies shipped into it ([kms] audit_ship); one that was "
                        "not shipped is a problem")
    v.set_defaults(func=_cmd_verify)
    _add_readers(sub, where)


# --- tail | show | export -----------------------------------------------------------------

_COLUMNS = (("Time", 24), ("Instance", 10), ("Principal", 16), ("Action", 28),
            ("KeyId", 36), ("Result", 10), ("Record", 0))


def _row(cells: Iterable[str]) -> str:
    return " ".join(c.ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)).rstrip()


def _table_line(rec: AuditRecord) -> str:
    return _row((rec.when, rec.instance or "-", rec.principal or "-", rec.action,
                 rec.key_id or "-", rec.result, f"{rec.segment}:{rec.seq}"))


class _Out:
    """Records to stdout, as JSON lines or table rows (the header once), flushed."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.header = not as_json

    def __call__(self, rec: AuditRecord) -> None:
        if self.header:
            print(_row(name for name, _ in _COLUMNS))
            self.header = False
        if self.as_json:
            print(json.dumps(rec.to_json(), sort_keys=False))
        else:
            print(_table_line(rec))
        sys.stdout.flush()


def _reader(args: argparse.Namespace) -> Reader:
    directory, secret = audit_location(args)
    return Reader(directory, secret_context_keys=secret)


def _filter(args: argparse.Namespace) -> Filter:
    key = args.key
    if key is not None and key.startswith("arn:") and ":key/" in key:
        key = key.rsplit(":key/", 1)[1]
    return Filter(since=args.since, until=args.until, action=args.action, key_id=key)


def _warn_skipped(reader: Reader) -> None:
    for segment, n in sorted(reader.skipped.items()):
        print(f"hsmpool: warning: segment {segment}: {n} malformed records skipped "
              "(run hsmpool audit verify)", file=sys.stderr)


def _run(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except AuditError as exc:
        print(f"hsmpool: audit: {exc}", file=sys.stderr)
        return 1


def cmd_tail(args: argparse.Namespace) -> int:
    def run() -> int:
        reader = _reader(args)
        flt = _filter(args)
        out = _Out(args.json)
        seen = reader.heads()  # before the tail: nothing committed meanwhile is missed
        for rec in reader.tail(args.lines, flt):
            out(rec)
        _warn_skipped(reader)
        if args.follow:
            follow(reader, flt, out, interval=args.interval, seen=seen)
        return 0

    return _run(run)


def cmd_show(args: argparse.Namespace) -> int:
    def run() -> int:
        reader = _reader(args)
        found = list(reader.read(ref_filter(args.ref)))
        _warn_skipped(reader)
        if not found:
            print(f"hsmpool: audit: no record {args.ref!r} (SEQ, SEGMENT:SEQ or a request "
                  "id)", file=sys.stderr)
            return 1
        for i, rec in enumerate(found):
            if args.json:
                print(json.dumps(rec.to_json()))
                continue
            if i:
                print()
            _show_fields(rec)
        return 0

    return _run(run)


def _show_fields(rec: AuditRecord) -> None:
    doc = rec.to_json()
    doc["Details"] = ", ".join(f"{k}={v}" for k, v in rec.details.items())
    width = max(len(k) for k in doc)
    for k, v in doc.items():
        print(f"{k.ljust(width)}  {'-' if v is None or v == '' else v}")


def cmd_export(args: argparse.Namespace) -> int:
    def run() -> int:
        reader = _reader(args)
        out = _Out(not args.table)
        for rec in reader.read(_filter(args)):
            out(rec)
        _warn_skipped(reader)
        return 0

    return _run(run)


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count_arg(text: str) -> int:
    if not text.isdigit() or int(text) > 1_000_000:
        raise argparse.ArgumentTypeError(f"not a record count 0..1000000: {text!r}")
    return int(text)


def _interval_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError(f"not an interval of 0.05..60 seconds: {text!r}")
    return value


def _add_readers(sub: Any, where: argparse.ArgumentParser) -> None:
    """Register ``tail``, ``show`` and ``export`` under ``hsmpool audit``; ``where`` holds
    the options that locate the audit directory."""
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", type=_time_arg, metavar="T",
                         help="records at or after T: ISO 8601 (UTC unless it has an "
                              "offset), epoch seconds, or an age such as 15m, 2h, 7d "
                              "(default: from the first)")
    filters.add_argument("--until", type=_time_arg, metavar="T",
                         help="records at or before T, as --since (default: to the last)")
    filters.add_argument("--action", metavar="A",
                         help="only this action, e.g. kms:Decrypt (or Decrypt: any service)")
    filters.add_argument("--key", metavar="K",
                         help="only records of this key id or key ARN (aliases are not "
                              "resolved)")

    t = sub.add_parser("tail", parents=[where, filters],
                       help="the latest records of every segment, merged by time")
    t.add_argument("-n", "--lines", type=_count_arg, default=20, metavar="N",
                   help="how many (default %(default)s)")
    t.add_argument("-f", "--follow", action="store_true",
                   help="then print new records as they are committed, until interrupted")
    t.add_argument("--interval", type=_interval_arg, default=0.5, metavar="S",
                   help="seconds between looks for new records with --follow "
                        "(default %(default)s)")
    t.add_argument("--json", action="store_true", help="JSON lines (default: a table)")
    t.set_defaults(func=cmd_tail)

    s = sub.add_parser("show", parents=[where], help="one record in full")
    s.add_argument("ref", metavar="SEQ|SEGMENT:SEQ|REQUEST_ID",
                   help="a seq (in every segment), a seq of one segment, or a request id")
    s.add_argument("--json", action="store_true", help="JSON lines (default: fields)")
    s.set_defaults(func=cmd_show)

    e = sub.add_parser("export", parents=[where, filters],
                       help="every matching record, merged by time (JSON lines)")
    shape = e.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true",
                       help="JSON lines, one record per line (the default)")
    shape.add_argument("--table", action="store_true", help="a readable table instead")
    e.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    """``python -m kms.cli.audit verify [--dir DIR]`` (and tail, show, export)."""
    parser = argparse.ArgumentParser(prog="hsmpool")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
