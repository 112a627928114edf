"""``hsmpool pkcs11``: files for the PKCS#11 module (``libhsmpool-pkcs11.so``, docs/pkcs11.md).

    hsmpool pkcs11 credential --out FILE --from-json FILE|-   # the access key, under a PIN
    hsmpool pkcs11 module-path                                # where pip install put the .so

``credential`` reads the JSON that ``hsmpool credentials create --json`` prints (``AccessKeyId``
and ``SecretAccessKey``; other members are dropped) and writes it encrypted under the PIN that
``C_Login`` will be given: the PIN comes from the environment variable named by
``--pin-env`` (default ``HSMPOOL_PKCS11_PIN``) or is asked twice on the terminal. An existing
FILE is refused unless ``--force``. The file is created 0600.

The format (version 1), read by ``native/pkcs11mod/cred.c``::

    {"format": "hsmpool-pkcs11-credential", "version": 1, "kdf": "scrypt",
     "n": 32768, "r": 8, "p": 1, "salt": B64(16 random bytes), "nonce": B64(12 random bytes),
     "ciphertext": B64(AES-256-GCM(scrypt(PIN, salt, n, r, p) -> 32 bytes, nonce,
                                   plaintext, aad) || tag)}
    aad = "hsmpool-pkcs11-credential/1/scrypt/<n>/<r>/<p>"
    plaintext = {"AccessKeyId": ..., "SecretAccessKey": ...}

Neither the PIN nor the secret is ever printed.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Final

FORMAT: Final = "hsmpool-pkcs11-credential"
SCRYPT_N: Final = 1 << 15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1


class CredentialError(ValueError):
    """The access-key JSON or the PIN is unusable (the message never holds a secret)."""


def _aad(n: int, r: int, p: int) -> bytes:
    return f"{FORMAT}/1/scrypt/{n}/{r}/{p}".encode()


def encrypt_credential(access_key: dict[str, Any], pin: str, *, n: int = SCRYPT_N,
                       r: int = SCRYPT_R, p: int = SCRYPT_P) -> dict[str, Any]:
    """The credential file's document for ``access_key`` under ``pin``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    akid, secret = access_key.get("AccessKeyId"), access_key.get("SecretAccessKey")
    if not isinstance(akid, str) or not akid or not isinstance(secret, str) or not secret:
        raise CredentialError("the JSON needs AccessKeyId and SecretAccessKey strings "
                              "(the output of `hsmpool credentials create --json`)")
    if not pin:
        raise CredentialError("the PIN must not be empty")
    if len(pin.encode()) > 256:
        raise CredentialError("the PIN must be at most 256 bytes")
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(pin.encode())
    plaintext = json.dumps({"AccessKeyId": akid, "SecretAccessKey": secret}).encode()
    ct = AESGCM(key).encrypt(nonce, plaintext, _aad(n, r, p))
    b64 = base64.b64encode
    return {"format": FORMAT, "version": 1, "kdf": "scrypt", "n": n, "r": r, "p": p,
            "salt": b64(salt).decode(), "nonce": b64(nonce).decode(),
            "ciphertext": b64(ct).decode()}


def decrypt_credential(doc: dict[str, Any], pin: str) -> dict[str, str]:
    """The access key of a credential document (for tests and checks); raises
    :class:`CredentialError` for a wrong PIN or a malformed document."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    try:
        if doc["format"] != FORMAT or doc["version"] != 1 or doc["kdf"] != "scrypt":
            raise CredentialError("not an hsmpool PKCS#11 credential (version 1)")
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
        salt, nonce, ct = (base64.b64decode(doc[k], validate=True)
                           for k in ("salt", "nonce", "ciphertext"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CredentialError("the credential document is malformed") from exc
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(pin.encode())
    try:
        out: dict[str, str] = json.loads(AESGCM(key).decrypt(nonce, ct, _aad(n, r, p)))
    except InvalidTag:
        raise CredentialError("wrong PIN") from None
    return out


def _read_pin(env: str) -> str:
    pin = os.environ.get(env)
    if pin is not None:
        return pin
    if not sys.stdin.isatty():
        raise CredentialError(f"no PIN: set {env} or run on a terminal")
    first = getpass.getpass("PIN for the PKCS#11 module: ")
    if getpass.getpass("the same PIN again: ") != first:
        raise CredentialError("the two PINs differ")
    return first


def cmd_credential(args: argparse.Namespace) -> int:
    src = args.from_json
    try:
        text = sys.stdin.read() if src == "-" else Path(src).read_text()
        access_key = json.loads(text)
        if not isinstance(access_key, dict):
            raise ValueError
    except ValueError:
        print("hsmpool: --from-json is not a JSON object", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"hsmpool: {out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    try:
        doc = encrypt_credential(access_key, _read_pin(args.pin_env))
    except CredentialError as exc:
        print(f"hsmpool: {exc}", file=sys.stderr)
        return 2
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} (access key {access_key['AccessKeyId']})", file=sys.stderr)
    return 0


def cmd_module_path(args: argparse.Namespace) -> int:
    from hsmpool import pkcs11_module_path

    print(pkcs11_module_path())
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p11 = sub.add_parser("pkcs11", help="files for the PKCS#11 module (libhsmpool-pkcs11.so)")
    psub = p11.add_subparsers(dest="pkcs11_command", required=True, metavar="COMMAND")
    cred = psub.add_parser("credential", help="write an access key encrypted under a PIN",
                           description="Write the module's credential file: the access key "
                                       "of --from-json encrypted under the login PIN.")
    cred.add_argument("--out", required=True, help="the credential file to write")
    cred.add_argument("--from-json", required=True, metavar="FILE",
                      help="the JSON of `hsmpool credentials create --json` (- for stdin)")
    cred.add_argument("--pin-env", default="HSMPOOL_PKCS11_PIN",
                      help="environment variable holding the PIN (default %(default)s; "
                           "unset: ask on the terminal)")
    cred.add_argument("--force", action="store_true", help="replace an existing --out")
    cred.set_defaults(func=cmd_credential)
    path = psub.add_parser("module-path", help="print the path of libhsmpool-pkcs11.so")
    path.set_defaults(func=cmd_module_path)
