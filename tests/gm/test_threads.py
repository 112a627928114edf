"""Key objects are shared between threads (cffi drops the GIL around every native call)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import hsmpool.gm as gm


def test_shared_objects_across_threads() -> None:
    key = os.urandom(16)
    aead, ctr = gm.SM4GCM(key), gm.SM4CTR(key)
    priv = gm.SM2PrivateKey.generate()
    pub = priv.public_key()
    jobs = [(os.urandom(12), os.urandom(i * 97 % 5000)) for i in range(64)]
    expected = [(aead.encrypt(n, d, n), ctr.encrypt(n + n[:4], d), gm.sm3(d)) for n, d in jobs]

    def work(i: int) -> bool:
        n, d = jobs[i]
        got = (aead.encrypt(n, d, n), ctr.encrypt(n + n[:4], d), gm.sm3(d))
        assert aead.decrypt(n, got[0], n) == d
        sig = priv.sign(d, format="raw")
        pub.verify(sig, d, format="raw")
        if d:
            assert priv.decrypt(pub.encrypt(d[:100])) == d[:100]
        return got == expected[i]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, range(len(jobs))))
