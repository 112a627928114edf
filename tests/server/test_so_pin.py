"""A serving host needs no SO PIN: the SO PIN is used only to copy an instance's domain keys
to a token of its partition that lacks them (an administrator's step). ``hsmpool serve``
with no ``so_pin_file``/``so_pin_env`` at all serves an instance whose tokens hold its keys,
and one with a token that lacks them (that token then serves no key operations of it, and
``hsmpool status`` says so). Instance "nosopin" on tokens 5, 6 and then 7 (unique here)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.server.conftest import (
    HSMPOOL,
    create_credential,
    run_server,
    write_server_config,
)

INSTANCE = "nosopin"


def _without_so_pin(config: Path) -> None:
    lines = config.read_text().splitlines()
    config.write_text("\n".join(x for x in lines if not x.startswith("so_pin")) + "\n")


def _status(config: Path) -> dict[str, object]:
    out = subprocess.run([str(HSMPOOL), "--config", str(config), "status", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(out.stdout))


def test_serve_needs_no_so_pin(token_dir: Path, tmp_path: Path) -> None:
    # The administrator's step, with the SO PIN: the instance's keys on tokens 5 and 6.
    admin_cfg = write_server_config(tmp_path / "admin", token_dir, {INSTANCE: [5, 6]})
    assert _status(admin_cfg)["instances"] == {INSTANCE: ["t5", "t6"]}

    # The serving host's configuration names no SO PIN.
    cfg = write_server_config(tmp_path / "serve", token_dir, {INSTANCE: [5, 6]})
    _without_so_pin(cfg)
    cred = create_credential(cfg, INSTANCE, "app")
    with run_server(cfg) as srv:
        kms = srv.client(cred)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        ct = kms.encrypt(KeyId=key, Plaintext=b"no SO PIN here")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"no SO PIN here"

    # A token added to the partition cannot get the keys without an SO PIN: the server
    # still starts and serves the instance on the tokens that hold them.
    assert write_server_config(tmp_path / "serve", token_dir, {INSTANCE: [5, 6, 7]}) == cfg
    _without_so_pin(cfg)  # same file, same store
    with run_server(cfg) as srv:
        kms = srv.client(cred)
        for i in range(12):  # balanced over the members: never onto t7
            assert kms.decrypt(CiphertextBlob=kms.encrypt(
                KeyId=key, Plaintext=b"%d" % i)["CiphertextBlob"])["Plaintext"] == b"%d" % i
        assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"no SO PIN here"
        assert "domain keys are missing on token(s) t7" in srv.log_text()
    assert _status(cfg)["domain_keys"] == {INSTANCE: {
        "t5": {"kek": "hardened", "swkek": "present"},
        "t6": {"kek": "hardened", "swkek": "present"},
        "t7": {"kek": "missing", "swkek": "missing"}}}
