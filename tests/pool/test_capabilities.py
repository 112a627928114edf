"""Capability routing on a heterogeneous partition: SoftHSM2 beside the openCryptoki soft
token, which has no AES-GCM, no AES key wrap and no EC (see docs/opencryptoki.md)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmpool import (
    KeySpec,
    Pool,
    PoolUnavailableError,
    SignAlgorithm,
    UnsupportedOperationError,
)
from hsmpool import _p11 as p
from tests.conftest import ROOT, pool_toml
from tests.faults import FaultInjector


def _ock() -> dict[str, str]:
    env_file = ROOT / "var" / "opencryptoki" / "ock.env"
    if not env_file.exists():
        if os.geteuid() != 0:
            pytest.skip("the openCryptoki soft token needs root to set up")
        subprocess.run(["bash", str(ROOT / "softhsm-config" / "opencryptoki.sh")], check=True,
                       stdout=subprocess.DEVNULL)
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _config(token_dir: Path, tmp: Path, instances: dict[str, list[str]]) -> Path:
    ock = _ock()
    text = pool_toml(token_dir, {}, extra_tokens=[7])
    text += (f'[modules.ock]\npath = "{ock["OCK_MODULE"]}"\n'
             f'[tokens.ock]\nmodule = "ock"\nlabel = "{ock["OCK_LABEL"]}"\n'
             f'pin_file = "{ock["OCK_USER_PIN_FILE"]}"\n')
    for name, toks in instances.items():
        text += f"[instances.{name}]\ntokens = [" + ", ".join(f'"{t}"' for t in toks) + "]\n"
    cfg = tmp / "hetero.toml"
    cfg.write_text(text)
    return cfg


@pytest.fixture
def hetero(token_dir: Path, tmp_path: Path) -> Iterator[Pool]:
    with Pool.open(_config(token_dir, tmp_path, {"h": ["t7", "ock"]})) as pool:
        yield pool


def test_capabilities_are_probed(hetero: Pool) -> None:
    soft, ock = hetero.members["t7"], hetero.members["ock"]
    assert p.CKM_AES_GCM in soft.mechanisms and p.CKM_AES_KEY_WRAP_PAD in soft.mechanisms
    assert p.CKM_AES_GCM not in ock.mechanisms
    assert p.CKM_AES_KEY_WRAP_PAD not in ock.mechanisms
    assert p.CKM_ECDSA not in ock.mechanisms
    # Only the token that can unwrap blobs received the instance's domain keys.
    assert set(soft.domain_keys) == {"kek", "swkek"} and ock.domain_keys == {}
    inst = hetero.instance("h")
    assert inst.capable((p.CKM_AES_GCM, p.CKM_AES_KEY_WRAP_PAD)) == (soft,)
    assert inst.capable(()) == (soft, ock)


def test_operations_route_by_capability(hetero: Pool, faults: FaultInjector) -> None:
    inst = hetero.instance("h")
    key = inst.generate(KeySpec.AES_256)
    ec_key = inst.generate(KeySpec.EC_P256)
    ock_ops = hetero.stats()["ock"].ops
    errors: list[BaseException] = []

    def keyed() -> None:
        try:
            for i in range(150):
                ct = inst.encrypt(key, b"%d" % i)
                assert inst.decrypt(key, ct) == b"%d" % i
                inst.sign(ec_key, b"m", SignAlgorithm.ECDSA_SHA256)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=keyed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert hetero.stats()["ock"].ops == ock_ops, "a keyed operation went to openCryptoki"

    def unkeyed() -> None:
        for _ in range(300):
            assert len(inst.random(32)) == 32

    threads = [threading.Thread(target=unkeyed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hetero.stats()["ock"].ops > ock_ops, "openCryptoki never served random bytes"

    # With the only GCM-capable token down, GCM fails clearly; random still works.
    faults.fail("hsmpool-7", "device_error")
    with pytest.raises(PoolUnavailableError):
        for _ in range(10):
            inst.encrypt(key, b"x")
    assert len(inst.random(16)) == 16


def test_partition_without_the_mechanism(token_dir: Path, tmp_path: Path) -> None:
    with Pool.open(_config(token_dir, tmp_path, {"o": ["ock"]})) as pool:
        inst = pool.instance("o")
        with pytest.raises(UnsupportedOperationError, match="CKM_AES_KEY_WRAP_PAD|supports"):
            inst.generate(KeySpec.AES_256)
        assert len(inst.random(8)) == 8
