"""Scenarios for tests/test_shim.py, each run in its own process.

A PKCS#11 module is initialised once per process, so every scenario that loads SoftHSM2 runs
here, in a fresh interpreter:

    python3 tests/_shim_scenarios.py SCENARIO '{"json": "arguments"}'

The result is printed as one JSON object on the last stdout line. The user PIN is read from
the file named by the "pin_file" argument and never printed. SOFTHSM2_CONF comes from the
environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters

from tests.faults import FaultInjector

Args = dict[str, Any]


def _pin(args: Args) -> str:
    with open(args["pin_file"], encoding="utf-8") as f:
        return f.read().strip()


def _outcome(fn: Callable[[], object]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        fn()
        result = "ok"
    except pkcs11.PKCS11Error as exc:
        result = type(exc).__name__
    return {"result": result, "seconds": time.monotonic() - start}


def _gcm_roundtrip(key: Any, data: bytes) -> bool:
    iv = os.urandom(12)
    param = pkcs11.GCMParams(iv)
    ct = key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=param)
    pt = key.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=param)
    return bool(pt == data and ct != data)


def _cbc_roundtrip(key: Any, data: bytes) -> bool:
    iv = os.urandom(16)
    ct = key.encrypt(data, mechanism=Mechanism.AES_CBC_PAD, mechanism_param=iv)
    pt = key.decrypt(ct, mechanism=Mechanism.AES_CBC_PAD, mechanism_param=iv)
    return bool(pt == data and ct != data)


def hammer(args: Args) -> Args:
    """N threads, one session each, AES-GCM round trips and ECDSA sign/verify.

    With "faults_file", the fault path runs too: a thread keeps rewriting the rules (a no-op
    hang on the hammered token, errors on another one) while the workers run.
    """
    injector = None
    if args.get("faults_file"):
        injector = FaultInjector(args["faults_file"])
        os.environ.update(injector.env())
    lib = pkcs11.lib(args["module"])
    token = lib.get_token(token_label=args["label"])
    main = token.open(user_pin=_pin(args))  # login is per application: other sessions share it
    deadline = time.monotonic() + float(args["seconds"])
    counts: list[dict[str, int]] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(int(args["threads"]))

    def worker() -> None:
        mine = {"gcm": 0, "sign": 0, "bad": 0}
        try:
            with token.open() as s:
                key = s.generate_key(KeyType.AES, 256, store=False)
                params = s.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True,
                )
                pair: tuple[Any, Any] = params.generate_keypair(store=False)
                pub, priv = pair
                start.wait()
                while time.monotonic() < deadline:
                    data = os.urandom(32)
                    if _gcm_roundtrip(key, data):
                        mine["gcm"] += 1
                    else:
                        mine["bad"] += 1
                    digest = hashlib.sha256(data).digest()
                    sig = priv.sign(digest, mechanism=Mechanism.ECDSA)
                    if pub.verify(digest, sig, mechanism=Mechanism.ECDSA):
                        mine["sign"] += 1
                    else:
                        mine["bad"] += 1
        except Exception as exc:  # reported to the test, which fails on any
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
            start.abort()
        with lock:
            counts.append(mine)

    rewrites = 0

    def toggler() -> None:
        nonlocal rewrites
        assert injector is not None
        while time.monotonic() < deadline:
            injector.fail(args["label"], "hang", every=2, hang_ms=0)
            injector.fail(args["other"], "device_error")
            time.sleep(0.005)
            injector.heal()
            time.sleep(0.005)
            rewrites += 3

    threads = [threading.Thread(target=worker) for _ in range(int(args["threads"]))]
    if injector is not None:
        threads.append(threading.Thread(target=toggler))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    main.close()
    return {
        "threads": len(counts),
        "gcm": sum(c["gcm"] for c in counts),
        "sign": sum(c["sign"] for c in counts),
        "bad": sum(c["bad"] for c in counts),
        "failures": failures,
        "rewrites": rewrites,
    }


def faults(args: Args) -> Args:
    """Faults on token A (every=1, then every=N), token B keeps working, then heal."""
    injector = FaultInjector(args["faults_file"])
    os.environ.update(injector.env())  # before the module is initialised
    lib = pkcs11.lib(args["module"])
    pin = _pin(args)
    tok_a = lib.get_token(token_label=args["a"])
    tok_b = lib.get_token(token_label=args["b"])
    sa = tok_a.open(user_pin=pin)
    sb = tok_b.open(user_pin=pin)
    key_a = sa.generate_key(KeyType.AES, 128, store=False)
    key_b = sb.generate_key(KeyType.AES, 128, store=False)
    kind, every, hang_ms = args["kind"], int(args["every"]), int(args.get("hang_ms", 0))
    out: Args = {}

    def calls(session: Any, n: int) -> list[dict[str, Any]]:
        return [_outcome(lambda: session.generate_random(128)) for _ in range(n)]

    out["before_a"] = calls(sa, 3)
    injector.fail(args["a"], kind, every=1, hang_ms=hang_ms)
    out["every1_a"] = calls(sa, 3)
    out["every1_b"] = calls(sb, 3)
    out["every1_b_gcm"] = _gcm_roundtrip(key_b, b"b" * 32)
    out["every1_open_a"] = _outcome(lambda: tok_a.open().close())
    injector.fail(args["a"], kind, every=every, hang_ms=hang_ms)
    out["everyN_a"] = calls(sa, 2 * every)
    out["everyN_b"] = calls(sb, 3)
    if args.get("heal_all"):
        injector.heal()
    else:
        injector.heal(args["a"])
    out["healed_a"] = calls(sa, 3)
    out["healed_a_gcm"] = _gcm_roundtrip(key_a, b"a" * 32)
    out["healed_open_a"] = _outcome(lambda: tok_a.open().close())
    sa.close()
    sb.close()
    return out


def two_modules(args: Args) -> Args:
    """Two shim copies (two real modules) in one process, with independent state."""
    injector = FaultInjector(args["faults_file"])
    os.environ.update(injector.env())
    lib1 = pkcs11.lib(args["module1"])  # initialised with faults enabled
    del os.environ["HSMPOOL_P11_FAULTS"]
    lib2 = pkcs11.lib(args["module2"])  # initialised without
    pin = _pin(args)
    s1 = lib1.get_token(token_label=args["label"]).open(user_pin=pin)
    s2 = lib2.get_token(token_label=args["label"]).open(user_pin=pin)
    injector.fail(args["label"], "device_removed")
    out = {
        "distinct": lib1 is not lib2,
        "lib1": _outcome(lambda: s1.generate_random(64))["result"],
        "lib2": _outcome(lambda: s2.generate_random(64))["result"],
        "lib2_gcm": _gcm_roundtrip(s2.generate_key(KeyType.AES, 128, store=False), b"x" * 32),
    }
    injector.heal()
    out["lib1_healed"] = _outcome(lambda: s1.generate_random(64))["result"]
    s1.close()
    s2.close()
    return out


def mixed(args: Args) -> Args:
    """SoftHSM2 and openCryptoki, each behind its own shim copy, in one process."""
    injector = FaultInjector(args["faults_file"])
    os.environ.update(injector.env())
    results: Args = {}
    sessions = {}
    for name in ("softhsm", "ock"):
        spec = args[name]
        lib = pkcs11.lib(spec["module"])
        with open(spec["pin_file"], encoding="utf-8") as f:
            pin = f.read().strip()
        sessions[name] = lib.get_token(token_label=spec["label"]).open(user_pin=pin)
        # openCryptoki 3.8 soft token has no AES-GCM: CBC-PAD on both.
        results[f"{name}_aes"] = _cbc_roundtrip(
            sessions[name].generate_key(KeyType.AES, 256, store=False), b"m" * 33
        )

    def random_on(session: Any) -> str:
        return str(_outcome(lambda: session.generate_random(64))["result"])

    injector.fail(args["ock"]["label"], "device_error")
    for name, session in sessions.items():
        results[f"{name}_faulted"] = random_on(session)
    injector.heal()
    for name, session in sessions.items():
        results[f"{name}_healed"] = random_on(session)
        session.close()
    return results


def load(args: Args) -> Args:
    """Load a module with python-pkcs11 and list its token labels, or report the error."""
    try:
        lib = pkcs11.lib(args["module"])
    except pkcs11.PKCS11Error as exc:
        return {"error": type(exc).__name__}
    return {"labels": sorted(t.label for t in lib.get_tokens())}


def bench(args: Args) -> Args:
    """AES-GCM encryptions of 32 bytes per second on one session, single thread."""
    if args.get("faults_file"):
        injector = FaultInjector(args["faults_file"])
        os.environ.update(injector.env())
        if args.get("other_rule"):  # a rule for another token: the rule lookup path runs
            injector.fail(args["other_rule"], "hang", hang_ms=1)
    lib = pkcs11.lib(args["module"])
    with lib.get_token(token_label=args["label"]).open(user_pin=_pin(args)) as s:
        key: Any = s.generate_key(KeyType.AES, 256, store=False)
        data = b"\0" * 32
        param = pkcs11.GCMParams(b"\1" * 12)
        n = 0
        end = time.monotonic() + float(args["seconds"])
        start = time.monotonic()
        while time.monotonic() < end:
            for _ in range(200):
                key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=param)
            n += 200
        return {"per_second": n / (time.monotonic() - start)}


SCENARIOS: dict[str, Callable[[Args], Args]] = {
    "hammer": hammer,
    "faults": faults,
    "two_modules": two_modules,
    "mixed": mixed,
    "load": load,
    "bench": bench,
}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]))
    sys.stdout.write(json.dumps(result) + "\n")
