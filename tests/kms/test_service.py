"""Every KMS operation through the service, on real SoftHSM2 tokens and a real SQLite store.

Signatures, public keys, data key pairs and RSA-OAEP are cross-checked with ``cryptography``;
SM2 signatures with ``gmssl`` (an independent implementation, default user id
1234567812345678).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from gmssl.sm2 import CryptSM2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmpool import Pool
from hsmpool.gm import SM2PrivateKey, SM2PublicKey
from kms import KeyRecord, Kms, KmsClient
from kms import errors as E
from kms.config import KmsSettings
from kms.model import SPECS, KeySpec, KeyState, KeyUsage, Origin
from tests.database import POSTGRES, database_for
from tests.kms.conftest import FakeClock, make_kms

ALLOWED = [(s, u) for s, info in SPECS.items() for u in info.usages]
FORBIDDEN = [(s, u) for s in KeySpec for u in KeyUsage if u not in SPECS[s].usages]
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RSA_SIGN = SPECS[KeySpec.RSA_2048].signing_algorithms
HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
SYMMETRIC = ["SYMMETRIC_DEFAULT", "SM4"]
PAIR_SPECS = ["RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
              "ECC_NIST_P521", "ECC_SECG_P256K1", "SM2"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mkms(svc_pool: Pool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kms]:
    """One service for the module's crypto tests (keys are expensive to make)."""
    service = make_kms(svc_pool, tmp_path_factory.mktemp("svc-mod") / "kms.db", FakeClock())
    yield service
    service.close()


@pytest.fixture(scope="module")
def mc(mkms: Kms) -> KmsClient:
    return mkms.client("svc")


@pytest.fixture(scope="module")
def key(mc: KmsClient) -> Callable[[str, str | None], KeyRecord]:
    """A cached key per (spec, usage) in the module's service."""
    cache: dict[tuple[str, str | None], KeyRecord] = {}

    def get(spec: str, usage: str | None = None) -> KeyRecord:
        usage = usage or SPECS[KeySpec(spec)].usages[0].value
        if (spec, usage) not in cache:
            cache[(spec, usage)] = mc.create_key(spec, usage)
        return cache[(spec, usage)]

    return get


def public_key(client: KmsClient, key_id: str) -> Any:
    return serialization.load_der_public_key(client.get_public_key(key_id).public_key)


def gmssl_verifier(public_der: bytes) -> CryptSM2:
    c = CryptSM2(private_key="", public_key="", mode=1)
    # Set after construction: gmssl's constructor lstrip("04")s the key, eating digits of x.
    c.public_key = SM2PublicKey.from_der(public_der).to_bytes()[1:].hex()
    return c


def der_to_raw(sig: bytes) -> bytes:
    r, s = utils.decode_dss_signature(sig)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def flip(data: bytes, i: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[i] ^= mask
    return bytes(b)


# --------------------------------------------------------------------------- create / describe


@pytest.mark.parametrize(("spec", "usage"), ALLOWED, ids=[f"{s}-{u}" for s, u in ALLOWED])
def test_create_every_spec_and_allowed_usage(mc: KmsClient, key: Callable[..., KeyRecord],
                                             spec: KeySpec, usage: KeyUsage) -> None:
    # made through the module's key cache: the later tests reuse these (RSA keys are slow)
    rec = key(spec.value, usage.value)
    client = mc
    assert UUID_RE.match(rec.key_id)
    assert (rec.spec, rec.usage, rec.state, rec.origin) == (spec, usage, KeyState.ENABLED,
                                                           Origin.AWS_KMS)
    assert rec.created == mc.kms.now()
    described = client.update_key_description(rec.key_id, f"{spec} key")
    assert described.description == f"{spec} key"
    rec = described
    assert re.fullmatch(rf"arn:aws:kms:us-east-1:\d{{12}}:key/{rec.key_id}", rec.arn)
    assert client.describe_key(rec.key_id) == rec
    versions = client.list_key_rotations(rec.key_id)
    assert [v.number for v in versions] == [1]
    assert versions[0].version_id == rec.primary_version
    assert versions[0].blob is None  # listing strips the wrapped material
    info = SPECS[spec]
    if info.symmetric or usage is KeyUsage.GENERATE_VERIFY_MAC:
        with pytest.raises(E.UnsupportedOperation):
            client.get_public_key(rec.key_id)
        return
    pk = client.get_public_key(rec.key_id)
    assert (pk.key_id, pk.key_spec, pk.key_usage) == (rec.arn, spec.value, usage.value)
    if usage is KeyUsage.SIGN_VERIFY:
        assert pk.signing_algorithms == info.signing_algorithms and not pk.encryption_algorithms
    else:
        assert pk.encryption_algorithms == info.encryption_algorithms
        assert not pk.signing_algorithms
    if spec is KeySpec.SM2:
        assert len(SM2PublicKey.from_der(pk.public_key).to_bytes()) == 65
    else:
        loaded = serialization.load_der_public_key(pk.public_key)
        if spec.value.startswith("RSA_"):
            assert isinstance(loaded, rsa.RSAPublicKey)
            assert loaded.key_size == int(spec.value[4:])
        else:
            assert isinstance(loaded, ec.EllipticCurvePublicKey)
            want = ec.SECP256R1 if spec is KeySpec.ECC_NIST_P256 else ec.SECP256K1
            assert isinstance(loaded.curve, want)


@pytest.mark.parametrize(("spec", "usage"), FORBIDDEN, ids=[f"{s}-{u}" for s, u in FORBIDDEN])
def test_create_forbidden_combination_is_validation(client: KmsClient, spec: KeySpec,
                                                    usage: KeyUsage) -> None:
    with pytest.raises(E.Validation):
        client.create_key(spec.value, usage.value)
    assert client.list_keys().items == ()


def test_create_defaults_and_bad_arguments(client: KmsClient) -> None:
    assert client.create_key().spec is KeySpec.SYMMETRIC_DEFAULT
    assert client.create_key("HMAC_384").usage is KeyUsage.GENERATE_VERIFY_MAC
    assert client.create_key("ECC_NIST_P256").usage is KeyUsage.SIGN_VERIFY
    for kwargs in ({"key_spec": "AES_256"}, {"key_spec": "rsa_2048"}, {"key_usage": "SIGN"},
                   {"origin": "CLOUDHSM"}, {"description": 5}, {"description": "x" * 8193}):
        with pytest.raises(E.Validation):
            client.create_key(**kwargs)
    assert len(client.list_keys().items) == 3


def test_describe_by_every_key_id_form(client: KmsClient) -> None:
    rec = client.create_key(description="forms")
    client.create_alias("alias/forms", rec.key_id)
    alias_arn = rec.arn.rsplit(":", 1)[0] + ":alias/forms"
    for form in (rec.key_id, rec.arn, "alias/forms", alias_arn):
        assert client.describe_key(form).key_id == rec.key_id
        ct = client.encrypt(form, b"x").ciphertext_blob
        assert client.decrypt(ct, key_id=form).plaintext == b"x"
    for near in (rec.key_id + "\n", rec.arn + "\n", "alias/forms\n", alias_arn + "\n",
                 rec.key_id.upper(), rec.arn.replace(":key/", ":key/ "), alias_arn + "/"):
        with pytest.raises(E.NotFound):
            client.describe_key(near)


def test_foreign_region_or_account_arns_are_not_found(client: KmsClient) -> None:
    rec = client.create_key()
    client.create_alias("alias/home", rec.key_id)
    _, _, _, region, account, rest = rec.arn.split(":", 5)
    other_account = f"{(int(account) + 1) % 10**12:012d}"
    for arn in (f"arn:aws:kms:eu-west-1:{account}:{rest}",
                f"arn:aws:kms:{region}:{other_account}:{rest}",
                f"arn:aws:kms:eu-west-1:{account}:alias/home",
                f"arn:aws:kms:{region}:{other_account}:alias/home",
                f"arn:aws:kms:{region}:{account}:alias/nothere",
                f"arn:aws:kms:{region}:{account}:key/{uuid.uuid4()}",
                f"arn:aws:s3:{region}:{account}:{rest}",
                "arn:nonsense"):
        with pytest.raises(E.NotFound):
            client.describe_key(arn)
        with pytest.raises(E.NotFound):
            client.encrypt(arn, b"x")


# --------------------------------------------------------------------------- list keys


def test_list_keys_pagination(client: KmsClient, client2: KmsClient) -> None:
    made = sorted(client.create_key().key_id for _ in range(7))
    client2.create_key()  # another instance's key is never listed
    for limit in (1, 2, 3, 7, 8, 1000):
        seen: list[str] = []
        marker: str | None = None
        pages = 0
        while True:
            page = client.list_keys(limit=limit, marker=marker)
            pages += 1
            assert 1 <= len(page.items) <= limit
            seen += [r.key_id for r in page.items]
            marker = page.next_marker
            if marker is None:
                break
            assert marker == page.items[-1].key_id
        assert seen == made
        assert pages == -(-len(made) // limit)
    for bad in (0, 1001, -1, "3", None, 2.0):
        with pytest.raises(E.Validation):
            client.list_keys(limit=bad)  # type: ignore[arg-type]
    for bad_marker in (5, b"m", "m" * 1025):
        with pytest.raises(E.InvalidMarker):
            client.list_keys(marker=bad_marker)  # type: ignore[arg-type]
    assert client.list_keys(marker=made[-1]).items == ()


# --------------------------------------------------------------------------- state changes


def test_disable_enable(client: KmsClient) -> None:
    rec = client.create_key()
    ct = client.encrypt(rec.key_id, b"data").ciphertext_blob
    d = client.disable_key(rec.key_id)
    assert d.state is KeyState.DISABLED and d.revision > rec.revision
    assert client.describe_key(rec.key_id).state is KeyState.DISABLED
    assert client.disable_key(rec.key_id).state is KeyState.DISABLED  # idempotent
    with pytest.raises(E.Disabled):
        client.encrypt(rec.key_id, b"data")
    with pytest.raises(E.Disabled):
        client.decrypt(ct)
    with pytest.raises(E.Disabled):
        client.generate_data_key(rec.key_id)
    assert client.enable_key(rec.key_id).state is KeyState.ENABLED
    assert client.enable_key(rec.key_id).state is KeyState.ENABLED  # idempotent
    assert client.decrypt(ct).plaintext == b"data"


def test_schedule_and_cancel_deletion(client: KmsClient, clock: FakeClock) -> None:
    rec = client.create_key()
    for bad in (6, 31, 0, -7, "7", 7.0, None):
        with pytest.raises(E.Validation):
            client.schedule_key_deletion(rec.key_id, bad)  # type: ignore[arg-type]
    assert client.describe_key(rec.key_id).state is KeyState.ENABLED
    for days in (7, 30, 19):
        p = client.schedule_key_deletion(rec.key_id, days)
        assert p.state is KeyState.PENDING_DELETION
        assert p.deletion_date == clock.t + days * 86400
        with pytest.raises(E.InvalidState):
            client.schedule_key_deletion(rec.key_id, days)
        with pytest.raises(E.InvalidState):
            client.enable_key(rec.key_id)
        with pytest.raises(E.InvalidState):
            client.disable_key(rec.key_id)
        c = client.cancel_key_deletion(rec.key_id)
        assert c.state is KeyState.DISABLED and c.deletion_date is None
        assert client.describe_key(rec.key_id) == c
        client.enable_key(rec.key_id)
    with pytest.raises(E.InvalidState):
        client.cancel_key_deletion(rec.key_id)
    client.disable_key(rec.key_id)  # a disabled key can be scheduled too
    assert client.schedule_key_deletion(rec.key_id, 7).state is KeyState.PENDING_DELETION


def test_update_description(client: KmsClient) -> None:
    rec = client.create_key(description="old")
    new = client.update_key_description(rec.key_id, "new")
    assert new.description == "new" and new.revision > rec.revision
    assert client.describe_key(rec.key_id).description == "new"
    assert client.update_key_description(rec.key_id, "").description == ""
    for bad in (None, 3, b"x", "y" * 8193):
        with pytest.raises(E.Validation):
            client.update_key_description(rec.key_id, bad)  # type: ignore[arg-type]
    assert client.describe_key(rec.key_id).description == ""


def test_tags(client: KmsClient) -> None:
    rec = client.create_key(tags={"team": "blue", "env": "dev"})
    assert client.list_resource_tags(rec.key_id) == (("env", "dev"), ("team", "blue"))
    client.tag_resource(rec.key_id, [("env", "prod"), ("cost", "42")])
    assert client.list_resource_tags(rec.key_id) == (
        ("cost", "42"), ("env", "prod"), ("team", "blue"))
    client.untag_resource(rec.key_id, ["team", "absent"])
    assert client.describe_key(rec.key_id).tags == (("cost", "42"), ("env", "prod"))
    for bad in ({"aws:x": "1"}, {"": "1"}, {"k" * 129: "1"}, {"k": "v" * 257}, {"k": 1},
                [("a", "b", "c")], ["ab"]):
        with pytest.raises(E.InvalidTag):
            client.tag_resource(rec.key_id, bad)  # type: ignore[arg-type]
    with pytest.raises(E.LimitExceeded):
        client.tag_resource(rec.key_id, {f"t{i}": "v" for i in range(49)})
    assert len(client.list_resource_tags(rec.key_id)) == 2
    client.tag_resource(rec.key_id, {f"t{i}": "v" for i in range(48)})
    assert len(client.list_resource_tags(rec.key_id)) == 50
    with pytest.raises(E.LimitExceeded):
        client.create_key(tags={f"t{i}": "v" for i in range(51)})


# --------------------------------------------------------------------------- aliases


def test_alias_lifecycle(client: KmsClient, client2: KmsClient) -> None:
    a = client.create_key()
    b = client.create_key()
    sign = client.create_key("ECC_NIST_P256")
    rec = client.create_alias("alias/app/main", a.key_id)
    assert (rec.name, rec.key_id, rec.instance) == ("alias/app/main", a.key_id, "svc")
    ct = client.encrypt("alias/app/main", b"1").ciphertext_blob
    assert client.decrypt(ct).key_id == a.arn
    with pytest.raises(E.AlreadyExists):
        client.create_alias("alias/app/main", b.key_id)
    # the same name in another instance is another alias
    other = client2.create_key()
    client2.create_alias("alias/app/main", other.key_id)
    assert client2.describe_key("alias/app/main").key_id == other.key_id
    assert client.describe_key("alias/app/main").key_id == a.key_id

    client.update_alias("alias/app/main", b.key_id)
    assert client.describe_key("alias/app/main").key_id == b.key_id
    assert client.encrypt("alias/app/main", b"1").key_id == b.arn
    with pytest.raises(E.Validation):
        client.update_alias("alias/app/main", sign.key_id)  # another usage
    with pytest.raises(E.NotFound):
        client.update_alias("alias/none", a.key_id)
    with pytest.raises(E.NotFound):
        client.update_alias("alias/app/main", other.key_id)  # a foreign key
    with pytest.raises(E.NotFound):
        client.create_alias("alias/x", other.key_id)

    client.create_alias("alias/second", a.key_id)
    names = [r.name for r in client.list_aliases().items]
    assert names == ["alias/app/main", "alias/second"]
    assert [r.name for r in client.list_aliases(a.key_id).items] == ["alias/second"]
    assert [r.name for r in client.list_aliases(b.key_id).items] == ["alias/app/main"]

    client.delete_alias("alias/app/main")
    with pytest.raises(E.NotFound):
        client.describe_key("alias/app/main")
    with pytest.raises(E.NotFound):
        client.delete_alias("alias/app/main")
    assert client2.describe_key("alias/app/main").key_id == other.key_id
    client.create_alias("alias/app/main", a.key_id)  # the name is free again
    assert client.describe_key("alias/app/main").key_id == a.key_id


def test_alias_pagination(client: KmsClient) -> None:
    k = client.create_key()
    names = sorted(f"alias/p{i:02d}" for i in range(7))
    for n in names:
        client.create_alias(n, k.key_id)
    got: list[str] = []
    marker: str | None = None
    while True:
        page = client.list_aliases(limit=3, marker=marker)
        assert len(page.items) <= 3
        got += [r.name for r in page.items]
        marker = page.next_marker
        if marker is None:
            break
    assert got == names
    with pytest.raises(E.Validation):
        client.list_aliases(limit=0)


@pytest.mark.parametrize("name", [
    "foo", "alias/", "alias/aws/reserved", "alias/sp ace", "alias/dot.ted", "alias/x\n",
    "Alias/x", "alias/" + "a" * 251, "alias/ü", "", None, 7, b"alias/x"])
def test_invalid_alias_names(client: KmsClient, name: Any) -> None:
    k = client.create_key()
    with pytest.raises(E.InvalidAliasName):
        client.create_alias(name, k.key_id)
    with pytest.raises(E.InvalidAliasName):
        client.update_alias(name, k.key_id)
    with pytest.raises(E.InvalidAliasName):
        client.delete_alias(name)
    assert client.list_aliases().items == ()


def test_alias_to_pending_deletion_key_is_invalid_state(client: KmsClient) -> None:
    k = client.create_key()
    live = client.create_key()
    client.create_alias("alias/live", live.key_id)
    client.schedule_key_deletion(k.key_id, 7)
    with pytest.raises(E.InvalidState):
        client.create_alias("alias/late", k.key_id)
    with pytest.raises(E.InvalidState):  # as in AWS KMS: UpdateAlias refuses it too
        client.update_alias("alias/live", k.key_id)
    assert client.describe_key("alias/live").key_id == live.key_id
    # an alias that already points at a key pending deletion can be moved away from it
    client.cancel_key_deletion(k.key_id)
    client.update_alias("alias/live", k.key_id)
    client.schedule_key_deletion(k.key_id, 7)
    client.update_alias("alias/live", live.key_id)
    assert client.describe_key("alias/live").key_id == live.key_id


# --------------------------------------------------------------------------- encrypt/decrypt


@pytest.mark.parametrize("spec", SYMMETRIC)
def test_encrypt_decrypt_context_bound(client: KmsClient, spec: str) -> None:
    k = client.create_key(spec)
    ctx = {"b": "2", "a": "1", "purpose": "test"}
    res = client.encrypt(k.key_id, b"plain", ctx)
    assert res.key_id == k.arn and res.encryption_algorithm == "SYMMETRIC_DEFAULT"
    ct = res.ciphertext_blob
    assert ct[0] == 1 and ct[1:17].hex() == k.primary_version
    assert ct[17] == (1 if spec == "SYMMETRIC_DEFAULT" else 2)
    assert len(ct) == 18 + 12 + len(b"plain") + 16
    out = client.decrypt(ct, dict(reversed(list(ctx.items()))))  # order does not matter
    assert (out.plaintext, out.key_id, out.key_version) == (b"plain", k.arn, k.primary_version)
    wrong: list[dict[str, str] | None] = [
        None, {}, {"a": "1", "b": "2"}, {**ctx, "extra": "x"}, {**ctx, "a": "2"},
        {"A": "1", "b": "2", "purpose": "test"}, {"a": "1", "b": "2", "purpose": "test "},
        {"a": "1b", "": "2", "purpose": "test"}]
    for w in wrong:
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(ct, w)
    # no context: only the empty context decrypts
    ct0 = client.encrypt(k.key_id, b"p").ciphertext_blob
    assert client.decrypt(ct0).plaintext == b"p"
    assert client.decrypt(ct0, {}).plaintext == b"p"
    with pytest.raises(E.InvalidCiphertext):
        client.decrypt(ct0, {"a": "1"})
    # length prefixes: shifting a boundary between key and value changes the context
    ct1 = client.encrypt(k.key_id, b"p", {"ab": "c"}).ciphertext_blob
    with pytest.raises(E.InvalidCiphertext):
        client.decrypt(ct1, {"a": "bc"})
    # fresh nonces
    assert client.encrypt(k.key_id, b"plain", ctx).ciphertext_blob != ct


def test_decrypt_with_a_named_key(client: KmsClient) -> None:
    a, b = client.create_key(), client.create_key("SM4")
    ct = client.encrypt(a.key_id, b"x").ciphertext_blob
    assert client.decrypt(ct, key_id=a.arn).plaintext == b"x"
    with pytest.raises(E.IncorrectKey):
        client.decrypt(ct, key_id=b.key_id)
    with pytest.raises(E.NotFound):
        client.decrypt(ct, key_id=str(uuid.uuid4()))


@pytest.mark.parametrize("spec", SYMMETRIC)
def test_plaintext_limits(client: KmsClient, spec: str) -> None:
    k = client.create_key(spec)
    for n in (1, 4096):
        data = bytes(i % 251 for i in range(n))
        assert client.decrypt(client.encrypt(k.key_id, data).ciphertext_blob).plaintext == data
    ba: Any = bytearray(b"ba")
    assert client.decrypt(client.encrypt(k.key_id, ba).ciphertext_blob).plaintext == b"ba"
    for bad in (b"", b"x" * 4097, "text", 5, None, [1, 2]):
        with pytest.raises(E.Validation):
            client.encrypt(k.key_id, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("src_spec", "dst_spec"), [
    ("SYMMETRIC_DEFAULT", "SM4"), ("SM4", "SYMMETRIC_DEFAULT"),
    ("SYMMETRIC_DEFAULT", "SYMMETRIC_DEFAULT"), ("SM4", "SM4")])
def test_re_encrypt(client: KmsClient, src_spec: str, dst_spec: str) -> None:
    src, dst = client.create_key(src_spec), client.create_key(dst_spec)
    ct = client.encrypt(src.key_id, b"moving", {"from": "src"}).ciphertext_blob
    res, source_arn = client.re_encrypt(ct, dst.arn, {"from": "src"}, {"to": "dst"})
    assert source_arn == src.arn and res.key_id == dst.arn
    assert res.ciphertext_blob[17] == (1 if dst_spec == "SYMMETRIC_DEFAULT" else 2)
    out = client.decrypt(res.ciphertext_blob, {"to": "dst"})
    assert (out.plaintext, out.key_id) == (b"moving", dst.arn)
    with pytest.raises(E.InvalidCiphertext):
        client.decrypt(res.ciphertext_blob, {"from": "src"})
    with pytest.raises(E.InvalidCiphertext):
        client.re_encrypt(ct, dst.key_id, {"from": "elsewhere"}, {})
    with pytest.raises(E.IncorrectKey):
        client.re_encrypt(ct, dst.key_id, {"from": "src"}, source_key_id=dst.key_id)
    asym = client.create_key("SM2", "ENCRYPT_DECRYPT")
    with pytest.raises(E.InvalidKeyUsage):
        client.re_encrypt(ct, asym.key_id, {"from": "src"})
    client.disable_key(dst.key_id)
    with pytest.raises(E.Disabled):
        client.re_encrypt(ct, dst.key_id, {"from": "src"})


# --------------------------------------------------------------------------- data keys


@pytest.mark.parametrize("spec", SYMMETRIC)
def test_generate_data_key(client: KmsClient, spec: str) -> None:
    k = client.create_key(spec)
    ctx = {"file": "a.txt"}
    for key_spec, n in (("AES_256", 32), ("AES_128", 16), ("SM4", 16)):
        dk = client.generate_data_key(k.key_id, key_spec, encryption_context=ctx)
        assert dk.plaintext is not None and len(dk.plaintext) == n and dk.key_id == k.arn
        assert client.decrypt(dk.ciphertext_blob, ctx).plaintext == dk.plaintext
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(dk.ciphertext_blob)
        wo = client.generate_data_key_without_plaintext(k.key_id, key_spec,
                                                        encryption_context=ctx)
        assert wo.plaintext is None
        assert len(client.decrypt(wo.ciphertext_blob, ctx).plaintext) == n
    for n in (1, 17, 1024):
        dk = client.generate_data_key(k.key_id, None, n)
        assert dk.plaintext is not None and len(dk.plaintext) == n
        assert client.decrypt(dk.ciphertext_blob).plaintext == dk.plaintext
    a = client.generate_data_key(k.key_id).plaintext
    assert a is not None and len(a) == 32  # neither KeySpec nor NumberOfBytes: AES_256
    assert a != client.generate_data_key(k.key_id).plaintext
    assert len(client.generate_data_key(k.key_id, number_of_bytes=7).plaintext or b"") == 7
    for args in (("AES_256", 32), ("AES_512", None), (None, 0), (None, 1025),
                 (None, "32")):
        with pytest.raises(E.Validation):
            client.generate_data_key(k.key_id, *args)
    asym = client.create_key("SM2", "ENCRYPT_DECRYPT")
    with pytest.raises(E.InvalidKeyUsage):
        client.generate_data_key(asym.key_id)
    with pytest.raises(E.InvalidKeyUsage):
        client.generate_data_key(client.create_key("HMAC_256").key_id)


@pytest.mark.parametrize("pair_spec", PAIR_SPECS)
def test_generate_data_key_pair(mc: KmsClient, key: Callable[..., KeyRecord],
                                pair_spec: str) -> None:
    k = key("SYMMETRIC_DEFAULT" if pair_spec != "SM2" else "SM4")
    ctx = {"pair": pair_spec}
    pair = mc.generate_data_key_pair(k.key_id, pair_spec, ctx)
    assert pair.key_pair_spec == pair_spec and pair.key_id == k.arn
    private = mc.decrypt(pair.private_key_ciphertext_blob, ctx).plaintext
    assert private == pair.private_key_plaintext
    if pair_spec == "SM2":
        sm2 = SM2PrivateKey.from_der(private)
        assert sm2.public_key().to_der() == pair.public_key
        SM2PublicKey.from_der(pair.public_key).verify(sm2.sign(b"m"), b"m")
    else:
        loaded = serialization.load_der_private_key(private, None)
        assert loaded.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo) == pair.public_key
        if pair_spec.startswith("RSA_"):
            assert isinstance(loaded, rsa.RSAPrivateKey)
            assert loaded.key_size == int(pair_spec[4:])
        else:
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    wo = mc.generate_data_key_pair_without_plaintext(k.key_id, pair_spec, ctx)
    assert wo.private_key_plaintext is None and wo.public_key != pair.public_key
    private2 = mc.decrypt(wo.private_key_ciphertext_blob, ctx).plaintext
    if pair_spec == "SM2":
        assert SM2PrivateKey.from_der(private2).public_key().to_der() == wo.public_key
    else:
        assert serialization.load_der_private_key(private2, None).public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo) == wo.public_key


def test_generate_data_key_pair_bad_arguments(mc: KmsClient,
                                              key: Callable[..., KeyRecord]) -> None:
    k = key("SYMMETRIC_DEFAULT")
    for bad in ("RSA_1024", "ECC_NIST_P192", "", None, 5):
        with pytest.raises(E.Validation):
            mc.generate_data_key_pair(k.key_id, bad)  # type: ignore[arg-type]
    with pytest.raises(E.InvalidKeyUsage):
        mc.generate_data_key_pair(key("RSA_2048", "ENCRYPT_DECRYPT").key_id, "ECC_NIST_P256")


# --------------------------------------------------------------------------- sign/verify


def _verify_rsa(pk: rsa.RSAPublicKey, alg: str, sig: bytes, msg: bytes) -> None:
    h = HASHES[alg[-3:]]
    pad: Any = padding.PSS(padding.MGF1(h), h.digest_size) if "PSS" in alg else \
        padding.PKCS1v15()
    pk.verify(sig, msg, pad, h)


@pytest.mark.parametrize("alg", RSA_SIGN)
@pytest.mark.parametrize("message_type", ["RAW", "DIGEST"])
def test_rsa_sign_verify(mc: KmsClient, key: Callable[..., KeyRecord], alg: str,
                         message_type: str) -> None:
    k = key("RSA_2048", "SIGN_VERIFY")
    pk = public_key(mc, k.key_id)
    assert isinstance(pk, rsa.RSAPublicKey)
    msg = b"message to sign " + alg.encode()
    h = HASHES[alg[-3:]]
    digest = hashlib.new(h.name, msg).digest()
    data = digest if message_type == "DIGEST" else msg
    sig, arn = mc.sign(k.key_id, data, alg, message_type)
    assert arn == k.arn and len(sig) == 256
    _verify_rsa(pk, alg, sig, msg)  # independent check with cryptography
    assert mc.verify(k.arn, data, sig, alg, message_type) == k.arn
    # the other message type verifies the same signature
    other = msg if message_type == "DIGEST" else digest
    mc.verify(k.key_id, other, sig, alg, "RAW" if message_type == "DIGEST" else "DIGEST")
    for bad_sig in (flip(sig, 0), flip(sig, 255, 0x80), sig[:-1], sig + b"\0"):
        with pytest.raises(E.InvalidSignature):
            mc.verify(k.key_id, data, bad_sig, alg, message_type)
    bad_data = msg + b"!" if message_type == "RAW" else flip(digest, 3)
    with pytest.raises(E.InvalidSignature):
        mc.verify(k.key_id, bad_data, sig, alg, message_type)
    with pytest.raises(InvalidSignature):
        _verify_rsa(pk, alg, sig, msg + b"!")


@pytest.mark.parametrize(("spec", "alg"), [("RSA_3072", "RSASSA_PSS_SHA_512"),
                                           ("RSA_4096", "RSASSA_PKCS1_V1_5_SHA_384")])
def test_large_rsa_sign(mc: KmsClient, key: Callable[..., KeyRecord], spec: str,
                        alg: str) -> None:
    k = key(spec, "SIGN_VERIFY")
    pk = public_key(mc, k.key_id)
    assert isinstance(pk, rsa.RSAPublicKey)
    sig, _ = mc.sign(k.key_id, b"big", alg)
    assert len(sig) == pk.key_size // 8
    _verify_rsa(pk, alg, sig, b"big")
    mc.verify(k.key_id, b"big", sig, alg)
    with pytest.raises(E.InvalidSignature):
        mc.verify(k.key_id, b"bag", sig, alg)


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "ECC_SECG_P256K1"])
@pytest.mark.parametrize("message_type", ["RAW", "DIGEST"])
def test_ecdsa_sign_verify(mc: KmsClient, key: Callable[..., KeyRecord], spec: str,
                           message_type: str) -> None:
    k = key(spec)
    pk = public_key(mc, k.key_id)
    assert isinstance(pk, ec.EllipticCurvePublicKey)
    msg = b"ecdsa " + spec.encode()
    digest = hashlib.sha256(msg).digest()
    data = digest if message_type == "DIGEST" else msg
    sig, _ = mc.sign(k.key_id, data, "ECDSA_SHA_256", message_type)
    pk.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    pk.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    mc.verify(k.key_id, data, sig, "ECDSA_SHA_256", message_type)
    r, s = utils.decode_dss_signature(sig)
    for bad in (utils.encode_dss_signature(r, s + 1), utils.encode_dss_signature(r ^ 1, s),
                flip(sig, len(sig) - 1), b"\x30\x00"):
        with pytest.raises(E.InvalidSignature):
            mc.verify(k.key_id, data, bad, "ECDSA_SHA_256", message_type)
    with pytest.raises(E.InvalidSignature):
        mc.verify(k.key_id, flip(data, 0), sig, "ECDSA_SHA_256", message_type)
    # another key of the same spec rejects the signature
    other = mc.create_key(spec)
    with pytest.raises(E.InvalidSignature):
        mc.verify(other.key_id, data, sig, "ECDSA_SHA_256", message_type)


def test_sm2_sign_verify_cross_checked_with_gmssl(mc: KmsClient,
                                                   key: Callable[..., KeyRecord]) -> None:
    k = key("SM2", "SIGN_VERIFY")
    pub_der = mc.get_public_key(k.key_id).public_key
    verifier = gmssl_verifier(pub_der)
    for msg in (b"sm2 message", b"x" * 4095, b"\0"):
        sig, arn = mc.sign(k.key_id, msg, "SM2DSA")
        assert arn == k.arn
        assert verifier.verify_with_sm3(der_to_raw(sig).hex(), msg)
        assert not verifier.verify_with_sm3(der_to_raw(sig).hex(), msg + b"!")
        mc.verify(k.key_id, msg, sig, "SM2DSA")
        r, s = utils.decode_dss_signature(sig)
        with pytest.raises(E.InvalidSignature):
            mc.verify(k.key_id, msg, utils.encode_dss_signature(r, s ^ 1), "SM2DSA")
        with pytest.raises(E.InvalidSignature):
            mc.verify(k.key_id, msg + b"!", sig, "SM2DSA")
    # DIGEST: e = SM3(ZA || M) with the default user id
    msg = b"digest signed"
    e = SM2PublicKey.from_der(pub_der).message_digest(msg)
    sig, _ = mc.sign(k.key_id, e, "SM2DSA", "DIGEST")
    assert verifier.verify_with_sm3(der_to_raw(sig).hex(), msg)
    mc.verify(k.key_id, msg, sig, "SM2DSA", "RAW")
    mc.verify(k.key_id, e, sig, "SM2DSA", "DIGEST")
    with pytest.raises(E.InvalidSignature):
        mc.verify(k.key_id, flip(e, 5), sig, "SM2DSA", "DIGEST")


def test_sign_argument_errors(mc: KmsClient, key: Callable[..., KeyRecord]) -> None:
    rsa_sign = key("RSA_2048", "SIGN_VERIFY")
    rsa_enc = key("RSA_2048", "ENCRYPT_DECRYPT")
    p256 = key("ECC_NIST_P256")
    sm2 = key("SM2", "SIGN_VERIFY")
    with pytest.raises(E.InvalidKeyUsage):
        mc.sign(sm2.key_id, b"m", "ECDSA_SHA_256")
    with pytest.raises(E.InvalidKeyUsage):
        mc.sign(rsa_sign.key_id, b"m", "ECDSA_SHA_256")
    with pytest.raises(E.InvalidKeyUsage):
        mc.sign(p256.key_id, b"m", "RSASSA_PSS_SHA_256")
    with pytest.raises(E.InvalidKeyUsage):
        mc.sign(p256.key_id, b"m", "SM2DSA")
    with pytest.raises(E.InvalidKeyUsage):
        mc.sign(rsa_enc.key_id, b"m", "RSASSA_PSS_SHA_256")
    with pytest.raises(E.InvalidKeyUsage):
        mc.sign(key("SYMMETRIC_DEFAULT").key_id, b"m", "RSASSA_PSS_SHA_256")
    with pytest.raises(E.Validation):
        mc.sign(rsa_sign.key_id, b"m", "RSASSA_PSS_SHA_256", "HASHED")
    for bad in (b"", "text", None, b"x" * 4097):
        with pytest.raises(E.Validation):
            mc.sign(rsa_sign.key_id, bad, "RSASSA_PSS_SHA_256")  # type: ignore[arg-type]
    sig, _ = mc.sign(rsa_sign.key_id, b"m", "RSASSA_PSS_SHA_256")
    with pytest.raises(E.Validation):
        mc.verify(rsa_sign.key_id, b"m", b"", "RSASSA_PSS_SHA_256")
    with pytest.raises(E.InvalidSignature):  # right key, other algorithm
        mc.verify(rsa_sign.key_id, b"m", sig, "RSASSA_PKCS1_V1_5_SHA_256")


@pytest.mark.parametrize(("spec", "alg"), [
    ("RSA_2048", "RSASSA_PSS_SHA_256"), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_512"),
    ("ECC_NIST_P256", "ECDSA_SHA_256"), ("ECC_SECG_P256K1", "ECDSA_SHA_256"),
    ("SM2", "SM2DSA")])
def test_digest_of_wrong_length_is_validation(mc: KmsClient, key: Callable[..., KeyRecord],
                                              spec: str, alg: str) -> None:
    k = key(spec, "SIGN_VERIFY")
    for n in (1, 31, 33, 48, 64):
        if (alg.endswith("512") and n == 64) or n == 32 and not alg.endswith("512"):
            continue
        with pytest.raises(E.Validation):
            mc.sign(k.key_id, b"d" * n, alg, "DIGEST")


# --------------------------------------------------------------------------- asymmetric enc


@pytest.mark.parametrize("alg", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
def test_rsa_oaep(mc: KmsClient, key: Callable[..., KeyRecord], alg: str) -> None:
    k = key("RSA_2048", "ENCRYPT_DECRYPT")
    pk = public_key(mc, k.key_id)
    assert isinstance(pk, rsa.RSAPublicKey)
    h: hashes.HashAlgorithm = hashes.SHA1() if alg.endswith("SHA_1") else hashes.SHA256()
    max_len = 256 - 2 * h.digest_size - 2
    for pt in (b"a", b"secret message", bytes(range(256))[:max_len]):
        ct = pk.encrypt(pt, padding.OAEP(padding.MGF1(h), h, None))
        out = mc.decrypt(ct, key_id=k.key_id, encryption_algorithm=alg)
        assert (out.plaintext, out.encryption_algorithm, out.key_id) == (pt, alg, k.arn)
        res = mc.encrypt(k.key_id, pt, encryption_algorithm=alg)
        assert res.encryption_algorithm == alg and len(res.ciphertext_blob) == 256
        assert mc.decrypt(res.ciphertext_blob, key_id=k.arn,
                          encryption_algorithm=alg).plaintext == pt
        with pytest.raises(E.InvalidCiphertext):
            mc.decrypt(flip(ct, 100), key_id=k.key_id, encryption_algorithm=alg)
    other = "RSAES_OAEP_SHA_256" if alg.endswith("SHA_1") else "RSAES_OAEP_SHA_1"
    ct = pk.encrypt(b"x", padding.OAEP(padding.MGF1(h), h, None))
    with pytest.raises(E.InvalidCiphertext):
        mc.decrypt(ct, key_id=k.key_id, encryption_algorithm=other)
    with pytest.raises(E.Validation):
        mc.encrypt(k.key_id, b"x" * (max_len + 1), encryption_algorithm=alg)
    with pytest.raises(E.Validation):
        mc.decrypt(ct, encryption_algorithm=alg)  # no KeyId
    with pytest.raises(E.Validation):
        mc.encrypt(k.key_id, b"x", {"ctx": "no"}, encryption_algorithm=alg)
    with pytest.raises(E.InvalidKeyUsage):
        mc.encrypt(k.key_id, b"x")  # SYMMETRIC_DEFAULT on an RSA key
    with pytest.raises(E.InvalidKeyUsage):
        mc.encrypt(k.key_id, b"x", encryption_algorithm="SM2PKE")
    with pytest.raises(E.InvalidKeyUsage):
        mc.encrypt(key("RSA_2048", "SIGN_VERIFY").key_id, b"x", encryption_algorithm=alg)
    with pytest.raises(E.InvalidKeyUsage):
        mc.decrypt(ct, key_id=key("SYMMETRIC_DEFAULT").key_id, encryption_algorithm=alg)


def test_rsa_4096_oaep(mc: KmsClient, key: Callable[..., KeyRecord]) -> None:
    k = key("RSA_4096", "ENCRYPT_DECRYPT")
    pk = public_key(mc, k.key_id)
    assert isinstance(pk, rsa.RSAPublicKey)
    pt = b"y" * (512 - 66)
    ct = pk.encrypt(pt, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    assert mc.decrypt(ct, key_id=k.key_id,
                      encryption_algorithm="RSAES_OAEP_SHA_256").plaintext == pt


def test_sm2pke(mc: KmsClient, key: Callable[..., KeyRecord]) -> None:
    k = key("SM2", "ENCRYPT_DECRYPT")
    info = mc.get_public_key(k.key_id)
    assert info.encryption_algorithms == ("SM2PKE",) and info.signing_algorithms == ()
    pub = SM2PublicKey.from_der(info.public_key)
    for pt in (b"s", b"sm2 public key encryption", b"z" * 1000):
        ct = pub.encrypt(pt)
        assert mc.decrypt(ct, key_id=k.key_id, encryption_algorithm="SM2PKE").plaintext == pt
        res = mc.encrypt(k.key_id, pt, encryption_algorithm="SM2PKE")
        assert mc.decrypt(res.ciphertext_blob, key_id=k.key_id,
                          encryption_algorithm="SM2PKE").plaintext == pt
        for i in (len(ct) // 2, len(ct) - 1):
            with pytest.raises(E.InvalidCiphertext):
                mc.decrypt(flip(ct, i), key_id=k.key_id, encryption_algorithm="SM2PKE")
    with pytest.raises(E.InvalidCiphertext):
        mc.decrypt(b"\x30\x03\x02\x01\x01", key_id=k.key_id, encryption_algorithm="SM2PKE")
    other = key("SM2", "SIGN_VERIFY")
    with pytest.raises(E.InvalidKeyUsage):
        mc.encrypt(other.key_id, b"x", encryption_algorithm="SM2PKE")
    with pytest.raises(E.InvalidKeyUsage):
        mc.sign(k.key_id, b"x", "SM2DSA")


# --------------------------------------------------------------------------- MAC / random


MAC_SPECS = [("HMAC_256", "HMAC_SHA_256", 32), ("HMAC_384", "HMAC_SHA_384", 48),
             ("HMAC_512", "HMAC_SHA_512", 64), ("HMAC_SM3", "HMAC_SM3", 32)]


@pytest.mark.parametrize(("spec", "alg", "size"), MAC_SPECS)
def test_mac(mc: KmsClient, key: Callable[..., KeyRecord], spec: str, alg: str,
             size: int) -> None:
    k = key(spec)
    msg = b"authenticate me"
    mac, arn = mc.generate_mac(k.key_id, msg, alg)
    assert arn == k.arn and len(mac) == size
    assert mc.generate_mac(k.arn, msg, alg)[0] == mac  # deterministic
    assert mc.verify_mac(k.key_id, msg, mac, alg) == k.arn
    assert mc.generate_mac(k.key_id, msg + b".", alg)[0] != mac
    for i in range(size):
        with pytest.raises(E.InvalidMac):
            mc.verify_mac(k.key_id, msg, flip(mac, i), alg)
    for bad in (mac[:-1], mac + b"\0"):
        with pytest.raises(E.InvalidMac):
            mc.verify_mac(k.key_id, msg, bad, alg)
    with pytest.raises(E.InvalidMac):
        mc.verify_mac(k.key_id, msg[:-1], mac, alg)
    other = mc.create_key(spec)
    assert mc.generate_mac(other.key_id, msg, alg)[0] != mac
    with pytest.raises(E.InvalidMac):
        mc.verify_mac(other.key_id, msg, mac, alg)
    wrong_alg = "HMAC_SHA_512" if alg != "HMAC_SHA_512" else "HMAC_SHA_256"
    with pytest.raises(E.InvalidKeyUsage):
        mc.generate_mac(k.key_id, msg, wrong_alg)
    with pytest.raises(E.Validation):
        mc.verify_mac(k.key_id, msg, b"", alg)
    for bad_msg in (b"", "text", b"x" * 4097):
        with pytest.raises(E.Validation):
            mc.generate_mac(k.key_id, bad_msg, alg)  # type: ignore[arg-type]
    with pytest.raises(E.InvalidKeyUsage):
        mc.generate_mac(key("SYMMETRIC_DEFAULT").key_id, msg, alg)
    with pytest.raises(E.InvalidKeyUsage):
        mc.encrypt(k.key_id, b"x")


def test_generate_random(mc: KmsClient) -> None:
    for n in (1, 32, 1024):
        assert len(mc.generate_random(n)) == n
    assert mc.generate_random(32) != mc.generate_random(32)
    for bad in (0, 1025, -1, "8", None, 8.0):
        with pytest.raises(E.Validation):
            mc.generate_random(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- instances


def test_foreign_instance_keys_and_ciphertexts(client: KmsClient, client2: KmsClient) -> None:
    mine = client.create_key()
    theirs = client2.create_key()
    theirs_sm4 = client2.create_key("SM4")
    for form in (theirs.key_id, theirs.arn):
        for call in (lambda f: client.describe_key(f), lambda f: client.encrypt(f, b"x"),
                     lambda f: client.disable_key(f), lambda f: client.list_key_rotations(f),
                     lambda f: client.schedule_key_deletion(f, 7),
                     lambda f: client.create_alias("alias/steal", f)):
            with pytest.raises(E.NotFound):
                call(form)
    assert client2.describe_key(theirs.key_id).state is KeyState.ENABLED
    for k in (theirs, theirs_sm4):
        ct = client2.encrypt(k.key_id, b"theirs").ciphertext_blob
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(ct)
        with pytest.raises(E.InvalidCiphertext):
            client.re_encrypt(ct, mine.key_id)
        assert client2.decrypt(ct).plaintext == b"theirs"
    ct_mine = client.encrypt(mine.key_id, b"mine").ciphertext_blob
    with pytest.raises(E.InvalidCiphertext):
        client2.decrypt(ct_mine)
    assert [r.key_id for r in client.list_keys().items] == [mine.key_id]


# --------------------------------------------------------------------------- bad input


BAD_KEY_IDS: list[Any] = [
    "", None, 5, b"alias/x", ["k"], "garbage", "alias/nothere", "arn:", str(uuid.uuid4()),
    str(uuid.uuid4()).upper(), str(uuid.uuid4()) + "\n", " " + str(uuid.uuid4()),
    "alias/" + "a" * 300, "arn:aws:kms:us-east-1:123456789012:key/",
    "arn:aws:kms:us-east-1:123456789012:alias/"]


@pytest.mark.parametrize("bad", BAD_KEY_IDS, ids=[repr(b)[:30] for b in BAD_KEY_IDS])
def test_bad_key_ids(mc: KmsClient, bad: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: mc.describe_key(bad), lambda: mc.encrypt(bad, b"x"),
        lambda: mc.generate_data_key(bad), lambda: mc.enable_key(bad),
        lambda: mc.disable_key(bad), lambda: mc.schedule_key_deletion(bad, 7),
        lambda: mc.cancel_key_deletion(bad), lambda: mc.update_key_description(bad, "d"),
        lambda: mc.tag_resource(bad, {"a": "b"}), lambda: mc.rotate_key_on_demand(bad),
        lambda: mc.list_key_rotations(bad), lambda: mc.sign(bad, b"m", "ECDSA_SHA_256"),
        lambda: mc.verify(bad, b"m", b"s", "ECDSA_SHA_256"),
        lambda: mc.get_public_key(bad), lambda: mc.generate_mac(bad, b"m", "HMAC_SHA_256"),
        lambda: mc.create_alias("alias/bad-target", bad),
        lambda: mc.generate_data_key_pair(bad, "ECC_NIST_P256"),
        lambda: mc.enable_key_rotation(bad), lambda: mc.set_min_decryption_version(bad, 1)]
    if bad is not None:  # ListAliases without a KeyId lists every alias
        calls.append(lambda: mc.list_aliases(bad))
    for call in calls:
        with pytest.raises((E.Validation, E.NotFound)):
            call()


def test_bad_encryption_contexts(mc: KmsClient, key: Callable[..., KeyRecord]) -> None:
    k = key("SYMMETRIC_DEFAULT")
    ct = mc.encrypt(k.key_id, b"x", {"a": "b"}).ciphertext_blob
    for bad in ({"a": 1}, {1: "a"}, {"a": None}, [("a", "b")], "a=b", {"a": b"b"},
                {"k": "v" * 9000}):
        with pytest.raises(E.Validation):
            mc.encrypt(k.key_id, b"x", bad)  # type: ignore[arg-type]
        with pytest.raises(E.Validation):
            mc.decrypt(ct, bad)  # type: ignore[arg-type]


JUNK = [b"", b"\x01", b"\x01" * 45, b"\x02" + b"\0" * 60, "text", None, 12, [1], b"\x01" * 100]


@pytest.mark.parametrize("junk", JUNK, ids=[repr(j)[:20] for j in JUNK])
def test_junk_ciphertexts(mc: KmsClient, key: Callable[..., KeyRecord], junk: Any) -> None:
    with pytest.raises(E.InvalidCiphertext):
        mc.decrypt(junk)
    with pytest.raises(E.InvalidCiphertext):
        mc.re_encrypt(junk, key("SYMMETRIC_DEFAULT").key_id)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=st.binary(max_size=120), version=st.booleans(), alg=st.sampled_from([1, 2, 3]))
def test_fuzzed_ciphertexts_only_raise_invalid_ciphertext(
        mc: KmsClient, key: Callable[..., KeyRecord], blob: bytes, version: bool,
        alg: int) -> None:
    if version:  # a real version id in the header: the failure comes from the tag check
        vid = bytes.fromhex(key("SYMMETRIC_DEFAULT").primary_version or "")
        blob = b"\x01" + vid + bytes((alg,)) + blob
    with pytest.raises(E.InvalidCiphertext):
        mc.decrypt(blob)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctx=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
       other=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
       spec=st.sampled_from(SYMMETRIC))
def test_context_binding_property(mc: KmsClient, key: Callable[..., KeyRecord],
                                  ctx: dict[str, str], other: dict[str, str], spec: str) -> None:
    k = key(spec)
    ct = mc.encrypt(k.key_id, b"p", ctx).ciphertext_blob
    assert mc.decrypt(ct, dict(sorted(ctx.items(), reverse=True))).plaintext == b"p"
    if other != ctx:
        with pytest.raises(E.InvalidCiphertext):
            mc.decrypt(ct, other)


def test_store_survives_a_new_service(svc_pool: Pool, tmp_path: Path) -> None:
    """Keys, aliases and ciphertexts outlive the service object (a restart)."""
    db = tmp_path / "restart.db"
    first = make_kms(svc_pool, db, FakeClock())
    c = first.client("svc")
    k = c.create_key("SM4", description="persist")
    c.create_alias("alias/persist", k.key_id)
    ct = c.encrypt("alias/persist", b"kept", {"c": "1"}).ciphertext_blob
    first.close()
    second = make_kms(svc_pool, db, FakeClock())
    try:
        c2 = second.client("svc")
        assert c2.describe_key("alias/persist") == k
        assert c2.decrypt(ct, {"c": "1"}).plaintext == b"kept"
        assert c2.kms.account("svc") == k.arn.split(":")[4]
    finally:
        second.close()


# Any argument of any type: the service answers with a KMS error, never another exception.
_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5000), st.floats(), st.text(max_size=12),
    st.binary(max_size=40), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()),
                    max_size=2),
    st.sampled_from(["alias/x", "SYMMETRIC_DEFAULT", "RAW", "DIGEST", "HMAC_SHA_256",
                     "ECDSA_SHA_256", "AES_256", "SM2", "SM2DSA", "RSAES_OAEP_SHA_256",
                     "SM2PKE", "ECC_NIST_P256"]))
# operation -> number of positional arguments after the key id (None: takes no key id)
_ARITY: dict[str, tuple[bool, int]] = {
    "encrypt": (True, 3), "decrypt": (False, 4), "generate_data_key": (True, 3),
    "generate_data_key_pair": (True, 2), "sign": (True, 3), "verify": (True, 4),
    "generate_mac": (True, 2), "verify_mac": (True, 3), "re_encrypt": (False, 5),
    "tag_resource": (True, 1), "untag_resource": (True, 1), "schedule_key_deletion": (True, 1),
    "enable_key_rotation": (True, 1), "set_min_decryption_version": (True, 1),
    "update_key_description": (True, 1), "get_public_key": (True, 0),
    "describe_key": (True, 0), "create_alias": (False, 2), "update_alias": (False, 2),
    "delete_alias": (False, 1), "list_keys": (False, 2), "list_aliases": (False, 3),
    "generate_random": (False, 1), "create_key": (False, 5)}
_FUZZ_KEYS = ["SYMMETRIC_DEFAULT", "SM4", "ECC_NIST_P256", "HMAC_256", "HMAC_SM3", "SM2"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(sorted(_ARITY)), spec=st.sampled_from(_FUZZ_KEYS),
       data=st.data())
def test_any_argument_types_give_kms_errors(mc: KmsClient, key: Callable[..., KeyRecord],
                                            op: str, spec: str, data: st.DataObject) -> None:
    takes_key, n = _ARITY[op]
    args: list[Any] = [data.draw(_JUNK) for _ in range(n)]
    if takes_key:
        args.insert(0, key(spec).key_id)
    try:
        getattr(mc, op)(*args)
    except E.KmsError:
        pass


def test_nul_is_refused_in_what_the_store_keeps_or_is_searched_by(client: KmsClient) -> None:
    """A NUL (U+0000) in a description, a tag, a list marker, a secret's name, version or
    stage: a client error on every engine (PostgreSQL text cannot hold one: these were 500s
    on the PostgreSQL pass, and SQLite kept them). An encryption context may hold one."""
    k = client.create_key()
    nul = "a\x00b"
    with pytest.raises(E.Validation):
        client.create_key(description=nul)
    with pytest.raises(E.Validation):
        client.update_key_description(k.key_id, nul)
    for tags in ({nul: "v"}, {"k": nul}):
        with pytest.raises(E.InvalidTag):
            client.tag_resource(k.key_id, tags)
        with pytest.raises(E.InvalidTag):
            client.create_key(tags=tags)
    with pytest.raises(E.InvalidMarker):
        client.list_keys(marker=nul)
    with pytest.raises(E.InvalidMarker):
        client.list_aliases(marker=nul)
    assert client.describe_key(k.key_id).description == "" and not client.describe_key(
        k.key_id).tags
    ct = client.encrypt(k.key_id, b"p", {nul: nul}).ciphertext_blob
    assert client.decrypt(ct, {nul: nul}).plaintext == b"p"
    name = f"nul/{uuid.uuid4().hex[:8]}"
    client.create_secret(name, secret_string="s")
    with pytest.raises(E.Validation):
        client.create_secret(f"nul/{uuid.uuid4().hex[:8]}", secret_string="s", description=nul)
    with pytest.raises(E.Validation):
        client.update_secret(name, description=nul)
    with pytest.raises(E.Validation):
        client.tag_secret(name, [{"Key": nul, "Value": "v"}])
    with pytest.raises(E.Validation):
        client.put_secret_value(name, secret_string="t", version_stages=[nul])
    with pytest.raises(E.NotFound):
        client.get_secret_value(nul)
    with pytest.raises(E.NotFound):
        client.get_secret_value(name, version_id=nul)
    assert client.get_secret_value(name).string == "s"


def test_a_service_closed_twice_closes_once(svc_pool: Pool, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Close is once (an ``hsmpool serve`` worker closes its service when the app's lifespan
    ends and again on its way out): the second call touches nothing. On PostgreSQL it used
    to checkpoint the audit log on the closed store and log a store outage."""
    from kms.audit import AuditLog
    from kms.store import open_store

    db = database_for(tmp_path / "kms.db")
    service = Kms(svc_pool, open_store(db), KmsSettings(database=db, audit_dir=None),
                  audit=AuditLog(tmp_path / "audit", "twice", sync=False), now=FakeClock())
    service.client("svc").create_key()
    with caplog.at_level("WARNING", logger="hsmpool.store"):
        service.close()
        service.close()
    assert not [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]


def test_a_bool_is_not_a_number(client: KmsClient) -> None:
    """True is an int to Python, not a version number, a page size or a byte count: a
    Validation error on every engine (found by test_any_argument_types_give_kms_errors on
    the PostgreSQL pass: set_min_decryption_version(key, True) reached the store, which
    refused a boolean for its integer column; SQLite had stored 1)."""
    k = client.create_key()
    client.rotate_key_on_demand(k.key_id)
    for call in (lambda: client.set_min_decryption_version(k.key_id, True),
                 lambda: client.list_keys(limit=True),
                 lambda: client.list_aliases(limit=True),
                 lambda: client.schedule_key_deletion(k.key_id, True),
                 lambda: client.generate_random(True),
                 lambda: client.generate_data_key(k.key_id, number_of_bytes=True)):
        with pytest.raises(E.Validation):
            call()
    assert client.describe_key(k.key_id).min_decrypt_version == 1
    assert client.set_min_decryption_version(k.key_id, 2).min_decrypt_version == 2


def test_tag_arguments_of_the_wrong_type(client: KmsClient) -> None:
    k = client.create_key()
    for bad in (True, 3, 2.5, "k=v", b"kv"):
        with pytest.raises(E.InvalidTag):
            client.tag_resource(k.key_id, bad)  # type: ignore[arg-type]
        with pytest.raises(E.InvalidTag):
            client.create_key(tags=bad)  # type: ignore[arg-type]
    for bad_keys in (None, 3, "team", [1], [None], {"team"}):
        with pytest.raises(E.Validation):
            client.untag_resource(k.key_id, bad_keys)  # type: ignore[arg-type]
    for bad_spec in ([1], {"a": 1}, 5, b"AES_256"):
        with pytest.raises(E.Validation):
            client.generate_data_key(k.key_id, bad_spec)  # type: ignore[arg-type]


def test_kms_open_from_a_configuration_file(svc_config: Path, tmp_path: Path) -> None:
    """Kms.open reads the [kms] section (database relative to the file, no audit), owns its
    pool, and a second open of the same file sees the first one's keys. (On the PostgreSQL
    pass the database is a URL, nothing relative.)"""
    cfg = tmp_path / "kms.toml"
    database = database_for(tmp_path / "data" / "kms.db") if POSTGRES else "data/kms.db"
    cfg.write_text(svc_config.read_text() + f'[kms]\ndatabase = "{database}"\n'
                   'audit_dir = false\nregion = "eu-central-1"\n'
                   '[kms.accounts]\nsvc = "123456789012"\n')
    with Kms.open(cfg) as service:
        c = service.client("svc")
        rec = c.create_key("SM4")
        assert rec.arn == f"arn:aws:kms:eu-central-1:123456789012:key/{rec.key_id}"
        ct = c.encrypt(rec.arn, b"opened").ciphertext_blob
        assert service.audit is None
    assert (tmp_path / "data" / "kms.db").is_file() is not POSTGRES
    with Kms.open(cfg) as again:
        c2 = again.client("svc")
        assert c2.decrypt(ct).plaintext == b"opened"
        with pytest.raises(E.NotFound):  # the default region's ARN is foreign here
            c2.describe_key(f"arn:aws:kms:us-east-1:123456789012:key/{rec.key_id}")
