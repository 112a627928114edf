"""The whole PKCS#11 module built with AddressSanitizer and UBSan, driven by python-pkcs11
(in a child process with libasan preloaded) against the real server: login (and a wrong
PIN), object search and attributes, ECDSA, RSA PKCS#1 and PSS, multi-part signing, OAEP,
AES-GCM with a failing tag, random bytes, and four threads at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pkcs11_module.conftest import LISTED, PIN, P11Env

ROOT = Path(__file__).resolve().parents[2]
MOD = ROOT / "native" / "pkcs11mod"

SCENARIO = r"""
import sys, threading, pkcs11
from pkcs11 import Mechanism, ObjectClass, MGF
from pkcs11.mechanisms import GCMParams
lib = pkcs11.lib(sys.argv[1])
tok = lib.get_token(token_label=sys.argv[2])
try:
    tok.open(user_pin="wrong").close()
    raise SystemExit("a wrong PIN logged in")
except pkcs11.exceptions.PinIncorrect:
    pass
login = tok.open(user_pin=sys.argv[3])
def work(k):
    with tok.open() as s:
        for o in s.get_objects():
            o[pkcs11.Attribute.LABEL]
        ec = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
        rsa = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa-sign")
        enc = s.get_key(object_class=ObjectClass.PUBLIC_KEY, label="rsa-enc")
        dec = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa-enc")
        aes = s.get_key(object_class=ObjectClass.SECRET_KEY, label="aes")
        for i in range(5):
            ec.sign(b"m" * 100, mechanism=Mechanism.ECDSA_SHA256)
            ec.sign(iter([b"a" * 5000, b"b" * 7]), mechanism=Mechanism.ECDSA_SHA256)
            rsa.sign(b"m", mechanism=Mechanism.SHA256_RSA_PKCS)
            rsa.sign(b"m", mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                     mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32))
            p = (Mechanism.SHA256, MGF.SHA256, None)
            ct = enc.encrypt(b"x", mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=p)
            assert dec.decrypt(ct, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=p) == b"x"
            g = GCMParams(b"", b"aad")
            ct = aes.encrypt(b"y" * 300, mechanism=Mechanism.AES_GCM, mechanism_param=g)
            assert aes.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=g) == b"y" * 300
            try:
                aes.decrypt(ct[:-1] + b"!", mechanism=Mechanism.AES_GCM, mechanism_param=g)
                raise SystemExit("a bad tag decrypted")
            except pkcs11.exceptions.EncryptedDataInvalid:
                pass
            s.generate_random(8 * 2000)
threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
login.close()
print("SCENARIO OK")
"""


def test_module_under_asan_and_ubsan(p11: P11Env, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("gcc has no AddressSanitizer runtime")
    so = tmp_path / "libhsmpool-pkcs11-asan.so"
    subprocess.run(["gcc", "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-fPIC", "-shared", "-std=gnu11", "-Wall",
                    "-Wextra", "-Werror", f"-I{MOD}", "-I/usr/include/p11-kit-1", "-o",
                    str(so), *sorted(str(p) for p in MOD.glob("*.c")), "-lssl", "-lcrypto",
                    "-lpthread"], check=True, capture_output=True, text=True, timeout=300)
    env = {**p11.env(), "LD_PRELOAD": libasan, "HSMPOOL_PKCS11_QUIET": "1",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    out = subprocess.run([sys.executable, "-c", SCENARIO, str(so), LISTED, PIN], env=env,
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "SCENARIO OK" in out.stdout, text[-4000:]
    assert "runtime error" not in text and "AddressSanitizer" not in text, text[-4000:]
