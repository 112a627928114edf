"""Key versions, rotation (on demand and scheduled), the minimum decryption version, state
refusals, ciphertext tampering and the deletion purge, with a settable clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kms import AliasRecord, KeyRecord, KeyVersion, Kms, KmsClient
from kms import errors as E
from kms.model import KeyState
from tests.database import connect, database_of
from tests.kms.conftest import DAY, FakeClock

SYMMETRIC = ["SYMMETRIC_DEFAULT", "SM4"]


def version_blobs(kms: Kms, key_id: str) -> list[bytes | None]:
    """The wrapped blobs of a key's versions, read from the store's tables directly."""
    db = connect(database_of(kms.store))
    try:
        rows = db.execute("SELECT blob FROM key_versions WHERE key_id = ? ORDER BY number",
                          (key_id,)).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows]


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("spec", SYMMETRIC)
def test_old_ciphertexts_decrypt_after_on_demand_rotations(client: KmsClient, clock: FakeClock,
                                                           spec: str) -> None:
    k = client.create_key(spec)
    made: list[tuple[bytes, str, bytes]] = []
    for i in range(5):
        pt = f"plaintext {i}".encode()
        cur = client.describe_key(k.key_id).primary_version
        assert cur is not None
        made.append((client.encrypt(k.key_id, pt, {"i": str(i)}).ciphertext_blob, cur, pt))
        if i < 4:
            clock.advance(1)
            v = client.rotate_key_on_demand(k.arn)
            assert v.number == i + 2 and v.created == clock.t and v.version_id != cur
            assert client.describe_key(k.key_id).primary_version == v.version_id
    versions = client.list_key_rotations(k.key_id)
    assert [v.number for v in versions] == [1, 2, 3, 4, 5]
    assert [v.version_id for v in versions] == [m[1] for m in made]
    assert len({v.version_id for v in versions}) == 5
    for i, (ct, vid, pt) in enumerate(made):
        assert ct[1:17].hex() == vid
        out = client.decrypt(ct, {"i": str(i)})
        assert (out.plaintext, out.key_version) == (pt, vid)
    # the same plaintext under two versions gives unrelated ciphertexts
    assert made[0][0][18:] != made[1][0][18:]


@pytest.mark.parametrize("spec", ["RSA_2048", "ECC_NIST_P256", "SM2", "HMAC_256", "HMAC_SM3"])
def test_asymmetric_and_hmac_keys_do_not_rotate(client: KmsClient, spec: str) -> None:
    k = client.create_key(spec)
    with pytest.raises(E.UnsupportedOperation):
        client.rotate_key_on_demand(k.key_id)
    with pytest.raises(E.UnsupportedOperation):
        client.enable_key_rotation(k.key_id)
    assert [v.number for v in client.list_key_rotations(k.key_id)] == [1]


def test_scheduled_rotation_with_a_fake_clock(kms: Kms, client: KmsClient,
                                              clock: FakeClock) -> None:
    t0 = clock.t
    k = client.create_key()
    ct1 = client.encrypt(k.key_id, b"v1").ciphertext_blob
    # The service keeps 7..2560 days (AWS KMS's front end narrows it to 90..2560:
    # tests/server/test_aws_kms.py; Alibaba's to 7..730: tests/server/test_alibaba.py).
    for bad in (6, 2561, 0, "90", None, True):
        with pytest.raises(E.Validation):
            client.enable_key_rotation(k.key_id, bad)  # type: ignore[arg-type]
    r = client.enable_key_rotation(k.key_id, 90)
    assert r.rotation_enabled and r.rotation_period_days == 90
    assert r.next_rotation == t0 + 90 * DAY
    status = client.get_key_rotation_status(k.key_id)
    assert status.rotation_enabled and status.next_rotation == t0 + 90 * DAY

    clock.advance(89.9)
    assert kms.run_due()["rotated"] == []
    assert len(client.list_key_rotations(k.key_id)) == 1
    clock.advance(0.1)
    assert kms.run_due()["rotated"] == [k.key_id]
    assert kms.run_due()["rotated"] == []  # not twice
    rec = client.describe_key(k.key_id)
    assert rec.next_rotation == t0 + 180 * DAY
    ct2 = client.encrypt(k.key_id, b"v2").ciphertext_blob
    assert ct2[1:17] != ct1[1:17]

    # a long outage: one rotation, and the schedule stays on the period's grid
    clock.t = t0 + 290 * DAY
    assert kms.run_due()["rotated"] == [k.key_id]
    assert client.describe_key(k.key_id).next_rotation == t0 + 360 * DAY
    assert [v.number for v in client.list_key_rotations(k.key_id)] == [1, 2, 3]
    assert client.decrypt(ct1).plaintext == b"v1"
    assert client.decrypt(ct2).plaintext == b"v2"

    # disabled keys are not rotated; once enabled again the overdue rotation runs
    client.disable_key(k.key_id)
    clock.t = t0 + 400 * DAY
    assert kms.run_due()["rotated"] == []
    client.enable_key(k.key_id)
    assert kms.run_due()["rotated"] == [k.key_id]
    assert client.describe_key(k.key_id).next_rotation == t0 + 450 * DAY

    # rotation off: nothing more, ever
    off = client.disable_key_rotation(k.key_id)
    assert not off.rotation_enabled and off.next_rotation is None
    clock.t = t0 + 5000 * DAY
    assert kms.run_due()["rotated"] == []
    assert len(client.list_key_rotations(k.key_id)) == 4
    assert client.decrypt(ct1).plaintext == b"v1"


def test_scheduled_rotation_of_several_keys_and_periods(kms: Kms, client: KmsClient,
                                                        clock: FakeClock) -> None:
    t0 = clock.t
    a = client.create_key()
    b = client.create_key("SM4")
    c = client.create_key()  # rotation never enabled
    client.enable_key_rotation(a.key_id, 90)
    client.enable_key_rotation(b.key_id, 365)
    ct_b = client.encrypt(b.key_id, b"b1").ciphertext_blob
    rotated: dict[str, int] = {a.key_id: 0, b.key_id: 0, c.key_id: 0}
    for day in range(0, 800, 30):
        clock.t = t0 + day * DAY
        for kid in kms.run_due()["rotated"]:
            rotated[kid] += 1
    # last run at day 780: a rotated at 90, 180, ..., 720 (8 times); b at 365 and 730
    assert rotated == {a.key_id: 8, b.key_id: 2, c.key_id: 0}
    assert client.describe_key(a.key_id).next_rotation == t0 + 810 * DAY
    assert client.describe_key(b.key_id).next_rotation == t0 + 1095 * DAY
    assert client.decrypt(ct_b).plaintext == b"b1"


def test_on_demand_rotation_keeps_the_automatic_schedule(kms: Kms, client: KmsClient,
                                                         clock: FakeClock) -> None:
    """As in AWS KMS: an on-demand rotation does not move the automatic schedule."""
    t0 = clock.t
    k = client.create_key()
    client.enable_key_rotation(k.key_id, 90)
    clock.advance(80)
    client.rotate_key_on_demand(k.key_id)
    assert client.describe_key(k.key_id).next_rotation == t0 + 90 * DAY
    clock.advance(10)
    assert kms.run_due()["rotated"] == [k.key_id]
    assert [v.number for v in client.list_key_rotations(k.key_id)] == [1, 2, 3]


@pytest.mark.parametrize("spec", SYMMETRIC)
def test_minimum_decryption_version(client: KmsClient, spec: str) -> None:
    k = client.create_key(spec)
    cts = [client.encrypt(k.key_id, b"v1").ciphertext_blob]
    for n in (2, 3):
        client.rotate_key_on_demand(k.key_id)
        cts.append(client.encrypt(k.key_id, f"v{n}".encode()).ciphertext_blob)
    for bad in (0, 4, -1, "2", None, True):  # True: a bool is not a number (PostgreSQL refused it)
        with pytest.raises(E.Validation):
            client.set_min_decryption_version(k.key_id, bad)  # type: ignore[arg-type]
    assert client.set_min_decryption_version(k.key_id, 2).min_decrypt_version == 2
    assert client.describe_key(k.key_id).min_decrypt_version == 2
    with pytest.raises(E.InvalidCiphertext):
        client.decrypt(cts[0])
    with pytest.raises(E.InvalidCiphertext):
        client.re_encrypt(cts[0], k.key_id)
    assert client.decrypt(cts[1]).plaintext == b"v2"
    assert client.decrypt(cts[2]).plaintext == b"v3"
    client.set_min_decryption_version(k.key_id, 3)
    for ct in cts[:2]:
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(ct)
    # a rotation keeps the minimum; new ciphertexts are fine
    client.rotate_key_on_demand(k.key_id)
    ct4 = client.encrypt(k.key_id, b"v4").ciphertext_blob
    assert client.decrypt(ct4).plaintext == b"v4"
    assert client.decrypt(cts[2]).plaintext == b"v3"
    with pytest.raises(E.InvalidCiphertext):
        client.decrypt(cts[1])
    # lowering it again lets the old versions decrypt (the material was never shredded)
    client.set_min_decryption_version(k.key_id, 1)
    assert [client.decrypt(ct).plaintext for ct in cts] == [b"v1", b"v2", b"v3"]


# --------------------------------------------------------------------------- refusals


def _uses(client: KmsClient, spec: str, usage: str | None) -> list[Callable[[str], object]]:
    """Operations that use a key of this kind (each takes the key id)."""
    if spec in SYMMETRIC:
        return [lambda k: client.encrypt(k, b"x"), lambda k: client.generate_data_key(k),
                lambda k: client.generate_data_key_without_plaintext(k),
                lambda k: client.generate_data_key_pair(k, "ECC_NIST_P256"),
                lambda k: client.rotate_key_on_demand(k)]
    if spec.startswith("HMAC"):
        alg = "HMAC_SM3" if spec == "HMAC_SM3" else "HMAC_SHA_" + spec[-3:]
        return [lambda k: client.generate_mac(k, b"m", alg),
                lambda k: client.verify_mac(k, b"m", b"\0" * 32, alg)]
    if usage == "ENCRYPT_DECRYPT":
        alg = "SM2PKE" if spec == "SM2" else "RSAES_OAEP_SHA_256"
        return [lambda k: client.encrypt(k, b"x", encryption_algorithm=alg),
                lambda k: client.decrypt(b"\0" * 256, key_id=k, encryption_algorithm=alg),
                lambda k: client.get_public_key(k)]
    alg = {"SM2": "SM2DSA", "RSA_2048": "RSASSA_PSS_SHA_256"}.get(spec, "ECDSA_SHA_256")
    return [lambda k: client.sign(k, b"m", alg), lambda k: client.verify(k, b"m", b"s", alg),
            lambda k: client.get_public_key(k)]


KINDS = [("SYMMETRIC_DEFAULT", None), ("SM4", None), ("RSA_2048", "ENCRYPT_DECRYPT"),
         ("RSA_2048", "SIGN_VERIFY"), ("ECC_SECG_P256K1", None), ("SM2", "SIGN_VERIFY"),
         ("SM2", "ENCRYPT_DECRYPT"), ("HMAC_512", None), ("HMAC_SM3", None)]


@pytest.mark.parametrize(("spec", "usage"), KINDS)
def test_disabled_and_pending_deletion_keys_refuse_use(client: KmsClient, spec: str,
                                                       usage: str | None) -> None:
    k = client.create_key(spec, usage)
    ct = client.encrypt(k.key_id, b"x").ciphertext_blob if spec in SYMMETRIC else None
    other = client.create_key()
    ct_other = client.encrypt(other.key_id, b"o").ciphertext_blob
    uses = _uses(client, spec, usage)
    client.disable_key(k.key_id)
    for use in uses:
        with pytest.raises(E.Disabled):
            use(k.key_id)
    if ct is not None:
        with pytest.raises(E.Disabled):
            client.decrypt(ct)
        with pytest.raises(E.Disabled):
            client.re_encrypt(ct_other, k.key_id)  # as destination
        with pytest.raises(E.Disabled):
            client.re_encrypt(ct, other.key_id)  # as source
    assert client.describe_key(k.key_id).state is KeyState.DISABLED
    client.schedule_key_deletion(k.key_id, 7)
    for use in uses:
        with pytest.raises(E.InvalidState):
            use(k.key_id)
    if ct is not None:
        with pytest.raises(E.InvalidState):
            client.decrypt(ct)
        with pytest.raises(E.InvalidState):
            client.re_encrypt(ct_other, k.key_id)
    # metadata stays readable
    assert client.describe_key(k.key_id).state is KeyState.PENDING_DELETION
    assert len(client.list_key_rotations(k.key_id)) == 1
    client.cancel_key_deletion(k.key_id)
    client.enable_key(k.key_id)
    for use in uses[:1]:
        try:
            use(k.key_id)
        except (E.InvalidSignature, E.InvalidMac, E.InvalidCiphertext):
            pass  # the junk inputs of the verify/decrypt uses; the key itself is usable
    if ct is not None:
        assert client.decrypt(ct).plaintext == b"x"


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("spec", SYMMETRIC)
def test_every_byte_of_a_ciphertext_is_authenticated(client: KmsClient, spec: str) -> None:
    k = client.create_key(spec)
    other = client.create_key(spec)
    ctx = {"a": "b"}
    ct = client.encrypt(k.key_id, b"!", ctx).ciphertext_blob
    assert len(ct) == 18 + 12 + 1 + 16
    for i in range(len(ct)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(ct)
            bad[i] ^= mask
            with pytest.raises(E.InvalidCiphertext):
                client.decrypt(bytes(bad), ctx)
    for n in range(len(ct)):
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(ct[:n], ctx)
    for extra in (b"\0", ct[-16:]):
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(ct + extra, ctx)
    # the other algorithm byte, another key's version id, and a spliced body
    swapped = ct[:17] + bytes((3 - ct[17],)) + ct[18:]
    ct_other = client.encrypt(other.key_id, b"!", ctx).ciphertext_blob
    for bad_ct in (swapped, ct_other[:18] + ct[18:], ct[:18] + ct_other[18:]):
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(bad_ct, ctx)
        with pytest.raises(E.InvalidCiphertext):
            client.re_encrypt(bad_ct, other.key_id, ctx)
    assert client.decrypt(ct, ctx).plaintext == b"!"


def test_tampering_a_longer_ciphertext(client: KmsClient) -> None:
    k = client.create_key()
    pt = bytes(range(200))
    ct = client.encrypt(k.key_id, pt).ciphertext_blob
    for i in range(0, len(ct), 7):
        bad = bytearray(ct)
        bad[i] ^= 0x10
        with pytest.raises(E.InvalidCiphertext):
            client.decrypt(bytes(bad))
    assert client.decrypt(ct).plaintext == pt


# --------------------------------------------------------------------------- deletion


def test_deletion_purge_destroys_material(kms: Kms, client: KmsClient,
                                          clock: FakeClock) -> None:
    t0 = clock.t
    doomed = client.create_key()
    client.rotate_key_on_demand(doomed.key_id)
    doomed_sm4 = client.create_key("SM4")
    doomed_rsa = client.create_key("RSA_2048", "SIGN_VERIFY")
    keep = client.create_key()
    client.create_alias("alias/doomed", doomed.key_id)
    cts = {kid: client.encrypt(kid, b"gone").ciphertext_blob
           for kid in (doomed.key_id, doomed_sm4.key_id)}
    ct_keep = client.encrypt(keep.key_id, b"kept").ciphertext_blob
    for kid, days in ((doomed.key_id, 7), (doomed_sm4.key_id, 10), (doomed_rsa.key_id, 30)):
        assert client.schedule_key_deletion(kid, days).deletion_date == t0 + days * DAY
    assert all(b is not None for b in version_blobs(kms, doomed.key_id))

    clock.t = t0 + 7 * DAY - 1
    assert kms.run_due()["purged"] == []
    assert client.describe_key(doomed.key_id).state is KeyState.PENDING_DELETION
    clock.t = t0 + 7 * DAY
    assert kms.run_due()["purged"] == [doomed.key_id]
    for form in (doomed.key_id, doomed.arn, "alias/doomed"):
        with pytest.raises(E.NotFound):
            client.describe_key(form)
    with pytest.raises(E.NotFound):
        client.cancel_key_deletion(doomed.key_id)
    with pytest.raises(E.InvalidCiphertext):
        client.decrypt(cts[doomed.key_id])
    assert version_blobs(kms, doomed.key_id) == [None, None]  # rows kept, material shredded
    assert client.list_aliases().items == ()
    listed = {r.key_id for r in client.list_keys().items}
    assert doomed.key_id not in listed and keep.key_id in listed
    with pytest.raises(E.InvalidState):  # still pending deletion
        client.decrypt(cts[doomed_sm4.key_id])

    clock.t = t0 + 30 * DAY
    assert sorted(kms.run_due()["purged"]) == sorted([doomed_sm4.key_id, doomed_rsa.key_id])
    assert kms.run_due()["purged"] == []  # purged keys are not purged again
    for kid in (doomed_sm4.key_id, doomed_rsa.key_id):
        assert version_blobs(kms, kid) == [None]
        with pytest.raises(E.NotFound):
            client.describe_key(kid)
    with pytest.raises(E.InvalidCiphertext):
        client.decrypt(cts[doomed_sm4.key_id])
    with pytest.raises(E.NotFound):
        client.sign(doomed_rsa.key_id, b"m", "RSASSA_PSS_SHA_256")
    # the untouched key is intact, and the alias name is free again
    assert version_blobs(kms, keep.key_id)[0] is not None
    assert client.decrypt(ct_keep).plaintext == b"kept"
    client.create_alias("alias/doomed", keep.key_id)
    assert client.describe_key("alias/doomed").key_id == keep.key_id


def test_purge_is_seen_by_a_fresh_service(kms: Kms, client: KmsClient, clock: FakeClock,
                                          tmp_path: Path) -> None:
    from tests.kms.conftest import make_kms

    k = client.create_key("SM4")
    ct = client.encrypt(k.key_id, b"x").ciphertext_blob
    client.schedule_key_deletion(k.key_id, 7)
    clock.advance(8)
    assert kms.run_due()["purged"] == [k.key_id]
    fresh = make_kms(kms.pool, database_of(kms.store), clock)
    try:
        c2 = fresh.client("svc")
        with pytest.raises(E.NotFound):
            c2.describe_key(k.key_id)
        with pytest.raises(E.InvalidCiphertext):
            c2.decrypt(ct)
        assert fresh.run_due()["purged"] == []
    finally:
        fresh.close()


def test_cancelled_deletion_keeps_material(kms: Kms, client: KmsClient,
                                           clock: FakeClock) -> None:
    k = client.create_key("SM4")
    ct = client.encrypt(k.key_id, b"saved").ciphertext_blob
    client.schedule_key_deletion(k.key_id, 7)
    clock.advance(6)
    assert client.cancel_key_deletion(k.key_id).state is KeyState.DISABLED
    clock.advance(60)
    assert kms.run_due()["purged"] == []
    assert all(b is not None for b in version_blobs(kms, k.key_id))
    client.enable_key(k.key_id)
    assert client.decrypt(ct).plaintext == b"saved"


# --------------------------------------------------------------------------- cache coherence


def test_a_slow_writer_does_not_resurrect_an_older_record(kms: Kms, client: KmsClient,
                                                           clock: FakeClock) -> None:
    """Thread A enables a key and is held between its store commit and its cache update;
    meanwhile another process changes and disables the key (a second service on the same
    store: in one process the write lock would make them wait for A). When A resumes, its
    service must still see the disabled key (the stored truth), not A's older "enabled"
    record."""
    from tests.kms.conftest import make_kms

    other = make_kms(kms.pool, database_of(kms.store), clock)
    other_client = other.client(client.instance_name)
    k = client.create_key()
    client.disable_key(k.key_id)
    store = kms.store
    real = store.update_key
    committed, resume = threading.Event(), threading.Event()
    slow: list[threading.Thread] = []

    def held(old: KeyRecord, new: KeyRecord, version: KeyVersion | None = None) -> None:
        real(old, new, version)
        if threading.current_thread() in slow:
            committed.set()
            resume.wait(30)

    store.update_key = held  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def enable() -> None:
        try:
            client.enable_key(k.key_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    a = threading.Thread(target=enable)
    slow.append(a)
    a.start()
    try:
        assert committed.wait(30)
        assert other_client.update_key_description(k.key_id, "changed").state \
            is KeyState.ENABLED
        assert other_client.disable_key(k.key_id).state is KeyState.DISABLED
    finally:
        resume.set()
        a.join(30)
        other.close()
    assert not a.is_alive() and not errors
    assert store.get_key(k.key_id).state is KeyState.DISABLED  # type: ignore[union-attr]
    rec = client.describe_key(k.key_id)
    assert (rec.state, rec.description) == (KeyState.DISABLED, "changed")
    with pytest.raises(E.Disabled):
        client.encrypt(k.key_id, b"must not work")


def test_a_slow_alias_writer_does_not_resurrect_an_older_target(kms: Kms,
                                                                client: KmsClient) -> None:
    """The same for aliases: A moves an alias and is held after its store write; meanwhile
    the alias moves again. The alias must resolve to where the store says it points."""
    keys = [client.create_key() for _ in range(3)]
    client.create_alias("alias/moving", keys[0].key_id)
    assert client.describe_key("alias/moving").key_id == keys[0].key_id  # cached now
    store = kms.store
    real = store.put_alias
    committed, resume = threading.Event(), threading.Event()
    slow: list[threading.Thread] = []

    def held(alias: AliasRecord, *, create: bool) -> None:
        real(alias, create=create)
        if threading.current_thread() in slow:
            committed.set()
            resume.wait(30)

    store.put_alias = held  # type: ignore[method-assign]
    a = threading.Thread(target=lambda: client.update_alias("alias/moving", keys[1].key_id))
    slow.append(a)
    a.start()
    try:
        assert committed.wait(30)
        client.update_alias("alias/moving", keys[2].key_id)
    finally:
        resume.set()
        a.join(30)
    stored = store.get_alias("svc", "alias/moving")
    assert stored is not None and stored.key_id == keys[2].key_id
    assert client.describe_key("alias/moving").key_id == keys[2].key_id
    assert client.encrypt("alias/moving", b"x").key_id == keys[2].arn


@pytest.mark.parametrize("spec", SYMMETRIC)
def test_threads_encrypt_and_decrypt_while_one_rotates(client: KmsClient, spec: str) -> None:
    """Readers never fail while the key rotates under them, every ciphertext made during the
    rotations decrypts, and the versions are numbered without gaps."""
    k = client.create_key(spec)
    made: list[tuple[bytes, bytes, dict[str, str]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def reader(t: int) -> None:
        i = 0
        try:
            while not stop.is_set() or i < 20:
                pt, ctx = f"t{t}-{i}".encode(), {"t": str(t), "i": str(i)}
                ct = client.encrypt(k.key_id, pt, ctx).ciphertext_blob
                assert client.decrypt(ct, ctx).plaintext == pt
                with lock:
                    made.append((ct, pt, ctx))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(15):
            client.rotate_key_on_demand(k.key_id)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    listed = client.list_key_rotations(k.key_id)
    assert [v.number for v in listed] == list(range(1, 17))
    assert client.describe_key(k.key_id).primary_version == listed[-1].version_id
    used = set()
    for ct, pt, ctx in made:
        out = client.decrypt(ct, ctx)
        assert out.plaintext == pt
        used.add(out.key_version)
    assert used <= {v.version_id for v in listed}
    after = client.encrypt(k.key_id, b"last").ciphertext_blob
    assert after[1:17].hex() == listed[-1].version_id  # the cache follows the last rotation


def test_concurrent_writers_of_one_key_all_succeed(client: KmsClient) -> None:
    """Threads of one process rotating and changing the same key: every call succeeds (a
    write conflict inside one service is not the caller's problem), nothing is lost."""
    k = client.create_key()
    errors: list[BaseException] = []
    rotated: list[int] = []
    lock = threading.Lock()

    def rotator() -> None:
        try:
            for _ in range(8):
                v = client.rotate_key_on_demand(k.key_id)
                with lock:
                    rotated.append(v.number)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def describer(t: int) -> None:
        try:
            for i in range(8):
                client.update_key_description(k.key_id, f"t{t}-{i}")
                client.tag_resource(k.key_id, {f"t{t}": str(i)})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rotator) for _ in range(8)]
    threads += [threading.Thread(target=describer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, sorted({repr(e) for e in errors})
    assert sorted(rotated) == list(range(2, 66))
    listed = client.list_key_rotations(k.key_id)
    assert [v.number for v in listed] == list(range(1, 66))
    rec = client.describe_key(k.key_id)
    assert rec.primary_version == listed[-1].version_id
    assert dict(rec.tags) == {f"t{t}": "7" for t in range(4)}


def test_pagination_across_purged_keys(kms: Kms, client: KmsClient, clock: FakeClock) -> None:
    keys = sorted(client.create_key().key_id for _ in range(9))
    doomed = keys[1:4] + keys[6:7]
    for kid in doomed:
        client.schedule_key_deletion(kid, 7)
    clock.advance(7)
    assert sorted(kms.run_due()["purged"]) == sorted(doomed)
    live = [k for k in keys if k not in doomed]
    for limit in (1, 2, 3, 100):
        seen: list[str] = []
        marker: str | None = None
        for _ in range(len(keys) + 2):
            page = client.list_keys(limit=limit, marker=marker)
            assert len(page.items) <= limit
            seen += [r.key_id for r in page.items]
            marker = page.next_marker
            if marker is None:
                break
        assert marker is None and seen == live
