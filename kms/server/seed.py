"""Seed files: keys and aliases that ``hsmpool serve`` creates at start when absent.

``[server] seed = "seed.toml"`` or ``hsmpool serve --seed FILE``; the file is TOML::

    [[keys]]
    id = "11111111-2222-4333-8444-555555555555"   # the key id (a UUID), fixed
    instance = "default"                          # default "default"
    spec = "SYMMETRIC_DEFAULT"                    # default SYMMETRIC_DEFAULT
    usage = "ENCRYPT_DECRYPT"                     # default: the spec's first usage
    description = "orders"                        # default ""
    tags = { team = "shop" }                      # default none
    aliases = ["alias/orders"]                    # created pointing at this key
    material = "base64 of 32 bytes"               # imported material (origin EXTERNAL):
                                                  #   raw key, SYMMETRIC_DEFAULT/SM4/HMAC_*
    # material_file = "orders-rsa.pem"            # or a private key file, PEM or DER
                                                  #   (RSA_*, ECC_*, SM2); relative to here

    [[aliases]]                                   # aliases of keys made some other way
    name = "alias/legacy"
    key = "11111111-2222-4333-8444-555555555555"
    instance = "default"

Without ``material`` the key's material is generated in the HSMs, as ``CreateKey`` does.
With it the key is made with origin EXTERNAL and the material imported the way a BYOK
client does (``GetParametersForImport`` with ``RSA_AES_KEY_WRAP_SHA_256``, the material
wrapped here under the token-made public key, then ``ImportKeyMaterial``), so it enters the
tokens wrapped and is fingerprinted like any import.

Idempotent: a key whose id exists in the instance is left as it is (not compared, not
re-imported; only a key left waiting for its first import by a start that stopped half-way
gets it), and so is an alias that exists (a note is returned if it points elsewhere). The
server applies the seed once, in its parent process before any worker starts, so two
workers never race; a key id that exists in *another* instance is an error.

The file is parsed completely, material checked against its spec, before anything is
created (:func:`load_seed`); every problem is a :class:`SeedError` of one line. Material
never appears in a message.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from kms import errors as E
from kms.keys.importing import _check_material
from kms.keys.material import backend
from kms.model import SPECS, KeyRecord, KeySpec, KeyState, KeyUsage, Origin

if TYPE_CHECKING:
    from kms.service import Kms, KmsClient

_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ALIAS: Final = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")
_KEY_FIELDS: Final = frozenset({"id", "instance", "spec", "usage", "description", "tags",
                                "aliases", "material", "material_file"})
_ALIAS_FIELDS: Final = frozenset({"name", "key", "instance"})
_RAW_SPECS: Final = frozenset({KeySpec.SYMMETRIC_DEFAULT, KeySpec.SM4, KeySpec.HMAC_256,
                               KeySpec.HMAC_384, KeySpec.HMAC_512, KeySpec.HMAC_SM3,
                               KeySpec.SM2})
_FILE_SPECS: Final = frozenset({KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096,
                                KeySpec.ECC_NIST_P256, KeySpec.ECC_SECG_P256K1, KeySpec.SM2})
WRAPPING: Final = ("RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")


class SeedError(Exception):
    """The seed file is malformed, or cannot be applied (one line, no key material)."""


@dataclass(frozen=True, slots=True)
class SeedKey:
    key_id: str
    instance: str
    spec: KeySpec
    usage: KeyUsage
    description: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    aliases: tuple[str, ...] = ()
    material: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SeedAlias:
    name: str
    key_id: str
    instance: str


@dataclass(frozen=True, slots=True)
class Seed:
    path: str
    keys: tuple[SeedKey, ...]
    aliases: tuple[SeedAlias, ...]


# --- parsing -------------------------------------------------------------------------------


def load_seed(path: str | os.PathLike[str]) -> Seed:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise SeedError(f"{str(p)!r} does not exist") from None
    except (OSError, UnicodeError) as exc:
        raise SeedError(f"cannot read {str(p)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SeedError(f"{p}: not valid TOML: {exc}") from None
    return parse_seed(doc, p.resolve().parent, str(p))


def parse_seed(doc: Mapping[str, Any], base: Path, source: str = "<seed>") -> Seed:
    unknown = set(doc) - {"keys", "aliases"}
    if unknown:
        raise SeedError(f"{source}: unknown section(s) {sorted(unknown)}")
    raw_keys = doc.get("keys", [])
    raw_aliases = doc.get("aliases", [])
    if not isinstance(raw_keys, list) or not isinstance(raw_aliases, list):
        raise SeedError(f"{source}: 'keys' and 'aliases' are arrays of tables ([[keys]])")
    keys = [_parse_key(k, i, base, source) for i, k in enumerate(raw_keys)]
    ids = [k.key_id for k in keys]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise SeedError(f"{source}: key id(s) given twice: {sorted(dup)}")
    aliases = [_parse_alias(a, i, source) for i, a in enumerate(raw_aliases)]
    names = Counter([(k.instance, a) for k in keys for a in k.aliases]
                    + [(a.instance, a.name) for a in aliases])
    twice = {name for (_, name), n in names.items() if n > 1}
    if twice:
        raise SeedError(f"{source}: alias(es) given twice: {sorted(twice)}")
    return Seed(source, tuple(keys), tuple(aliases))


def _str(entry: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = entry.get(name, default)
    if not isinstance(value, str):
        raise SeedError(f"{where}: '{name}' must be a string")
    return value


def _parse_key(entry: object, i: int, base: Path, source: str) -> SeedKey:
    where = f"{source}: keys[{i}]"
    if not isinstance(entry, dict):
        raise SeedError(f"{where} must be a table")
    bad = set(entry) - _KEY_FIELDS
    if bad:
        raise SeedError(f"{where}: unknown field(s) {sorted(bad)}")
    key_id = _str(entry, "id", where)
    if not _UUID.fullmatch(key_id):
        raise SeedError(f"{where}: id {key_id!r} is not a key id (a lower-case UUID)")
    where = f"{source}: key {key_id}"
    try:
        spec = KeySpec(_str(entry, "spec", where, "SYMMETRIC_DEFAULT"))
    except ValueError:
        raise SeedError(f"{where}: unknown spec {entry.get('spec')!r}") from None
    info = SPECS[spec]
    usage_name = entry.get("usage")
    try:
        usage = KeyUsage(usage_name) if usage_name is not None else info.usages[0]
    except ValueError:
        raise SeedError(f"{where}: unknown usage {usage_name!r}") from None
    if usage not in info.usages:
        raise SeedError(f"{where}: {spec.value} keys cannot have usage {usage.value}")
    tags = entry.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in tags.items()):
        raise SeedError(f"{where}: 'tags' must map names to strings")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and _ALIAS.fullmatch(a)
                                                and not a.startswith("alias/aws/")
                                                for a in aliases):
        raise SeedError(f"{where}: 'aliases' must be a list of names like alias/NAME")
    material = _material(entry, spec, base, where)
    if material is not None:
        try:
            _check_material(spec, material)  # before anything is created
        except E.KmsError as exc:
            raise SeedError(f"{where}: {exc.kind}: {exc.message}") from None
    return SeedKey(key_id, _str(entry, "instance", where, "default"), spec, usage,
                   _str(entry, "description", where, ""), tuple(sorted(tags.items())),
                   tuple(aliases), material)


def _material(entry: Mapping[str, Any], spec: KeySpec, base: Path, where: str
              ) -> bytes | None:
    if "material" in entry and "material_file" in entry:
        raise SeedError(f"{where}: give 'material' or 'material_file', not both")
    if "material" in entry:
        if spec not in _RAW_SPECS:
            raise SeedError(f"{where}: {spec.value} material comes as a private key file "
                            "('material_file')")
        text = _str(entry, "material", where)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise SeedError(f"{where}: 'material' is not valid base64") from None
    if "material_file" in entry:
        if spec not in _FILE_SPECS:
            raise SeedError(f"{where}: {spec.value} material comes as base64 ('material')")
        name = _str(entry, "material_file", where)
        path = Path(os.path.expanduser(name))
        path = path if path.is_absolute() else base / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SeedError(f"{where}: cannot read material_file {str(path)!r}: "
                            f"{exc.strerror}") from None
        return _pkcs8(data, spec, where, str(path))
    return None


def _pkcs8(data: bytes, spec: KeySpec, where: str, path: str) -> bytes:
    """A private key file (PEM or DER; PKCS#8, PKCS#1 or SEC 1) as DER PKCS#8."""
    if spec is KeySpec.SM2:  # cryptography does not read SM2 keys: PKCS#8 as given
        if data.lstrip().startswith(b"-----BEGIN"):
            lines = [ln for ln in data.decode("ascii", "replace").splitlines()
                     if ln and not ln.startswith("-----")]
            try:
                return base64.b64decode("".join(lines))
            except (binascii.Error, ValueError):
                raise SeedError(f"{where}: {path!r} is not a PEM private key") from None
        return data
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SeedError(f"{where}: {path!r} is not an unencrypted private key (PEM or "
                        "DER)") from None
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _parse_alias(entry: object, i: int, source: str) -> SeedAlias:
    where = f"{source}: aliases[{i}]"
    if not isinstance(entry, dict):
        raise SeedError(f"{where} must be a table")
    bad = set(entry) - _ALIAS_FIELDS
    if bad:
        raise SeedError(f"{where}: unknown field(s) {sorted(bad)}")
    name = _str(entry, "name", where)
    if not _ALIAS.fullmatch(name) or name.startswith("alias/aws/"):
        raise SeedError(f"{where}: {name!r} is not an alias name (alias/NAME)")
    key = _str(entry, "key", where)
    if not _UUID.fullmatch(key):
        raise SeedError(f"{where}: key {key!r} is not a key id (a lower-case UUID)")
    return SeedAlias(name, key, _str(entry, "instance", where, "default"))


# --- applying ------------------------------------------------------------------------------


def apply_seed(kms: Kms, seed: Seed, *, actor: str = "seed") -> list[str]:
    """Create what is absent; returns one line per key or alias created (and notes)."""
    lines: list[str] = []
    clients: dict[str, KmsClient] = {}

    def client(instance: str) -> KmsClient:
        if instance not in clients:
            try:
                clients[instance] = kms.client(instance, audit_name=actor)
            except E.KmsError:
                raise SeedError(f"instance {instance!r} is not configured") from None
        return clients[instance]

    try:
        for k in seed.keys:
            c = client(k.instance)
            existing = kms.store.get_key(k.key_id)
            if existing is not None:
                if existing.instance != k.instance:
                    raise SeedError(f"key {k.key_id} exists in another instance")
                if k.material is not None and existing.origin is Origin.EXTERNAL \
                        and existing.state is KeyState.PENDING_IMPORT \
                        and existing.primary_version is None \
                        and not kms.store.list_versions(k.key_id):
                    _import(c, k.key_id, k.material)  # a start that stopped half-way
                    lines.append(f"seed: imported the material of key {k.key_id}")
            else:
                create_key_with_id(c, k)
                lines.append(f"seed: created key {k.key_id} ({k.spec.value}"
                             f"{', imported' if k.material is not None else ''}) in "
                             f"{k.instance}")
            for name in k.aliases:
                lines += _alias(c, name, k.key_id)
        for a in seed.aliases:
            lines += _alias(client(a.instance), a.name, a.key_id)
    except E.KmsError as exc:
        raise SeedError(f"{exc.kind}: {exc.message}") from None
    return lines


def _alias(client: KmsClient, name: str, key_id: str) -> list[str]:
    found = client.kms.store.get_alias(client.instance_name, name)
    if found is not None:
        if found.key_id != key_id:
            return [f"seed: alias {name} exists and points at {found.key_id}, not {key_id}: "
                    "left as it is"]
        return []
    try:
        client.create_alias(name, key_id)
    except E.AlreadyExists:  # made meanwhile by another process: its choice stands
        return []
    return [f"seed: created alias {name} -> {key_id} in {client.instance_name}"]


def create_key_with_id(client: KmsClient, key: SeedKey) -> KeyRecord:
    """``CreateKey`` with a given key id (and, with material, the BYOK import): as
    :meth:`kms.service.KmsClient.create_key`, which always makes a random id."""
    kms = client.kms
    external = key.material is not None
    if external and key.spec not in _RAW_SPECS | _FILE_SPECS:
        raise SeedError(f"key {key.key_id}: {key.spec.value} keys cannot be imported")
    now = kms.now()
    version = None if external else backend(key.spec).new_version(
        client.inst, key.key_id, 1, now)
    rec = KeyRecord(
        key_id=key.key_id, instance=client.instance_name,
        arn=kms.key_arn(client.instance_name, key.key_id), spec=key.spec, usage=key.usage,
        origin=Origin.EXTERNAL if external else Origin.AWS_KMS,
        state=KeyState.PENDING_IMPORT if external else KeyState.ENABLED, created=now,
        description=key.description,
        primary_version=version.version_id if version else None, tags=key.tags)
    try:
        kms.store.insert_key(rec, version)
    except Exception as exc:  # noqa: BLE001 - sqlite3.IntegrityError: made meanwhile
        if kms.store.get_key(key.key_id) is not None:
            raise SeedError(f"key {key.key_id} was created meanwhile by another process") \
                from None
        raise SeedError(f"key {key.key_id}: cannot store it ({type(exc).__name__})") from None
    kms._evict_key(rec)
    client._audit("kms:CreateKey", rec, version.version_id if version else None, "ok")
    if key.material is not None:
        return _import(client, key.key_id, key.material)
    return rec


def _import(client: KmsClient, key_id: str, material: bytes) -> KeyRecord:
    params = client.get_parameters_for_import(key_id, *WRAPPING)
    public = serialization.load_der_public_key(params.public_key)
    assert isinstance(public, rsa.RSAPublicKey)
    ephemeral = secrets.token_bytes(32)
    wrapped = public.encrypt(ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                     algorithm=hashes.SHA256(), label=None))
    wrapped += aes_key_wrap_with_padding(ephemeral, material)
    return client.import_key_material(key_id, params.import_token, wrapped)


__all__ = ["Seed", "SeedAlias", "SeedError", "SeedKey", "apply_seed", "create_key_with_id",
           "load_seed", "parse_seed"]
