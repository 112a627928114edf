"""Security-officer steps of a domain-key copy, run in a short-lived process.

``python -m hsmpool._so_tool MODULE SERIAL import LABEL MODULUS_HEX EXPONENT_HEX``
    imports an RSA public key as a trusted, wrapping token object;
``python -m hsmpool._so_tool MODULE SERIAL delete LABEL``
    deletes it again.

The SO PIN is read from standard input; nothing secret is printed. A separate process,
because PKCS#11 forbids an SO login while the same application has a user logged in.
"""

from __future__ import annotations

import sys

from hsmpool import _p11 as p
from hsmpool._p11 import Module, P11Error, Template


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: _so_tool MODULE SERIAL import|delete LABEL [MODULUS EXPONENT]",
              file=sys.stderr)
        return 2
    module_path, serial, action, label = argv[:4]
    pin = sys.stdin.buffer.read().strip()
    mod = Module(module_path)
    try:
        slot = next((s for s in mod.slots() if mod.token_info(s).serial == serial), None)
        if slot is None:
            print(f"no token with serial {serial}", file=sys.stderr)
            return 1
        session = mod.open_session(slot)
        mod.login(session, pin, p.CKU_SO)
        try:
            if action == "import":
                modulus, exponent = bytes.fromhex(argv[4]), bytes.fromhex(argv[5])
                mod.create_object(session, Template({
                    p.CKA_CLASS: p.CKO_PUBLIC_KEY,
                    p.CKA_KEY_TYPE: p.CKK_RSA,
                    p.CKA_TOKEN: True,
                    p.CKA_PRIVATE: False,
                    p.CKA_LABEL: label.encode(),
                    p.CKA_MODULUS: modulus,
                    p.CKA_PUBLIC_EXPONENT: exponent,
                    p.CKA_WRAP: True,
                    p.CKA_ENCRYPT: False,
                    p.CKA_VERIFY: False,
                    p.CKA_TRUSTED: True,
                }))
            elif action == "delete":
                tpl = Template({p.CKA_CLASS: p.CKO_PUBLIC_KEY, p.CKA_LABEL: label.encode()})
                for h in mod.find(session, tpl, 16):
                    mod.destroy_object(session, h)
            else:
                print(f"unknown action {action!r}", file=sys.stderr)
                return 2
        finally:
            mod.logout(session)
            mod.close_session(session)
    except P11Error as exc:
        print(f"PKCS#11 error: {exc.name} in {exc.function}", file=sys.stderr)
        return 1
    finally:
        mod.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
