"""Regression: failing calls on bytearray/memoryview inputs, whose exceptions end up in
reference cycles, must not crash the interpreter when the garbage collector runs.

Before buffers were released at the end of each call, CPython 3.11 segfaulted here (the
collector cleared an exported memoryview). Run in a subprocess: a crash must fail the test,
not kill the test run.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import gc, os
from hsmpool.gm import SM4GCM, SM4CBC, SM2PrivateKey
gcm = SM4GCM(os.urandom(16)); cbc = SM4CBC(os.urandom(16))
key = SM2PrivateKey.generate(); pub = key.public_key()
calls = [lambda b: gcm.decrypt(b"\0" * 12, b, b""), lambda b: gcm.encrypt(b"\0" * 12, b, 5),
         lambda b: cbc.decrypt(b"\0" * 16, b), lambda b: pub.verify(b"\0" * 70, b),
         lambda b: key.decrypt(b)]
kept = []
for _ in range(100):
    for call in calls:
        raw = bytearray(64)
        for arg in (raw, memoryview(raw)[:48]):
            try:
                try:
                    call(arg)
                except Exception:
                    raise ValueError("wrapped")
            except ValueError as exc:
                exc.me = exc  # a cycle: only the garbage collector frees it
                kept.append(exc)
            kept.clear()
    gc.collect()
raw = bytearray(64)
raw.extend(b"x")  # every export was released: the bytearray can be resized again
print("survived")
"""


def test_failed_calls_in_reference_cycles_do_not_crash() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "survived"
    assert "BufferError" not in proc.stderr
