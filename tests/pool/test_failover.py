"""Concurrency and failover on three real tokens, with faults injected through the shim."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hsmpool import KeySpec, Pool, SignAlgorithm
from hsmpool.instance import Instance
from tests.conftest import pool_toml
from tests.faults import FaultInjector


@pytest.fixture(scope="module")
def pool(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    cfg = tmp_path_factory.mktemp("fo") / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"a": [0, 1, 2]}))
    with Pool.open(cfg) as p:
        yield p


class Load:
    """N threads of mixed operations; records every failure and every ciphertext made."""

    def __init__(self, inst: Instance, threads: int) -> None:
        self.inst = inst
        self.aes = inst.generate(KeySpec.AES_256)
        self.ec = inst.generate(KeySpec.EC_P256)
        self.rsa = inst.generate(KeySpec.RSA_2048)
        self.mac = inst.generate(KeySpec.HMAC_SHA256)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.made: list[tuple[bytes, bytes]] = []
        self.ops = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(i,)) for i in range(threads)]

    def _work(self, i: int) -> None:
        inst = self.inst
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                kind = (i + n) % 6
                if kind in (0, 1):
                    pt = f"{i}:{n}".encode()
                    ct = inst.encrypt(self.aes, pt, b"ctx")
                    assert inst.decrypt(self.aes, ct, b"ctx") == pt
                    with self._lock:
                        self.made.append((pt, ct))
                elif kind == 2:
                    sig = inst.sign(self.ec, b"m%d" % n, SignAlgorithm.ECDSA_SHA256)
                    assert inst.verify(self.ec, b"m%d" % n, sig, SignAlgorithm.ECDSA_SHA256)
                elif kind == 3:
                    sig = inst.sign(self.rsa, b"r", SignAlgorithm.RSA_PKCS1_SHA256)
                    assert len(sig) == 256
                elif kind == 4:
                    assert inst.verify_hmac(self.mac, b"x", inst.hmac(self.mac, b"x"))
                else:
                    assert len(inst.random(16)) == 16
            except BaseException as exc:  # noqa: BLE001 - every failure is recorded
                with self._lock:
                    self.errors.append(exc)
        with self._lock:
            self.ops += n

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a worker hung"


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_sixteen_threads_mixed_operations(pool: Pool, faults: FaultInjector) -> None:
    before = {n: s.ops for n, s in pool.stats().items()}
    with Load(pool.instance("a"), 16) as load:
        time.sleep(4.0)
    assert load.errors == [], load.errors[:3]
    assert load.ops > 1000
    after = pool.stats()
    for name in ("t0", "t1", "t2"):
        assert after[name].ops > before[name], f"{name} served nothing"
        assert after[name].errors == 0 and after[name].state == "healthy"


@pytest.mark.parametrize("kind, every, hang_ms", [
    ("device_error", 1, 0),
    ("device_removed", 1, 0),
    ("hang", 1, 400),
    ("device_error", 3, 0),
])
def test_token_fails_mid_run(pool: Pool, faults: FaultInjector, kind: str, every: int,
                             hang_ms: int) -> None:
    inst = pool.instance("a")
    victim = "t1"
    ejections = pool.stats()[victim].ejections
    with Load(inst, 8) as load:
        time.sleep(0.7)
        faults.fail("hsmpool-1", kind, every=every, hang_ms=hang_ms)  # type: ignore[arg-type]
        assert wait_for(lambda: pool.stats()[victim].state == "ejected"), pool.stats()[victim]
        time.sleep(0.7)
        faults.heal()
        assert wait_for(lambda: pool.stats()[victim].state == "healthy"), pool.stats()[victim]
        served = pool.stats()[victim].ops
        time.sleep(0.7)
    assert load.errors == [], [repr(e) for e in load.errors[:3]]
    st = pool.stats()[victim]
    assert st.ejections >= ejections + 1
    assert st.ops > served, "the readmitted token got no more work"
    if kind != "hang":
        assert st.errors > 0
    for pt, ct in load.made:
        assert inst.decrypt(load.aes, ct, b"ctx") == pt
    assert len(load.made) > 100


def test_all_tokens_down_is_a_clear_error(pool: Pool, faults: FaultInjector) -> None:
    from hsmpool import PoolUnavailableError

    inst = pool.instance("a")
    key = inst.generate(KeySpec.AES_256)
    for i in range(3):
        faults.fail(f"hsmpool-{i}", "device_error")
    t0 = time.monotonic()
    with pytest.raises(PoolUnavailableError):
        for _ in range(20):
            inst.encrypt(key, b"x")
    assert time.monotonic() - t0 < 15
    faults.heal()
    assert wait_for(lambda: all(s.state == "healthy" for s in pool.stats().values()))
    assert inst.decrypt(key, inst.encrypt(key, b"back")) == b"back"


def test_slow_key_generation_does_not_eject(pool: Pool, faults: FaultInjector) -> None:
    """Key generation is slow by nature (RSA-4096 takes seconds on SoftHSM2): a token that
    is slow only there stays in. Simulated: every call to the token hangs 200 ms (beyond
    slow_call_ms = 150) while only key generation runs on it."""
    inst = pool.instance("a").only("t2")
    before = pool.stats()["t2"].ejections
    faults.fail("hsmpool-2", "hang", hang_ms=200)
    for _ in range(4):
        inst.generate(KeySpec.AES_256)
    faults.heal()
    st = pool.stats()["t2"]
    assert st.ejections == before and st.state == "healthy"
