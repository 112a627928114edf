"""The audit trail from the command line, as real subprocesses of the installed ``hsmpool``
over real SoftHSM2 tokens (instance "clia" on token 7) and real SQLite segments: CLI runs
share one segment per host and OS user and leave no empty ones, name the OS user as the
principal, and ``audit tail|show|export|verify`` read every segment of the configured
directory, merged by time.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kms.audit import AuditLog, SegmentInUse, cli_segment, verify
from tests.conftest import pool_toml
from tests.database import database_line
from tests.kms.test_cli import HSMPOOL

INSTANCE = "clia"
USER = pwd.getpwuid(os.geteuid()).pw_name
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def write_config(directory: Path, token_dir: Path, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "hsmpool.toml"
    cfg.write_text(pool_toml(token_dir, {INSTANCE: [7]})
                   + "[kms]\n" + database_line(directory / "kms.db")
                   + f'audit_dir = "audit"\n{extra}')
    return cfg


@pytest.fixture
def config(token_dir: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "cfg", token_dir)


def run(config: Path | None, *args: str, rc: int = 0, cwd: Path | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [HSMPOOL, *(["--config", str(config)] if config else []), *args]
    environ = {k: v for k, v in os.environ.items()
               if k not in ("HSMPOOL_CONFIG", "HSMPOOL_AUDIT_DIR")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**environ, **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, (args, proc.returncode, proc.stderr)
    return proc


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def segments(config: Path) -> list[str]:
    audit = config.parent / "audit"
    return sorted(p.name for p in audit.iterdir()) if audit.exists() else []


def db_segments(config: Path) -> list[str]:
    return [n for n in segments(config) if n.endswith(".db")]


# --- one segment per host and user, none empty ------------------------------------------------


def test_cli_runs_share_one_segment_and_name_the_os_user(config: Path) -> None:
    key = json.loads(run(config, "key", "create", "--instance", INSTANCE, "--json").stdout)
    run(config, "key", "list", "--instance", INSTANCE)
    run(config, "alias", "list", "--instance", INSTANCE)
    run(config, "credentials", "list")
    shared = cli_segment()
    assert shared.startswith("cli-") and shared.endswith(f"-{USER}")
    assert db_segments(config) == [f"audit-{shared}.db"]
    assert segments(config) == [f"audit-{shared}.db", f"audit-{shared}.lock"]

    records = lines(run(config, "audit", "export"))
    assert [r["Action"] for r in records] == ["kms:CreateKey", "kms:ListAliases",
                                              "kms:ListKeys", "kms:ListAliases",
                                              "kms:ListAliases"]
    assert {r["Principal"] for r in records} == {f"os:{USER}"}
    assert [r["Seq"] for r in records] == [1, 2, 3, 4, 5]  # one chain, continued per run
    assert records[0]["KeyId"] == key["KeyId"] and records[0]["Instance"] == INSTANCE
    report = verify(config.parent / "audit")
    assert report.ok and report.segments == 1 and report.records == 5


def test_a_run_without_records_leaves_no_segment(config: Path) -> None:
    run(config, "credentials", "list")  # a reader: opens no audit log at all
    assert segments(config) == []
    run(config, "credentials", "enable", "HSMPNOSUCHKEY0000000", rc=1)  # nothing recorded
    assert (config.parent / "audit").is_dir() and segments(config) == []
    assert run(config, "audit", "tail").stdout == ""
    assert segments(config) == []
    run(config, "alias", "list", "--instance", INSTANCE)
    assert db_segments(config) == [f"audit-{cli_segment()}.db"]


def test_a_concurrent_run_falls_back_to_a_segment_of_its_own(config: Path) -> None:
    run(config, "alias", "list", "--instance", INSTANCE)
    audit = config.parent / "audit"
    with AuditLog(audit, cli_segment()):  # as a CLI run still going
        run(config, "credentials", "list")  # no records: its own segment is gone again
        assert db_segments(config) == [f"audit-{cli_segment()}.db"]
        run(config, "key", "list", "--instance", INSTANCE)
        mine = [n for n in db_segments(config) if n != f"audit-{cli_segment()}.db"]
        assert len(mine) == 1 and mine[0].startswith(f"audit-{cli_segment()}-")
        assert mine[0].removeprefix(f"audit-{cli_segment()}-").removesuffix(".db").isdigit()
    run(config, "alias", "list", "--instance", INSTANCE)  # the shared one is free again
    out = run(config, "audit", "verify").stdout
    # Both segments are registered in the store: their checkpoints are anchors.
    assert "2 segments, 4 records, 2 anchors, OK" in out
    written = {r["Segment"] for r in lines(run(config, "audit", "export"))}
    assert written == {cli_segment(), mine[0].removeprefix("audit-").removesuffix(".db")}


def test_discarded_empty_segment_can_be_taken_again(tmp_path: Path) -> None:
    """A discarded segment leaves no file, not even its lock; the name can be taken again,
    by one writer at a time, and a segment with records is kept."""
    AuditLog(tmp_path, "cli-x", discard_if_empty=True).close()
    assert os.listdir(tmp_path) == []
    second = AuditLog(tmp_path, "cli-x", discard_if_empty=True)
    try:
        with pytest.raises(SegmentInUse, match="in use"):
            AuditLog(tmp_path, "cli-x")
        second.record(T0, "i", "p", "kms:Encrypt", None, None, "ok", "r1", {})
    finally:
        second.close()
    assert sorted(os.listdir(tmp_path)) == ["audit-cli-x.db", "audit-cli-x.lock"]
    AuditLog(tmp_path, "cli-x", discard_if_empty=True).close()  # not empty: kept
    assert sorted(os.listdir(tmp_path)) == ["audit-cli-x.db", "audit-cli-x.lock"]
    report = verify(tmp_path)
    assert report.ok and report.records == 1


# --- reading: tail, show, export --------------------------------------------------------------


def _write_segment(audit: Path, name: str, events: list[tuple[float, str, str | None,
                                                                dict[str, str]]]) -> None:
    with AuditLog(audit, name, sync=False) as log:
        for i, (t, action, key, details) in enumerate(events):
            log.record(t, INSTANCE, "app", action, key, None, "ok", f"{name}-req-{i}", details)


KEY_A = "11111111-1111-4111-8111-111111111111"
KEY_B = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def trail(token_dir: Path, tmp_path: Path) -> Path:
    """A configuration whose audit directory holds two server-like segments written
    interleaved in time, and a context key marked secret after the records were written."""
    cfg = write_config(tmp_path / "trail", token_dir, 'secret_context_keys = ["pin"]\n')
    audit = cfg.parent / "audit"
    _write_segment(audit, "w0", [
        (T0 + 0, "kms:CreateKey", KEY_A, {}),
        (T0 + 20, "kms:Encrypt", KEY_A, {"ctx:app": "billing", "ctx:pin": "1234"}),
        (T0 + 40, "kms:Decrypt", KEY_A, {"ctx:secret:x": "hunter2"}),
    ])
    _write_segment(audit, "w1", [
        (T0 + 10, "kms:CreateKey", KEY_B, {}),
        (T0 + 30, "kms:Decrypt", KEY_B, {}),
        (T0 + 50, "kms:Encrypt", KEY_B, {}),
    ])
    return cfg


def test_export_merges_segments_by_time_and_filters(trail: Path) -> None:
    every = lines(run(trail, "audit", "export"))
    assert [(r["Segment"], r["Seq"]) for r in every] == [
        ("w0", 1), ("w1", 1), ("w0", 2), ("w1", 2), ("w0", 3), ("w1", 3)]
    assert [r["Epoch"] for r in every] == [T0 + i * 10 for i in range(6)]
    assert every[0]["Time"] == "2027-01-15T08:00:00.000Z"
    assert set(every[0]) == {"Time", "Epoch", "Segment", "Seq", "Instance", "Principal",
                             "Action", "KeyId", "KeyVersion", "Result", "RequestId",
                             "Details", "Hash"}

    def seqs(*args: str) -> list[str]:
        return [f"{r['Segment']}:{r['Seq']}" for r in lines(run(trail, "audit", "export",
                                                                "--json", *args))]

    assert seqs("--action", "kms:Decrypt") == ["w1:2", "w0:3"]
    assert seqs("--action", "Encrypt") == ["w0:2", "w1:3"]
    assert seqs("--action", "kms:Enc") == []
    assert seqs("--key", KEY_B) == ["w1:1", "w1:2", "w1:3"]
    arn = f"arn:aws:kms:us-east-1:111122223333:key/{KEY_A}"
    assert seqs("--key", arn, "--action", "Decrypt") == ["w0:3"]
    assert seqs("--since", "2027-01-15T08:00:20Z", "--until", str(T0 + 40)) == [
        "w0:2", "w1:2", "w0:3"]
    assert seqs("--since", "2027-01-15T16:00:30+08:00") == ["w1:2", "w0:3", "w1:3"]
    assert len(seqs("--since", "3650d")) == 6  # an age: ten years ago
    table = run(trail, "audit", "export", "--table", "--key", KEY_A).stdout.splitlines()
    assert table[0].split() == ["Time", "Instance", "Principal", "Action", "KeyId",
                                "Result", "Record"]
    assert [row.split()[3] for row in table[1:]] == ["kms:CreateKey", "kms:Encrypt",
                                                    "kms:Decrypt"]
    assert table[1].split()[-1] == "w0:1"
    msg = run(trail, "audit", "export", "--since", "yesterday", rc=2).stderr
    assert len(msg.splitlines()) == 1 and "not a time" in msg


def test_secret_context_values_never_shown(trail: Path) -> None:
    out = run(trail, "audit", "export").stdout + run(trail, "audit", "show", "w0:2").stdout \
        + run(trail, "audit", "tail", "--json").stdout + run(trail, "audit", "show", "3").stdout
    assert "1234" not in out and "hunter2" not in out
    enc = lines(run(trail, "audit", "show", "w0:2", "--json"))[0]
    assert enc["Details"] == {"ctx:app": "billing", "ctx:pin": "<redacted>"}
    dec = lines(run(trail, "audit", "show", "w0:3", "--json"))[0]
    assert dec["Details"] == {"ctx:secret:x": "<redacted>"}


def test_tail_and_show(trail: Path) -> None:
    last = lines(run(trail, "audit", "tail", "-n", "3", "--json"))
    assert [f"{r['Segment']}:{r['Seq']}" for r in last] == ["w1:2", "w0:3", "w1:3"]
    assert lines(run(trail, "audit", "tail", "-n", "0", "--json")) == []
    table = run(trail, "audit", "tail", "-n", "2", "--action", "CreateKey").stdout
    assert [row.split()[-1] for row in table.splitlines()[1:]] == ["w0:1", "w1:1"]

    both = lines(run(trail, "audit", "show", "2", "--json"))
    assert [(r["Segment"], r["Seq"]) for r in both] == [("w0", 2), ("w1", 2)]  # by time
    one = run(trail, "audit", "show", "w1:3").stdout
    shown = dict(line.split(None, 1) for line in one.splitlines())
    assert shown["Segment"] == "w1" and shown["Seq"] == "3" and shown["KeyId"] == KEY_B
    assert shown["RequestId"] == "w1-req-2" and len(shown["Hash"]) == 64
    by_id = lines(run(trail, "audit", "show", "w0-req-1", "--json"))
    assert [(r["Segment"], r["Seq"], r["Action"]) for r in by_id] == [("w0", 2, "kms:Encrypt")]
    for ref in ("w9:1", "7", "no-such-request"):
        err = run(trail, "audit", "show", ref, rc=1).stderr
        assert err.splitlines() == [f"hsmpool: audit: no record {ref!r} (SEQ, SEGMENT:SEQ "
                                    "or a request id)"]


def test_damaged_rows_are_skipped_with_a_warning(trail: Path) -> None:
    db = sqlite3.connect(trail.parent / "audit" / "audit-w1.db")
    with db:
        db.execute("UPDATE records SET record = 'not json' WHERE seq = 2")
    db.close()
    proc = run(trail, "audit", "export")
    assert [f"{r['Segment']}:{r['Seq']}" for r in lines(proc)] == [
        "w0:1", "w1:1", "w0:2", "w0:3", "w1:3"]
    assert proc.stderr.splitlines() == [
        "hsmpool: warning: segment w1: 1 malformed records skipped (run hsmpool audit verify)"]
    assert "seq 2" in run(trail, "audit", "verify", rc=1).stdout


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _signal_state() -> str:
    """SigBlk/SigIgn of this process's main thread, for a failure message."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return " ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn")))


def test_follow_prints_new_records(config: Path) -> None:
    run(config, "alias", "list", "--instance", INSTANCE)
    # Ctrl-C as a terminal would send it: SIGINT at its default and unblocked in the child,
    # whatever this test process inherited (a process whose parent ignores SIGINT ignores it
    # too, as Python keeps an inherited SIG_IGN; in full clean-clone runs the tail here did).
    proc = subprocess.Popen([HSMPOOL, "--config", str(config), "audit", "tail", "--follow",
                             "--json", "-n", "1", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    assert proc.stdout is not None
    out: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [out.put(line) for line in proc.stdout or ()],
                     daemon=True).start()
    # stderr is read as it comes too: a pipe nobody reads blocks the writer once full.
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr or ()), daemon=True).start()
    try:
        first = json.loads(out.get(timeout=30))
        assert first["Action"] == "kms:ListAliases" and first["Seq"] == 1
        key = json.loads(run(config, "key", "create", "--instance", INSTANCE,
                             "--json").stdout)["KeyId"]
        got = [json.loads(out.get(timeout=30)) for _ in range(2)]
        assert [(r["Action"], r["KeyId"]) for r in got] == [("kms:CreateKey", key),
                                                            ("kms:ListAliases", None)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("audit tail --follow did not stop on SIGINT; stderr: "
                                 + "".join(err)[-3000:] + "; this process's signal state: "
                                 + _signal_state()) from None
    assert proc.returncode == 130, "".join(err)[-3000:]
    assert "Traceback" not in "".join(err)


# --- where the audit directory is ---------------------------------------------------------


def test_audit_commands_honour_config_and_dir(trail: Path, config: Path,
                                              tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    # --config (no ./var/audit here): verify and the readers use its [kms] audit_dir.
    out = run(trail, "audit", "verify", cwd=elsewhere).stdout
    assert f"audit {trail.parent / 'audit'}: 2 segments, 6 records" in out
    assert len(lines(run(trail, "audit", "export", cwd=elsewhere))) == 6
    # $HSMPOOL_CONFIG likewise.
    env = {"HSMPOOL_CONFIG": str(trail)}
    assert len(lines(run(None, "audit", "tail", "--json", cwd=elsewhere, env=env))) == 6
    assert "2 segments" in run(None, "audit", "verify", cwd=elsewhere, env=env).stdout
    # --dir overrides both; $HSMPOOL_AUDIT_DIR is used without a --config.
    run(config, "alias", "list", "--instance", INSTANCE)
    other = str(config.parent / "audit")
    assert "1 segments, 1 records" in run(trail, "audit", "verify", "--dir", other).stdout
    assert len(lines(run(None, "audit", "export", "--dir", other, env=env))) == 1
    audit_env = {"HSMPOOL_AUDIT_DIR": other}
    assert len(lines(run(None, "audit", "export", cwd=elsewhere, env=audit_env))) == 1
    assert len(lines(run(trail, "audit", "export", cwd=elsewhere, env=audit_env))) == 6
    # Errors are one line: no such directory, no such configuration, audit switched off.
    err = run(None, "audit", "export", "--dir", str(tmp_path / "none"), rc=1).stderr
    assert err.splitlines() == [f"hsmpool: audit: {tmp_path / 'none'}: no such audit "
                                "directory"]
    err = run(tmp_path / "missing.toml", "audit", "verify", rc=2).stderr
    assert len(err.splitlines()) == 1 and "does not exist" in err
    off = tmp_path / "off.toml"
    off.write_text('[kms]\naudit_dir = ""\n')
    err = run(off, "audit", "tail", rc=2).stderr
    assert len(err.splitlines()) == 1 and "audit_dir is off" in err


def test_cli_audit_holds_no_secrets(config: Path, tmp_path: Path) -> None:
    """What a CLI run records: the OS user, actions, key ids; not the plaintext, nor the
    secret access key it printed."""
    made = json.loads(run(config, "credentials", "create", "--instance", INSTANCE,
                          "--name", "audited", "--json").stdout)
    run(config, "credentials", "disable", made["AccessKeyId"])
    (tmp_path / "in").write_bytes(b"top secret plaintext " * 10)
    key = json.loads(run(config, "key", "create", "--instance", INSTANCE,
                         "--json").stdout)["KeyId"]
    run(config, "encrypt", "-q", "--instance", INSTANCE, "--key", key, "--context",
        "team=ops", str(tmp_path / "in"), str(tmp_path / "ct"))
    records = lines(run(config, "audit", "export"))
    creds = [r for r in records if r["Action"].startswith("credentials:")]
    assert [(r["Action"], r["Details"]) for r in creds] == [
        ("credentials:CreateAccessKey", {"access_key_id": made["AccessKeyId"],
                                         "principal": "audited"}),
        ("credentials:DisableAccessKey", {"access_key_id": made["AccessKeyId"],
                                          "principal": "audited"})]
    assert {r["Principal"] for r in records} == {f"os:{USER}"}
    assert "kms:GenerateDataKey" in {r["Action"] for r in records}
    stored = b"".join(p.read_bytes() for p in (config.parent / "audit").iterdir())
    text = json.dumps(records).encode()
    for blob in (stored, text):
        assert made["SecretAccessKey"].encode() not in blob
        assert b"top secret plaintext" not in blob


def test_absurd_record_times_are_skipped(trail: Path) -> None:
    """A row edited to a time no clock shows (NaN, far future, negative) is malformed for
    the reader too: skipped with a warning, never a traceback."""
    db = sqlite3.connect(trail.parent / "audit" / "audit-w0.db")
    with db:
        for seq, t in ((1, "NaN"), (2, "1e300"), (3, "-5")):
            row = db.execute("SELECT record FROM records WHERE seq = ?", (seq,)).fetchone()
            fields = row[0].split(",", 2)
            db.execute("UPDATE records SET record = ? WHERE seq = ?",
                       (",".join([fields[0], t, fields[2]]), seq))
    db.close()
    proc = run(trail, "audit", "export", "--table")
    assert [row.split()[-1] for row in proc.stdout.splitlines()[1:]] == ["w1:1", "w1:2",
                                                                        "w1:3"]
    assert "segment w0: 3 malformed records skipped" in proc.stderr
