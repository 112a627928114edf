"""What a holder of a token's user PIN and of key blobs from the store can get out of the
HSM domain key, with python-pkcs11 in a process of its own (as an attacker would).

Reads JSON from stdin: ``{"module", "label", "pin_file", "kek_label", "keys": [{"kind":
"aes"|"ec", "wrapped": hex, "value": hex}]}``; prints JSON: for each key and attack, one of
``leaked`` (the key material was read out), ``usable`` (unwrapped, material unreadable) or
``refused <exception>``. Never prints key material.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from pkcs11 import Attribute as A
from pkcs11 import KeyType, ObjectClass
from pkcs11 import Mechanism as M
from pkcs11 import MechanismFlag as F
from pkcs11.constants import DEFAULT

KWP = M.AES_KEY_WRAP_PAD
# Class, type, capabilities and template of the keys unwrapped (python-pkcs11 names every
# capability; DEFAULT drops those a private key does not have, which SoftHSM2 refuses).
_NOT_PRIVATE = {A.ENCRYPT: DEFAULT, A.WRAP: DEFAULT, A.VERIFY: DEFAULT}
KINDS: dict[str, tuple[ObjectClass, KeyType, F, dict[Any, Any]]] = {
    "aes": (ObjectClass.SECRET_KEY, KeyType.AES, F.ENCRYPT | F.DECRYPT, {}),
    "ec": (ObjectClass.PRIVATE_KEY, KeyType.EC, F.SIGN, _NOT_PRIVATE)}
ATTACKER_KEY = bytes(range(32))  # the attacker's own wrapping key


def kwp_unwrap_by_ecb(decrypt: Callable[[bytes], bytes], blob: bytes) -> bytes:
    """RFC 5649 unwrapping, with the token's AES-ECB decryption under the domain key."""
    n = len(blob) // 8 - 1
    if n == 1:
        return decrypt(blob)[8:]
    a, r = blob[:8], [blob[8 + 8 * i:16 + 8 * i] for i in range(n)]
    for j in range(5, -1, -1):
        for i in range(n, 0, -1):
            b = decrypt((int.from_bytes(a, "big") ^ (n * j + i)).to_bytes(8, "big") + r[i - 1])
            a, r[i - 1] = b[:8], b[8:]
    return b"".join(r)[:int.from_bytes(a[4:], "big")]


def attack_key(s: Any, kek: Callable[[], Any], mine: Any, kind: str, blob: bytes,
               value: bytes) -> dict[str, str]:
    """Every attack on one key blob: attack name -> outcome (module docstring)."""
    cls, ktype, caps, base = KINDS[kind]

    def unwrap(template: dict[Any, Any]) -> Any:
        return kek().unwrap_key(cls, ktype, blob, mechanism=KWP, capabilities=caps,
                                template={A.TOKEN: False, **base, **template})

    def read_value(template: dict[Any, Any]) -> bytes:
        return bytes(unwrap(template)[A.VALUE])

    def wrap_out() -> bytes:
        key = unwrap({A.SENSITIVE: True, A.EXTRACTABLE: True})
        return aes_key_unwrap_with_padding(ATTACKER_KEY, mine.wrap_key(key, mechanism=KWP))

    def decrypt_on() -> bytes:
        kek()[A.DECRYPT] = True
        k2 = kek()  # python-pkcs11 binds capabilities when it fetches an object
        return kwp_unwrap_by_ecb(lambda d: k2.decrypt(d, mechanism=M.AES_ECB), blob)

    def copy_with_decrypt() -> bytes:
        copy = kek().copy({A.DECRYPT: True, A.TOKEN: False})
        try:
            return kwp_unwrap_by_ecb(lambda d: copy.decrypt(d, mechanism=M.AES_ECB), blob)
        finally:
            copy.destroy()

    attacks: dict[str, Callable[[], bytes]] = {
        "unwrap-readable": lambda: read_value({A.SENSITIVE: False, A.EXTRACTABLE: True}),
        "unwrap-defaults": lambda: read_value({}),
        "unwrap-extractable-then-wrap-out": wrap_out,
        "decrypt-on-then-ecb": decrypt_on,
        "copy-with-decrypt-then-ecb": copy_with_decrypt,
        "unwrap-as-the-pool-does": lambda: read_value({A.SENSITIVE: True,
                                                       A.EXTRACTABLE: False}),
    }
    result: dict[str, str] = {}
    for name, run in attacks.items():
        try:
            got = run()
        except pkcs11.exceptions.AttributeSensitive:
            result[name] = "usable"
        except Exception as exc:  # noqa: BLE001 - the answer is the point
            result[name] = f"refused {type(exc).__name__}"
        else:
            # AES: the value itself; EC: the PKCS#8 DER around the private scalar.
            result[name] = "leaked" if value in got else "wrong value"
    return result


def main() -> None:
    req = json.load(sys.stdin)
    token = pkcs11.lib(req["module"]).get_token(token_label=req["label"])
    with open(req["pin_file"]) as fh:
        pin = fh.read().strip()
    with token.open(user_pin=pin, rw=True) as s:

        def kek() -> Any:
            found = list(s.get_objects({A.LABEL: req["kek_label"], A.TOKEN: True,
                                        A.CLASS: ObjectClass.SECRET_KEY}))
            assert len(found) == 1, len(found)
            return found[0]

        mine = s.create_object({A.CLASS: ObjectClass.SECRET_KEY, A.KEY_TYPE: KeyType.AES,
                                A.VALUE: ATTACKER_KEY, A.TOKEN: False, A.WRAP: True})
        out = {k["kind"]: attack_key(s, kek, mine, k["kind"], bytes.fromhex(k["wrapped"]),
                                     bytes.fromhex(k["value"])) for k in req["keys"]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
