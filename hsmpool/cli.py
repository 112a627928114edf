"""The ``hsmpool`` command line.

    hsmpool [--config FILE] status [--self-test] [--json]

``status`` opens the pool degraded (``[pool] require_all_tokens`` unset is false here): a
token that is missing or refuses login is listed as ``missing``, with the reason. It also
shows, per instance and token, the state of the instance's domain keys
(``kek hardened|unhardened|missing``, ``swkek present|missing``; see
:attr:`hsmpool.instance.Instance.domain_key_state`).

This module holds the pool's own commands; the installed ``hsmpool`` command is
``kms.cli:main``, which adds the service's commands (keys, aliases, file encryption, audit)
beside these, so that imports keep pointing down (kms -> hsmpool).

The configuration defaults to ``$HSMPOOL_CONFIG``, else ``var/hsmpool.toml``. Errors are
printed as one line (never a traceback) and exit with status 2 for bad usage or
configuration, 1 for a failed operation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from hsmpool.blob import KeySpec
from hsmpool.config import degraded_default, load_config
from hsmpool.errors import ConfigError, HsmPoolError
from hsmpool.instance import Instance, SignAlgorithm
from hsmpool.pool import Pool

DEFAULT_CONFIG = "var/hsmpool.toml"


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("HSMPOOL_CONFIG") or DEFAULT_CONFIG)


def self_test(inst: Instance) -> list[tuple[str, str, str, float]]:
    """Every operation on every member of an instance: (member, check, result, ms)."""
    rows: list[tuple[str, str, str, float]] = []
    aes = inst.generate(KeySpec.AES_256)
    ec_key = inst.generate(KeySpec.EC_P256)
    rsa_key = inst.generate(KeySpec.RSA_2048)
    mac_key = inst.generate(KeySpec.HMAC_SHA256)
    secret = inst.import_secret(b"\x11" * 16)

    def gcm(v: Instance) -> bool:
        return v.decrypt(aes, v.encrypt(aes, b"self-test", b"aad"), b"aad") == b"self-test"

    def ecdsa(v: Instance) -> bool:
        return v.verify(ec_key, b"m", v.sign(ec_key, b"m", SignAlgorithm.ECDSA_SHA256),
                        SignAlgorithm.ECDSA_SHA256)

    def rsa_pss(v: Instance) -> bool:
        return v.verify(rsa_key, b"m", v.sign(rsa_key, b"m", SignAlgorithm.RSA_PSS_SHA256),
                        SignAlgorithm.RSA_PSS_SHA256)

    def hmac(v: Instance) -> bool:
        return v.verify_hmac(mac_key, b"m", v.hmac(mac_key, b"m"))

    def unwrap_secret(v: Instance) -> bool:
        return v.export_secret(secret) == b"\x11" * 16

    def rng(v: Instance) -> bool:
        return len(v.random(32)) == 32

    checks: list[tuple[str, Callable[[Instance], bool]]] = [
        ("aes-gcm", gcm), ("ecdsa-p256", ecdsa), ("rsa-pss", rsa_pss), ("hmac-sha256", hmac),
        ("secret-unwrap", unwrap_secret), ("random", rng),
    ]
    for member in inst.members:
        view = inst.only(member.name)
        for name, check in checks:
            t0 = time.perf_counter()
            try:
                result = "ok" if check(view) else "WRONG"
            except HsmPoolError as exc:
                result = f"{type(exc).__name__}"
            rows.append((member.name, name, result, (time.perf_counter() - t0) * 1e3))
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    with Pool(degraded_default(load_config(_config_path(args)))) as pool:
        report: dict[str, object] = {
            "instances": {name: [m.name for m in inst.members]
                          for name, inst in pool.instances.items()},
            "missing": dict(pool.missing),
        }
        tests: dict[str, list[tuple[str, str, str, float]]] = {}
        if args.self_test:
            for name, inst in pool.instances.items():
                tests[name] = self_test(inst)
        stats = pool.stats()
        report["tokens"] = {n: asdict(s) for n, s in stats.items()}
        domain_keys = {name: inst.domain_key_state for name, inst in pool.instances.items()}
        report["domain_keys"] = domain_keys
        if args.json:
            report["self_test"] = tests
            print(json.dumps(report, indent=2))
        else:
            print(f"{'token':8} {'label':16} {'serial':18} {'instance':10} {'state':8} "
                  f"{'ops':>6} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7}")
            for s in stats.values():
                print(f"{s.name:8} {s.label:16} {s.serial:18} {s.instance or '-':10} "
                      f"{s.state:8} {s.ops:6d} {s.errors:6d} {s.p50_ms:7.2f} {s.p99_ms:7.2f}")
            owners = {t: i.name for i in pool.config.instances.values() for t in i.tokens}
            for name in pool.missing:
                tok = pool.config.tokens[name]
                print(f"{name:8} {tok.label or '-':16} {tok.serial or '-':18} "
                      f"{owners.get(name, '-'):10} missing")
            for name, why in pool.missing.items():
                print(f"# {name}: {why}")
            print(f"\n{'instance':10} {'token':8} domain keys")
            for name, members in domain_keys.items():
                for member, states in members.items():
                    keys = "  ".join(f"{d} {st}" for d, st in states.items())
                    print(f"{name:10} {member:8} {keys}")
            for name, rows in tests.items():
                print(f"\nself-test of instance {name!r}:")
                for member, check, result, ms in rows:
                    print(f"  {member:8} {check:14} {result:8} {ms:8.2f} ms")
        failed = [r for rows in tests.values() for r in rows if r[2] != "ok"]
        return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsmpool", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="configuration (TOML); default $HSMPOOL_CONFIG "
                        f"or {DEFAULT_CONFIG}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    return parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the pool's commands (the kms CLI adds its own beside them)."""
    status = sub.add_parser("status", help="token states and statistics")
    status.add_argument("--self-test", action="store_true",
                        help="run every operation on every token first")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


def main(argv: Sequence[str] | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    """Parse and run; ``parser`` lets a higher layer (kms.cli) add its commands."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"hsmpool: configuration error: {exc}", file=sys.stderr)
        return 2
    except HsmPoolError as exc:
        print(f"hsmpool: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
