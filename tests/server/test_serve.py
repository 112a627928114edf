"""``hsmpool serve`` fails loudly and early, in one line, and never respawns workers that
cannot start; ``[server]`` settings come from the TOML file (options override them); a token
missing at start leaves the server degraded, not down. Real ``hsmpool serve`` processes on
real SoftHSM2 tokens.

Instances: "sv" on tokens 5, 6 (token 7 for the degraded start), "svbad" for failures.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.faults import FaultInjector
from tests.postgres import PostgresCluster
from tests.server.conftest import (
    HSMPOOL,
    REGION,
    create_credential,
    serving,
    start_serve,
    write_server_config,
)

INSTANCE = "sv"
TOKENS = [5, 6]


def _config(tmp: Path, token_dir: Path, server: str = "", extra: str = "") -> Path:
    cfg = write_server_config(tmp, token_dir, {INSTANCE: TOKENS})
    text = cfg.read_text() + extra
    if server:
        text += "[server]\n" + server
    cfg.write_text(text)
    return cfg


def _get(url: str, path: str) -> tuple[int, dict[str, object]]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _one_line_failure(tmp: Path, config: Path | None, args: list[str], rc: int,
                      timeout: float = 60) -> str:
    """Run ``serve``, expect it to exit by itself with ``rc`` and a single line."""
    run = start_serve(["--port", "0", *args], tmp / f"fail-{time.monotonic_ns()}.log",
                      config=config)
    t0 = time.monotonic()
    assert run.finish(timeout) == rc, run.text()
    assert time.monotonic() - t0 < timeout
    lines = run.lines()
    assert len(lines) == 1, run.text()
    assert lines[0].startswith("hsmpool: ") and "Traceback" not in run.text()
    return lines[0]


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_broken_configuration_is_one_line_and_status_2(token_dir: Path, tmp_path: Path,
                                                       workers: str) -> None:
    good = _config(tmp_path, token_dir)
    typo = tmp_path / "typo.toml"
    typo.write_text(good.read_text().replace("[pool]", "[pool", 1))
    msg = _one_line_failure(tmp_path, typo, ["--workers", workers], 2)
    assert "not valid TOML" in msg and str(typo) in msg
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(good.read_text() + "[server]\nprot = 8080\n")
    assert "unknown [server] key(s) ['prot']" in _one_line_failure(
        tmp_path, unknown, ["--workers", workers], 2)
    mistyped = tmp_path / "mistyped.toml"
    mistyped.write_text(good.read_text().replace("[kms]", "[kms]\nmax_plaintext = \"big\"", 1))
    assert "kms.max_plaintext" in _one_line_failure(tmp_path, mistyped,
                                                    ["--workers", workers], 2)
    bad_workers = tmp_path / "workers.toml"
    bad_workers.write_text(good.read_text() + "[server]\nworkers = -1\n")
    assert "server.workers" in _one_line_failure(tmp_path, bad_workers, [], 2)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_no_usable_token_is_one_line_and_status_1(token_dir: Path, tmp_path: Path,
                                                  workers: str) -> None:
    cfg = _config(tmp_path, token_dir)
    cfg.write_text(re.sub(r'label = "hsmpool-\d"', 'label = "no-such-token"', cfg.read_text()))
    msg = _one_line_failure(tmp_path, cfg, ["--workers", workers], 1)
    assert "HSM:" in msg and "no token with label 'no-such-token'" in msg


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_bad_tls_files_are_one_line_naming_the_file(token_dir: Path, tmp_path: Path) -> None:
    """With two workers too: no worker is ever started (it used to respawn forever)."""
    cfg = _config(tmp_path, token_dir)
    cert, key = _self_signed(tmp_path, "a")
    key2 = _self_signed(tmp_path, "b")[1]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", str(garbage), "--tls-key", str(key)], f"{str(garbage)!r}",
         "no PEM certificate"),
        (["--tls-cert", str(cert), "--tls-key", str(garbage)], f"{str(garbage)!r}",
         "no PEM private key"),
        (["--tls-cert", str(cert), "--tls-key", str(key2)], "does not match", str(cert)),
        (["--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(key)], "nope.crt",
         "does not exist"),
    ]
    for args, *fragments in cases:
        msg = _one_line_failure(tmp_path, cfg, ["--workers", "2", *args], 2, timeout=30)
        for f in fragments:
            assert f in msg, msg
    # Relative paths in the file are relative to it; a lone tls_cert is a config error.
    (tmp_path / "only.toml").write_text(cfg.read_text() + '[server]\ntls_cert = "a.crt"\n')
    assert "go together" in _one_line_failure(tmp_path, tmp_path / "only.toml", [], 2)


def test_port_in_use_is_one_line_and_status_1(token_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, token_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start_serve(["--port", str(port), "--workers", "2"], tmp_path / "port.log",
                          config=cfg)
        assert run.finish(60) == 1
    assert run.lines() == [f"hsmpool: cannot listen on 127.0.0.1:{port}: the address is "
                           "in use"]


def test_a_worker_that_cannot_start_later_stops_the_server(token_dir: Path, tmp_path: Path,
                                                           faults: FaultInjector) -> None:
    """A worker dies; its replacement cannot open a single token: the server stops with
    status 1 and one line saying so, having started exactly one replacement."""
    cfg = _config(tmp_path, token_dir)
    run = start_serve(["--port", "0", "--workers", "2"], tmp_path / "later.log", config=cfg)
    try:
        run.wait_for("serving AWS KMS")
        workers = _children(run.proc.pid)
        assert len(workers) == 2
        for i in TOKENS:
            faults.fail(f"hsmpool-{i}", "device_error")
        os.kill(workers[0], signal.SIGKILL)
        assert run.finish(60) == 1
    finally:
        run.stop()
    last = run.lines()[-1]
    assert re.fullmatch(r"hsmpool: worker 1 \(pid \d+\) failed to start: HSM: .*", last), last
    assert sum("starting another" in ln for ln in run.lines()) == 1, run.text()
    assert "Traceback" not in run.text()
    for pid in workers:
        assert not _alive(pid)


def test_workers_that_keep_dying_stop_the_server(token_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, token_dir)
    run = start_serve(["--port", "0", "--workers", "2"], tmp_path / "dying.log", config=cfg)
    try:
        run.wait_for("serving AWS KMS")
        for _ in range(6):  # the sixth death within a minute is one too many
            if run.proc.poll() is not None:
                break
            kids = _children(run.proc.pid)
            _wait_ready(kids)
            os.kill(kids[0], signal.SIGKILL)
            time.sleep(0.5)
        assert run.finish(60) == 1
    finally:
        run.stop()
    assert "workers keep dying (6 in 60 s" in run.lines()[-1], run.text()


def _children(pid: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout.split()
        if len(out) >= 2:
            return sorted(int(p) for p in out)
        time.sleep(0.1)
    pytest.fail(f"server {pid} has no two workers")


def _wait_ready(pids: list[int]) -> None:
    """Give replacements time to start serving before the next kill."""
    time.sleep(1.5)
    assert all(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- settings from the file, the serving line ------------------------------------------------


def test_server_settings_come_from_the_file_and_options_override(token_dir: Path,
                                                                 tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "srv")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(tmp_path, token_dir, f'host = "127.0.0.1"\nport = {port}\nworkers = 2\n'
                  'tls_cert = "srv.crt"\ntls_key = "srv.key"\naccess_log = "json"\n')
    cred = create_credential(cfg, INSTANCE, "admin")
    with serving([], tmp_path / "file.log", config=cfg) as (run, url):
        assert url == f"https://127.0.0.1:{port}"
        assert run.lines()[-1] == f"hsmpool: serving AWS KMS on {url} (2 workers)"
        kms = boto3.client("kms", endpoint_url=url, region_name=REGION, verify=str(cert),
                           aws_access_key_id=cred.access_key_id,
                           aws_secret_access_key=cred.secret)
        kms.list_keys()
        line = run.wait_for('"operation":"ListKeys"', timeout=10)
        assert json.loads(line)["status"] == 200
    # Options override the file: another port, one worker, the access log off.
    with serving(["--port", "0", "--workers", "1", "--access-log", "off"],
                 tmp_path / "override.log", config=cfg) as (run, url):
        assert url.startswith("https://127.0.0.1:") and not url.endswith(f":{port}")
        assert run.lines()[-1] == f"hsmpool: serving AWS KMS on {url} (1 worker)"
        summary = [ln for ln in run.lines() if "listening on" in ln]
        assert summary and "access log off, 1 worker," in summary[0]


@pytest.mark.own_database
def test_a_postgresql_node_logs_no_password_and_no_outage_at_stop(token_dir: Path,
                                                                  tmp_path: Path,
                                                                  postgres: PostgresCluster
                                                                  ) -> None:
    """The start-up summary names the store; a PostgreSQL URL's password is not in it, nor
    anywhere in what the server writes (found on the PostgreSQL pass: the summary printed
    the URL as configured, password and all); and a stop logs no store outage (each worker
    used to: its service closed twice, the second audit checkpoint on a closed store)."""
    url = postgres.create_database("summary")
    cfg = _config(tmp_path, token_dir)
    cfg.write_text(re.sub(r'^database = ".*"$', f'database = "{url}"', cfg.read_text(),
                          flags=re.M))
    with serving(["--port", "0", "--workers", "2"], tmp_path / "pg.log", config=cfg) as (run, _):
        (summary,) = [ln for ln in run.lines() if "listening on" in ln]
    assert f"store postgresql://postgres:***@127.0.0.1:{postgres.port}/summary_" in summary
    assert postgres.password not in run.text()
    assert run.proc.returncode == 0, run.text()
    assert "store is unavailable" not in run.text(), run.text()


def test_help_says_every_default(token_dir: Path) -> None:
    text = subprocess.run([str(HSMPOOL), "serve", "--help"], capture_output=True, text=True,
                          timeout=30).stdout
    section = text.split("\noptions:\n", 1)[1]
    blocks = re.split(r"\n(?=  -)", section)
    help_of = {b.split()[0].rstrip(","): " ".join(b.split()) for b in blocks if b.strip()}
    assert {"--host", "--port", "--workers", "--tls-cert", "--tls-key", "--log-level",
            "--access-log", "--seed", "--dev"} <= set(help_of)
    for opt, block in help_of.items():
        if opt != "-h":
            assert "(default" in block, block


# --- degraded start --------------------------------------------------------------------------


def test_a_missing_token_leaves_the_server_degraded_not_down(token_dir: Path,
                                                             tmp_path: Path) -> None:
    """The partition names a token label that does not exist: the server starts on the
    others and says which is missing (start-up summary, /healthz, hsmpool status)."""
    cfg = _config(tmp_path, token_dir)
    whole = cfg.read_text()
    text = whole.replace('tokens = ["t5", "t6"]', 'tokens = ["t5", "t6", "tx"]')
    text = text.replace("[instances.", '[tokens.tx]\nmodule = "softhsm"\nlabel = "absent-9"\n'
                        f'pin_file = "{token_dir / "user.pin"}"\n[instances.', 1)
    cfg.write_text(text)
    fresh = _config(tmp_path / "fresh", token_dir)
    fresh.write_text(text.replace(f"[instances.{INSTANCE}]", "[instances.svnew]"))
    # A new instance is never set up on part of its partition: its domain keys made now
    # would not be the ones the missing token may hold.
    msg = _one_line_failure(tmp_path, fresh, [], 1)
    assert "instance 'svnew': token(s) tx missing, and no token present holds" in msg
    cfg.write_text(whole)
    cred = create_credential(cfg, INSTANCE, "admin")  # sets the instance up on t5, t6
    cfg.write_text(text)
    with serving(["--port", "0", "--workers", "2"], tmp_path / "degraded.log",
                 config=cfg) as (run, url):
        summary = next(ln for ln in run.lines() if f"instance {INSTANCE}:" in ln)
        assert "2 of 3 tokens healthy" in summary
        assert "tx MISSING (token 'tx': no token with label 'absent-9'" in summary
        status, doc = _get(url, "/healthz")
        assert status == 200 and doc["status"] == "degraded"
        assert doc["tokens"] == {"t5": "healthy", "t6": "healthy", "tx": "missing"}
        assert "absent-9" in str(doc["missing_tokens"]["tx"])  # type: ignore[index]
        u = urlsplit(url)
        conn = http.client.HTTPConnection("127.0.0.1", u.port, timeout=10)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        conn.close()
        assert re.search(r'^hsmpool_token_state\{worker="\d+",token="tx",state="missing"\} 1$',
                         metrics, re.M), metrics
        kms = boto3.client("kms", endpoint_url=url, region_name=REGION,
                           aws_access_key_id=cred.access_key_id,
                           aws_secret_access_key=cred.secret)
        k = kms.create_key()["KeyMetadata"]["KeyId"]
        ct = kms.encrypt(KeyId=k, Plaintext=b"degraded")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"degraded"
    out = subprocess.run([str(HSMPOOL), "--config", str(cfg), "status", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["missing"]) == {"tx"} and report["instances"][INSTANCE] == ["t5", "t6"]
    # Strict when asked: [pool] require_all_tokens = true.
    cfg.write_text(cfg.read_text().replace("[pool]", "[pool]\nrequire_all_tokens = true", 1))
    msg = _one_line_failure(tmp_path, cfg, [], 1)
    assert "absent-9" in msg
