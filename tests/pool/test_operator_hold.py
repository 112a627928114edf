"""An operator's ejection (``Pool.hold``) keeps a healthy token out of the pool, past the
prober, until ``Pool.release``; then the prober readmits it. Real SoftHSM2 tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hsmpool import KeySpec, Pool
from tests.conftest import pool_toml


def test_a_held_token_stays_out_until_released(token_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"hold": [0, 1]}))
    with Pool.open(cfg) as pool:
        inst = pool.instance("hold")
        key = inst.generate(KeySpec.AES_256)
        assert pool.hold("t0") is True
        assert pool.hold("t0") is False  # already out
        s = pool.stats()["t0"]
        assert s.state == "ejected" and s.held and s.ejections == 1
        before = pool.stats()["t1"].ops
        held_ops = pool.stats()["t0"].ops
        for _ in range(20):
            assert inst.decrypt(key, inst.encrypt(key, b"x", b""), b"") == b"x"
        assert pool.stats()["t0"].ops == held_ops  # nothing more went to t0
        assert pool.stats()["t1"].ops >= before + 40
        time.sleep(0.5)  # ten probe intervals: the prober leaves a held token alone
        assert pool.stats()["t0"].state == "ejected"
        assert pool.release("t0") is True
        assert pool.release("t0") is False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pool.stats()["t0"].state != "healthy":
            time.sleep(0.02)
        s = pool.stats()["t0"]
        assert s.state == "healthy" and not s.held
        with pytest.raises(KeyError):
            pool.hold("nope")
        with pytest.raises(KeyError):
            pool.release("nope")
