"""The HSM domain key (``kek``) keeps HSM keys in the token even against a holder of the
user PIN and of key blobs from the store: real SoftHSM2 tokens, attacked with python-pkcs11
from a process of its own (tests/pool/_kek_attack.py), as an attacker would.

Instance "hardening" on tokens 4 and 5 (token 5 gets its copy of the key from token 4 by the
SO-assisted transport), "legacy-kek" on tokens 2 and 3 (names unique to this file)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsmpool import KeySpec, Pool
from hsmpool import kek as _kek
from hsmpool.blob import KeyBlob
from hsmpool.instance import Instance
from tests.conftest import ROOT, SOFTHSM, pool_toml

INSTANCE = "hardening"
ATTACK = Path(__file__).with_name("_kek_attack.py")
AES_MATERIAL = bytes(range(100, 132))
EC_KEY = ec.derive_private_key(0x1D2C3B4A5968778695A4B3C2D1E0F00112233445566778899AABBCCDDEEFF00,
                               ec.SECP256R1())


@pytest.fixture(scope="module")
def config(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hardening") / "pool.toml"
    path.write_text(pool_toml(token_dir, {INSTANCE: [4, 5]}))
    return path


@pytest.fixture(scope="module")
def pool(config: Path) -> Iterator[Pool]:
    with Pool.open(config) as p:
        yield p


@pytest.fixture(scope="module")
def blobs(pool: Pool) -> dict[str, KeyBlob]:
    inst = pool.instance(INSTANCE)
    der = EC_KEY.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return {"aes": inst.import_key(KeySpec.AES_256, AES_MATERIAL),
            "ec": inst.import_key(KeySpec.EC_P256, der)}


def attack(token_dir: Path, label: str, instance: str, blobs: dict[str, KeyBlob]
           ) -> dict[str, dict[str, str]]:
    values = {"aes": AES_MATERIAL,
              "ec": EC_KEY.private_numbers().private_value.to_bytes(32, "big")}
    req = {"module": SOFTHSM, "label": label, "pin_file": str(token_dir / "user.pin"),
           "kek_label": f"hsmpool:kek:{instance}",
           "keys": [{"kind": kind, "wrapped": kb.wrapped.hex(), "value": values[kind].hex()}
                    for kind, kb in blobs.items()]}
    env = {**os.environ, "SOFTHSM2_CONF": str(token_dir / "softhsm2.conf")}
    env.pop("HSMPOOL_P11_FAULTS", None)
    proc = subprocess.run([sys.executable, str(ATTACK)], input=json.dumps(req), env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout))


@pytest.mark.parametrize("token", [4, 5], ids=["generated", "copied"])
def test_the_user_pin_and_a_blob_do_not_yield_hsm_key_material(
        pool: Pool, blobs: dict[str, KeyBlob], token_dir: Path, token: int) -> None:
    results = attack(token_dir, f"hsmpool-{token}", INSTANCE, blobs)
    leaks = {f"{kind}: {name}" for kind, outcomes in results.items()
             for name, o in outcomes.items() if o == "leaked"}
    assert not leaks, f"key material read out on hsmpool-{token}: {sorted(leaks)}"
    for kind, outcomes in results.items():
        # The attacker can still have the token *use* the key (it is the token's job)...
        assert outcomes["unwrap-as-the-pool-does"] == "usable", outcomes
        # ...but everything else is refused by the token itself.
        for name, outcome in outcomes.items():
            if name != "unwrap-as-the-pool-does":
                assert outcome.startswith("refused"), (kind, name, outcome)
    # And the pool still serves the keys, on both members.
    inst = pool.instance(INSTANCE)
    for member in ("t4", "t5"):
        view = inst.only(member)
        assert view.decrypt(blobs["aes"], view.encrypt(blobs["aes"], b"x", b"a"), b"a") == b"x"


def test_the_domain_keys_are_made_hardened(pool: Pool) -> None:
    inst = pool.instance(INSTANCE)
    assert inst.domain_key_state == {m: {"kek": "hardened", "swkek": "present"}
                                     for m in ("t4", "t5")}
    for m in inst.members:
        assert _kek.kek_is_hardened(m, m.domain_keys["kek"])
        assert not _kek.kek_is_hardened(m, m.domain_keys["swkek"])  # by design


def test_a_domain_key_made_before_hardening_is_reported(
        token_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"legacy-kek": [2, 3]}))
    with monkeypatch.context() as m:
        m.setattr(_kek, "HARDENED", frozenset())  # what earlier versions made
        with Pool.open(cfg):
            pass
    caplog.clear()
    with caplog.at_level(logging.WARNING, "hsmpool.instance"), Pool.open(cfg) as pool:
        inst: Instance = pool.instance("legacy-kek")
        assert {s["kek"] for s in inst.domain_key_state.values()} == {"unhardened"}
    assert any("not hardened" in r.getMessage() and "t2, t3" in r.getMessage()
               for r in caplog.records), caplog.text
    # hsmpool status says so too (and a plain-text line per token).
    hsmpool = str(ROOT / ".venv" / "bin" / "hsmpool")
    out = subprocess.run([hsmpool, "--config", str(cfg), "status", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    report: dict[str, Any] = json.loads(out.stdout)
    assert report["domain_keys"]["legacy-kek"] == {
        t: {"kek": "unhardened", "swkek": "present"} for t in ("t2", "t3")}
    assert "not hardened" in out.stderr
