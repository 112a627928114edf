"""Audit in a cluster through real ``hsmpool serve`` nodes on one PostgreSQL database (the
session's throw-away cluster): each node has its own audit folder and ships its workers'
segments into the store (``[kms] audit_ship``); after load on both and their shutdown, one
``hsmpool audit verify --all-nodes`` run with node A's configuration verifies every segment
of both nodes: A's from its files, B's from their shipped copies."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from kms.audit_anchor import location
from tests.postgres import PostgresCluster
from tests.server.conftest import HSMPOOL, create_credential, run_server, write_server_config

pytestmark = pytest.mark.own_database  # two nodes on a database of their own

_SEGMENT_LINE = re.compile(r"^segment (\S+): (\d+) records, head seq \d+, anchor \S+ "
                           r"\((verified from its file|verified from its copy shipped from "
                           r"(\S+)|nothing to verify: registered at (\S+) without records)\)$")


def _node(directory: Path, token_dir: Path, url: str) -> Path:
    cfg = write_server_config(directory, token_dir, {"pg": [3, 4]})
    text = re.sub(r'^database = ".*"$', f'database = "{url}"', cfg.read_text(), flags=re.M)
    cfg.write_text(text + "audit_ship = true\n")  # ([kms] is the file's last table)
    return cfg


def test_one_verify_checks_the_segments_of_both_nodes(token_dir: Path, tmp_path: Path,
                                                       postgres: PostgresCluster) -> None:
    name = f"audit_{uuid.uuid4().hex[:10]}"
    postgres.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/{name}"
    cfg_a, cfg_b = (_node(tmp_path / n, token_dir, url) for n in ("a", "b"))
    admin = create_credential(cfg_a, "pg", "admin")  # (a CLI segment in node A's folder)
    n = 40
    with run_server(cfg_a, workers=1) as a, run_server(cfg_b, workers=2) as b:
        for srv in (a, b):
            kms = srv.client(admin)
            key = kms.create_key()["KeyMetadata"]["KeyId"]
            for _ in range(n):
                kms.encrypt(KeyId=key, Plaintext=b"audited")
    # Both stopped: each worker shipped its last records at close.
    proc = subprocess.run([str(HSMPOOL), "audit", "verify", "--all-nodes", "--config",
                           str(cfg_a)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    verified = [m.groups() for m in map(_SEGMENT_LINE.match, proc.stdout.splitlines()) if m]
    loc_b = location(str(cfg_b.parent / "audit"))
    from_files = {seg: int(count) for seg, count, how, _, _ in verified
                  if how == "verified from its file"}
    shipped = {seg: int(count) for seg, count, _, loc, _ in verified if loc == loc_b}
    empty = {seg for seg, _, _, _, loc in verified if loc == loc_b}
    assert len(verified) == len(from_files) + len(shipped) + len(empty), proc.stdout
    # Node B's two workers: from their copies (one may have served nothing: boto3 keeps
    # its connection, and a worker without records has nothing to ship).
    assert len(shipped) + len(empty) == 2 and shipped, proc.stdout
    assert sum(shipped.values()) == n + 1  # its CreateKey and Encrypts, every one
    assert any(seg.startswith("cli-") for seg in from_files)  # node A's: the CLI's
    assert sum(count for seg, count in from_files.items() if not seg.startswith("cli-")) \
        == n + 1  # and its worker's
    assert "PROBLEM" not in proc.stdout and ", OK in" in proc.stdout, proc.stdout
