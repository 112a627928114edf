"""Instances are cryptographically isolated: blobs and domain keys never cross partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmpool import ForeignBlobError, InvalidBlobError, KeyBlob, KeySpec, Pool
from hsmpool.kek import any_domain_keys
from tests.conftest import pool_toml


@pytest.fixture(scope="module")
def pool(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    cfg = tmp_path_factory.mktemp("iso") / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"a": [0, 1, 2], "b": [3, 4]}, extra_tokens=[5]))
    with Pool.open(cfg) as p:
        yield p


@pytest.mark.parametrize("spec", [KeySpec.AES_256, KeySpec.EC_P256, KeySpec.HMAC_SHA256])
def test_b_cannot_use_a_blobs(pool: Pool, spec: KeySpec) -> None:
    a, b = pool.instance("a"), pool.instance("b")
    blob = a.generate(spec)
    with pytest.raises(ForeignBlobError):
        if spec is KeySpec.AES_256:
            b.encrypt(blob, b"x")
        elif spec is KeySpec.HMAC_SHA256:
            b.hmac(blob, b"x")
        else:
            b.public_key(blob)


def test_forged_header_still_fails_on_every_b_token(pool: Pool) -> None:
    """Rewriting A's blob to carry B's domain-key id gets past the header check, and then
    fails the key-wrap integrity check on each of B's tokens: B's KEK is not A's."""
    a, b = pool.instance("a"), pool.instance("b")
    blob = a.generate(KeySpec.AES_256)
    forged = KeyBlob.build(blob.spec, b.kek_ids["kek"], b"", blob.wrapped)
    for member in ("t3", "t4"):
        with pytest.raises(InvalidBlobError) as info:
            b.only(member).encrypt(forged, b"x")
        assert not isinstance(info.value, ForeignBlobError)
    secret = a.import_secret(b"k" * 16)
    forged = KeyBlob.build(KeySpec.SECRET, b.kek_ids["swkek"], b"", secret.wrapped)
    with pytest.raises(InvalidBlobError):
        b.export_secret(forged)


def test_domain_keys_live_only_in_their_partition(pool: Pool) -> None:
    # Other test files use the same tokens under other instance names; only "a" and "b"
    # matter here: each instance's keys on every token of its partition, on no other.
    a_labels = {f"hsmpool:{d}:a" for d in ("kek", "swkek")}
    b_labels = {f"hsmpool:{d}:b" for d in ("kek", "swkek")}
    for name in ("t0", "t1", "t2"):
        labels = set(any_domain_keys(pool.members[name]))
        assert a_labels <= labels and not b_labels & labels
    for name in ("t3", "t4"):
        labels = set(any_domain_keys(pool.members[name]))
        assert b_labels <= labels and not a_labels & labels
    assert pool.instance("a").kek_ids["kek"] != pool.instance("b").kek_ids["kek"]


def test_domain_keys_are_sensitive_and_wrap_only(pool: Pool) -> None:
    from hsmpool import _p11 as p

    m = pool.members["t1"]
    h = m.domain_keys["kek"]
    for attr, want in ((p.CKA_SENSITIVE, 1), (p.CKA_WRAP_WITH_TRUSTED, 1), (p.CKA_ENCRYPT, 0),
                       (p.CKA_DECRYPT, 0), (p.CKA_WRAP, 1), (p.CKA_UNWRAP, 1)):
        assert m.module.get_attribute(m.anchor, h, attr) == bytes([want]), hex(attr)
    with pytest.raises(p.P11Error) as info:
        m.module.get_attribute(m.anchor, h, p.CKA_VALUE)
    assert info.value.name == "CKR_ATTRIBUTE_SENSITIVE"


def test_adding_a_token_copies_the_kek(pool: Pool) -> None:
    b = pool.instance("b")
    spare = pool.members["t5"]
    if spare.instance != "b":
        blob = b.generate(KeySpec.AES_256)
        ct = b.encrypt(blob, b"before")
        b.add_member(spare)
        assert b.only("t5").decrypt(blob, ct) == b"before"
    labels = set(any_domain_keys(spare))
    assert {"hsmpool:kek:b", "hsmpool:swkek:b"} <= labels and "hsmpool:kek:a" not in labels
    blob = b.only("t5").generate(KeySpec.EC_P256)
    assert b.only("t3").public_key(blob) == b.only("t5").public_key(blob)


def test_processes_opening_a_new_instance_at_once_agree(token_dir: Path, tmp_path: Path) -> None:
    """Three processes open the same brand-new instance at the same moment: one domain key
    per domain results, and every process uses it."""
    import subprocess
    import sys
    import uuid

    name = "race" + uuid.uuid4().hex[:8]
    cfg = tmp_path / "race.toml"
    cfg.write_text(pool_toml(token_dir, {name: [6, 7]}))
    code = ("import sys; from hsmpool import Pool; p = Pool.open(sys.argv[1]); "
            "print(p.instance(sys.argv[2]).kek_ids['kek'].hex()); p.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cfg), name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1
    with Pool.open(cfg) as pool:
        for m in pool.instance(name).members:
            labels = any_domain_keys(m)
            assert labels.count(f"hsmpool:kek:{name}") == 1
