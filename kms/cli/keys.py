"""``hsmpool key`` commands beyond the lifecycle: rotation settings, tags, the key policy,
signatures, public keys, data keys and key-material import (:mod:`kms.cli` registers them).

    hsmpool key enable-rotation KEY [--days 365] | disable-rotation KEY | rotation-status KEY
    hsmpool key tag KEY K=V ... | untag KEY K ... | tags KEY
    hsmpool key policy KEY
    hsmpool key sign KEY --algorithm A (--message-file F | --digest-file F) [--out F]
    hsmpool key verify KEY --algorithm A (--message-file F | --digest-file F)
                       (--signature-file F | --signature BASE64)
    hsmpool key public-key KEY [--out F]
    hsmpool key generate-data-key KEY [--spec AES_256] [--context K=V ...] [--plaintext]
    hsmpool key get-parameters-for-import KEY --public-key-out F --token-out F
                       [--wrapping-algorithm RSAES_OAEP_SHA_256] [--wrapping-key-spec RSA_2048]
    hsmpool key import-key-material KEY --token-file F --material-file F [--valid-to T]

Each calls the :class:`~kms.service.KmsClient` method of the same name. Binary results are
base64 in the output, or raw bytes in the ``--out`` file. A data key's plaintext is printed
only with ``--plaintext`` (with a warning on stderr: it is a secret).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from kms.cli import (
    context_arg,
    context_pairs,
    emit,
    iso_time,
    open_client,
    print_table,
    show_key,
)

if TYPE_CHECKING:
    from kms.model import KeyRecord

Leaf = Callable[[Any, str, str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]

MAX_INPUT = 1 << 20  # bytes read from a message, digest, signature, token or material file
_B64 = base64.b64encode



def _read(path: str, what: str) -> bytes:
    """A whole input file (``-``: stdin), at most :data:`MAX_INPUT` bytes."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_INPUT + 1)
    else:
        with open(path, "rb") as fh:
            data = fh.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        _usage(f"{what} {path!r} is larger than {MAX_INPUT} bytes")
    return data


def _refuse_existing(force: bool, *paths: str | None) -> None:
    """Exit 2 before any work if an output file exists and ``--force`` was not given."""
    for path in paths:
        if path is not None and not force and os.path.lexists(path):
            _usage(f"output {path!r} exists (--force overwrites it)")


def _write(path: str, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path``; without ``force``, never over a file that appeared
    meanwhile."""
    try:
        with open(path, "wb" if force else "xb") as fh:
            fh.write(data)
    except FileExistsError:
        _usage(f"output {path!r} exists (--force overwrites it)")


def _usage(message: str) -> NoReturn:
    print(f"hsmpool: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --- rotation settings --------------------------------------------------------------------


def _rotation_json(rec: KeyRecord) -> dict[str, Any]:
    return {"KeyId": rec.key_id, "KeyRotationEnabled": rec.rotation_enabled,
            "RotationPeriodInDays": rec.rotation_period_days if rec.rotation_enabled else None,
            "NextRotationDate": iso_time(rec.next_rotation)}


def cmd_enable_rotation(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        return emit(args, _rotation_json(client.enable_key_rotation(args.key, args.days)))


def cmd_disable_rotation(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        return emit(args, _rotation_json(client.disable_key_rotation(args.key)))


def cmd_rotation_status(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        return emit(args, _rotation_json(client.get_key_rotation_status(args.key)))


# --- tags and policy ----------------------------------------------------------------------


def _show_tags(args: argparse.Namespace, key_id: str, tags: tuple[tuple[str, str], ...]
               ) -> int:
    if args.json:
        print(json.dumps({"KeyId": key_id,
                          "Tags": [{"TagKey": k, "TagValue": v} for k, v in tags]}, indent=2))
    else:
        print_table(("TagKey", "TagValue"), tags)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    tags = context_pairs(args.tags) or {}
    with open_client(args) as client:
        rec = client.tag_resource(args.key, tags)
    return _show_tags(args, rec.key_id, rec.tags)


def cmd_untag(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rec = client.untag_resource(args.key, list(args.tag_keys))
    return _show_tags(args, rec.key_id, rec.tags)


def cmd_tags(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        key_id = client.describe_key(args.key).key_id
        return _show_tags(args, key_id, client.list_resource_tags(args.key))


def cmd_policy(args: argparse.Namespace) -> int:
    from kms.api.aws_kms import get_key_policy

    with open_client(args) as client:
        out = get_key_policy(client, {"KeyId": args.key})  # the policy GetKeyPolicy answers
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(json.dumps(json.loads(out["Policy"]), indent=2))
    return 0


# --- signatures and public keys -----------------------------------------------------------


def _signed_input(args: argparse.Namespace) -> tuple[bytes, str]:
    """(message or digest, MessageType)."""
    if args.digest_file is not None:
        return _read(args.digest_file, "digest file"), "DIGEST"
    return _read(args.message_file, "message file"), "RAW"


def cmd_sign(args: argparse.Namespace) -> int:
    data, kind = _signed_input(args)
    _refuse_existing(args.force, args.out)
    with open_client(args) as client:
        sig, arn = client.sign(args.key, data, args.algorithm, kind)
    if args.out is not None:
        _write(args.out, sig, args.force)
    doc = {"KeyId": arn, "SigningAlgorithm": args.algorithm, "MessageType": kind,
           "Signature": _B64(sig).decode()}
    return emit(args, doc)


def cmd_verify(args: argparse.Namespace) -> int:
    data, kind = _signed_input(args)
    if args.signature_file is not None:
        sig = _read(args.signature_file, "signature file")
    else:
        try:
            sig = base64.b64decode(args.signature, validate=True)
        except ValueError:
            _usage("--signature is not base64 (or give --signature-file)")
    with open_client(args) as client:
        arn = client.verify(args.key, data, sig, args.algorithm, kind)  # or raises
    return emit(args, {"KeyId": arn, "SignatureValid": True,
                        "SigningAlgorithm": args.algorithm, "MessageType": kind})


def cmd_public_key(args: argparse.Namespace) -> int:
    _refuse_existing(args.force, args.out)
    with open_client(args) as client:
        info = client.get_public_key(args.key)
    if args.out is not None:
        _write(args.out, info.public_key, args.force)
    doc: dict[str, Any] = {"KeyId": info.key_id, "KeySpec": info.key_spec,
                           "KeyUsage": info.key_usage,
                           "PublicKey": _B64(info.public_key).decode()}
    if info.signing_algorithms:
        doc["SigningAlgorithms"] = list(info.signing_algorithms)
    if info.encryption_algorithms:
        doc["EncryptionAlgorithms"] = list(info.encryption_algorithms)
    return emit(args, doc)


# --- data keys ----------------------------------------------------------------------------


def cmd_generate_data_key(args: argparse.Namespace) -> int:
    context = context_pairs(args.context)
    with open_client(args) as client:
        if args.plaintext:
            dk = client.generate_data_key(args.key, args.spec, encryption_context=context)
        else:
            dk = client.generate_data_key_without_plaintext(args.key, args.spec,
                                                            encryption_context=context)
    doc = {"KeyId": dk.key_id, "CiphertextBlob": _B64(dk.ciphertext_blob).decode()}
    if dk.plaintext is not None:
        print("hsmpool: warning: the output holds the plaintext data key, a secret: keep "
              "it out of logs, shells' history and files", file=sys.stderr)
        doc["Plaintext"] = _B64(dk.plaintext).decode()
    return emit(args, doc)


# --- importing key material ---------------------------------------------------------------


def cmd_get_parameters_for_import(args: argparse.Namespace) -> int:
    _refuse_existing(args.force, args.public_key_out, args.token_out)
    with open_client(args) as client:
        p = client.get_parameters_for_import(args.key, args.wrapping_algorithm,
                                             args.wrapping_key_spec)
    _write(args.public_key_out, p.public_key, args.force)
    _write(args.token_out, p.import_token, args.force)
    return emit(args, {"KeyId": p.key_id, "WrappingAlgorithm": args.wrapping_algorithm,
                        "WrappingKeySpec": args.wrapping_key_spec,
                        "PublicKeyFile": args.public_key_out, "ImportTokenFile": args.token_out,
                        "ParametersValidTo": iso_time(p.parameters_valid_to)})


def _valid_to_arg(text: str) -> float:
    t = text.strip()
    try:
        if t.replace(".", "", 1).isdigit():
            return float(t)
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601 such as 2027-06-30T00:00:00Z, or epoch "
            "seconds)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def cmd_import_key_material(args: argparse.Namespace) -> int:
    from kms.keys.importing import DOES_NOT_EXPIRE, EXPIRES

    token = _read(args.token_file, "import token file")
    material = _read(args.material_file, "key material file")
    model = args.expiration_model or (EXPIRES if args.valid_to is not None else DOES_NOT_EXPIRE)
    with open_client(args) as client:
        rec = client.import_key_material(args.key, token, material, args.valid_to, model)
        return show_key(args, client, rec)


# --- registration -------------------------------------------------------------------------


def add_key_commands(ks: Any, leaf: Leaf) -> None:
    """Register these commands under ``hsmpool key`` (``leaf`` adds one with the common
    ``--instance`` and ``--json`` options)."""
    from kms.keys.importing import DOES_NOT_EXPIRE, EXPIRES, WRAPPING_ALGORITHMS, WRAPPING_KEY_SPECS

    def keyed(name: str, help_: str, func: Callable[[argparse.Namespace], int]
              ) -> argparse.ArgumentParser:
        p = leaf(ks, name, help_, func)
        p.add_argument("key", metavar="KEY", help="key id, key ARN, alias name or alias ARN")
        return p

    p = keyed("enable-rotation", "rotate a symmetric key automatically", cmd_enable_rotation)
    p.add_argument("--days", type=int, default=365,
                   help="rotation period, 7..2560 days (default %(default)s)")
    keyed("disable-rotation", "stop automatic rotation", cmd_disable_rotation)
    keyed("rotation-status", "show automatic rotation settings", cmd_rotation_status)

    p = keyed("tag", "add or replace tags", cmd_tag)
    p.add_argument("tags", nargs="+", type=context_arg, metavar="KEY=VALUE",
                   help="a tag; repeatable")
    p = keyed("untag", "remove tags", cmd_untag)
    p.add_argument("tag_keys", nargs="+", metavar="TAG_KEY", help="a tag key; repeatable")
    keyed("tags", "list a key's tags", cmd_tags)
    keyed("policy", "print the key policy (JSON)", cmd_policy)

    p = keyed("sign", "sign a message or digest (an asymmetric SIGN_VERIFY key)", cmd_sign)
    _signed_options(p)
    _out_options(p)
    p = keyed("verify", "verify a signature (exit status 1 if it is not valid)", cmd_verify)
    _signed_options(p)
    sig = p.add_mutually_exclusive_group(required=True)
    sig.add_argument("--signature-file", metavar="F", help="the raw signature")
    sig.add_argument("--signature", metavar="BASE64", help="the signature, base64")
    p = keyed("public-key", "the public key (DER SubjectPublicKeyInfo)", cmd_public_key)
    _out_options(p)

    p = keyed("generate-data-key", "a data key encrypted under KEY (envelope encryption)",
              cmd_generate_data_key)
    p.add_argument("--spec", default="AES_256", choices=["AES_256", "AES_128", "SM4"],
                   help="data key spec (default %(default)s)")
    p.add_argument("--context", action="append", type=context_arg, metavar="KEY=VALUE",
                   help="encryption context entry; repeatable (default: none)")
    p.add_argument("--plaintext", action="store_true",
                   help="also print the plaintext data key, base64 - a secret (default: "
                        "the ciphertext blob only)")

    p = keyed("get-parameters-for-import",
              "a wrapping public key and import token for an EXTERNAL key",
              cmd_get_parameters_for_import)
    p.add_argument("--wrapping-algorithm", default="RSAES_OAEP_SHA_256",
                   choices=WRAPPING_ALGORITHMS, help="default %(default)s")
    p.add_argument("--wrapping-key-spec", default="RSA_2048", choices=WRAPPING_KEY_SPECS,
                   help="default %(default)s (SM2 goes with SM2PKE)")
    p.add_argument("--public-key-out", required=True, metavar="F",
                   help="write the wrapping public key (DER) here")
    p.add_argument("--token-out", required=True, metavar="F",
                   help="write the import token here")
    p.add_argument("--force", "-f", action="store_true",
                   help="overwrite those files if they exist (default: refuse)")

    p = keyed("import-key-material", "import wrapped key material into an EXTERNAL key",
              cmd_import_key_material)
    p.add_argument("--token-file", required=True, metavar="F",
                   help="the import token from get-parameters-for-import")
    p.add_argument("--material-file", required=True, metavar="F",
                   help="the key material, encrypted under the wrapping public key")
    p.add_argument("--valid-to", type=_valid_to_arg, metavar="T",
                   help="the material expires at T (ISO 8601 or epoch seconds; default: "
                        "never)")
    p.add_argument("--expiration-model", choices=[EXPIRES, DOES_NOT_EXPIRE],
                   help=f"default {EXPIRES} with --valid-to, else {DOES_NOT_EXPIRE}")


def _signed_options(p: argparse.ArgumentParser) -> None:
    from kms.model import SPECS

    algorithms = sorted({a for info in SPECS.values() for a in info.signing_algorithms})
    p.add_argument("--algorithm", required=True, choices=algorithms, metavar="A",
                   help="signing algorithm: " + ", ".join(algorithms))
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--message-file", metavar="F",
                      help="the message (at most 4096 bytes; - for stdin)")
    what.add_argument("--digest-file", metavar="F",
                      help="the message's digest, made with the algorithm's hash (- for "
                           "stdin)")


def _out_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="F",
                   help="also write the raw bytes to F (default: base64 in the output only)")
    p.add_argument("--force", "-f", action="store_true",
                   help="overwrite --out if it exists (default: refuse)")
