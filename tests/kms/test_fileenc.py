"""Streaming file encryption (kms.fileenc) through the real service: SoftHSM2 tokens (instance
"files" on token 6), a SQLite store and an audit trail under a temporary folder.

Every kind of edit to an encrypted file must fail with InvalidCiphertext, and the path helper
must never leave plaintext at the output path when it does.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmpool.gm import SM4GCM
from kms import Kms, KmsClient, KmsError
from kms import fileenc as fe
from kms.errors import Disabled, InvalidCiphertext, InvalidKeyUsage, Validation
from tests.conftest import pool_toml
from tests.database import database_line

INSTANCE = "files"
C = 256  # a small chunk size, so that files of several chunks stay small
CTX = {"purpose": "backup", "host": "db1"}
SPECS = ["SYMMETRIC_DEFAULT", "SM4"]


@pytest.fixture(scope="module")
def service(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kms]:
    d = tmp_path_factory.mktemp("fileenc")
    cfg = d / "hsmpool.toml"
    cfg.write_text(pool_toml(token_dir, {INSTANCE: [6]})
                   + '[kms]\n' + database_line(d / "kms.db") + 'audit_dir = "audit"\n')
    with Kms.open(cfg) as kms:
        yield kms


@pytest.fixture(scope="module")
def client(service: Kms) -> KmsClient:
    return service.client(INSTANCE)


@pytest.fixture(scope="module")
def keys(client: KmsClient) -> dict[str, str]:
    return {spec: client.create_key(spec).key_id for spec in SPECS}


@pytest.fixture(params=SPECS)
def key(request: pytest.FixtureRequest, keys: dict[str, str]) -> str:
    return keys[request.param]


def enc(client: KmsClient, key_id: str, data: bytes, context: dict[str, str] | None = CTX,
        chunk: int = C) -> bytes:
    out = io.BytesIO()
    fe.encrypt_file(client, key_id, io.BytesIO(data), out, context, chunk)
    return out.getvalue()


def dec(client: KmsClient, blob: bytes, context: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    fe.decrypt_file(client, io.BytesIO(blob), out, context)
    return out.getvalue()


def layout(blob: bytes) -> tuple[int, list[tuple[int, int]]]:
    """The header length and the (start, end) offsets of every chunk."""
    header = fe.read_header(io.BytesIO(blob))
    seg = header.chunk_size + fe.TAG_LEN
    pos, chunks = len(header), []
    while pos < len(blob):
        chunks.append((pos, min(pos + seg, len(blob))))
        pos += seg
    return len(header), chunks


def flip(blob: bytes, i: int) -> bytes:
    b = bytearray(blob)
    b[i] ^= 0x01
    return bytes(b)


def assert_invalid(client: KmsClient, blob: bytes, context: dict[str, str] | None = None
                   ) -> InvalidCiphertext:
    with pytest.raises(InvalidCiphertext) as info:
        dec(client, blob, context)
    return info.value


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 3 * C, 3 * C + 7, 10 * C + 100])
def test_round_trip(client: KmsClient, key: str, size: int) -> None:
    data = os.urandom(size)
    blob = enc(client, key, data)
    assert dec(client, blob) == data
    assert dec(client, blob, CTX) == data
    hlen, chunks = layout(blob)
    n = max(1, -(-size // C))
    assert len(chunks) == n
    assert len(blob) == hlen + size + n * fe.TAG_LEN
    # every chunk but the last is full; the last holds 1..C bytes (0 only for an empty file)
    assert all(e - s == C + fe.TAG_LEN for s, e in chunks[:-1])
    last = chunks[-1][1] - chunks[-1][0] - fe.TAG_LEN
    assert last == (0 if size == 0 else size - (n - 1) * C)


def test_cipher_follows_the_key_spec(client: KmsClient, keys: dict[str, str]) -> None:
    for spec, want in (("SYMMETRIC_DEFAULT", "AES_256_GCM"), ("SM4", "SM4_GCM")):
        out = io.BytesIO()
        res = fe.encrypt_file(client, keys[spec], io.BytesIO(b"x" * 1000), out, CTX, C)
        assert res.cipher == want
        assert (res.chunks, res.plaintext_bytes, res.ciphertext_bytes) == (4, 1000,
                                                                           len(out.getvalue()))
        assert res.key_id.endswith(keys[spec])
        header = fe.read_header(io.BytesIO(out.getvalue()))
        assert header.cipher_name == want
        assert (header.chunk_size, header.context) == (C, CTX)
        back = io.BytesIO()
        dres = fe.decrypt_file(client, io.BytesIO(out.getvalue()), back)
        assert (dres.cipher, dres.key_id, dres.chunks, dres.plaintext_bytes) == (
            want, res.key_id, 4, 1000)
        assert dres.key_version is not None


def test_default_chunk_size_through_the_path_helpers(client: KmsClient, key: str,
                                                     tmp_path: Path) -> None:
    data = os.urandom(2 * fe.DEFAULT_CHUNK_SIZE + 1)
    (tmp_path / "in").write_bytes(data)
    seen: list[int] = []
    res = fe.encrypt_path(client, key, tmp_path / "in", tmp_path / "ct", CTX,
                          progress=seen.append)
    assert res.chunks == 3 and seen == [1 << 20, 2 << 20, len(data)]
    ct = (tmp_path / "ct").read_bytes()
    assert len(ct) == res.ciphertext_bytes
    seen.clear()
    fe.decrypt_path(client, tmp_path / "ct", tmp_path / "out", progress=seen.append)
    assert (tmp_path / "out").read_bytes() == data
    assert seen[-1] == len(ct) and seen == sorted(seen) and len(seen) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "in", "out"]
    assert (tmp_path / "out").stat().st_mode & 0o077 == 0  # plaintext: owner only


def test_fresh_data_key_and_nonce_prefix_per_file(client: KmsClient, key: str) -> None:
    data = bytes(3 * C)
    a, b = enc(client, key, data), enc(client, key, data)
    ha, hb = fe.read_header(io.BytesIO(a)), fe.read_header(io.BytesIO(b))
    assert ha.wrapped_key != hb.wrapped_key and ha.nonce_prefix != hb.nonce_prefix
    _, ca = layout(a)
    _, cb = layout(b)
    assert all(a[s:e] != b[s2:e2] for (s, e), (s2, e2) in zip(ca, cb, strict=True))
    assert data not in a


def test_the_format_is_the_documented_stream_construction(client: KmsClient,
                                                          keys: dict[str, str]) -> None:
    """Recompute every chunk from the documented nonce and AAD rules with the data key."""
    data = os.urandom(2 * C + 10)
    for spec in SPECS:
        blob = enc(client, keys[spec], data)
        header = fe.read_header(io.BytesIO(blob))
        assert blob[:8] == b"\x89HSMPFE\n" and blob[8] == 1
        dk = client.decrypt(header.wrapped_key, CTX).plaintext
        aead: AESGCM | SM4GCM = AESGCM(dk) if spec == "SYMMETRIC_DEFAULT" else SM4GCM(dk)
        assert len(dk) == (32 if spec == "SYMMETRIC_DEFAULT" else 16)
        h = hashlib.sha256(blob[:len(header)]).digest()
        _, chunks = layout(blob)
        for i, (s, e) in enumerate(chunks):
            final = i == len(chunks) - 1
            nonce = header.nonce_prefix + i.to_bytes(4, "big") + bytes([final])
            aad = h + i.to_bytes(8, "big") + bytes([final])
            assert aead.encrypt(nonce, data[i * C:(i + 1) * C], aad) == blob[s:e]


def test_short_reads_from_a_pipe(client: KmsClient, key: str) -> None:
    class Trickle(io.RawIOBase):
        """At most 7 bytes per read, like a slow pipe."""

        def __init__(self, data: bytes) -> None:
            self.src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            chunk = self.src.read(min(7, len(b)))
            b[:len(chunk)] = chunk
            return len(chunk)

    data = os.urandom(5 * C + 3)
    out = io.BytesIO()
    fe.encrypt_file(client, key, cast(BinaryIO, Trickle(data)), out, CTX, C)
    back = io.BytesIO()
    fe.decrypt_file(client, cast(BinaryIO, Trickle(out.getvalue())), back)
    assert back.getvalue() == data


# --- tampering --------------------------------------------------------------------------


@pytest.fixture(params=[3 * C + 5, 4 * C], ids=["partial-last", "full-last"])
def sample(request: pytest.FixtureRequest, client: KmsClient, key: str
           ) -> tuple[bytes, bytes]:
    data = os.urandom(request.param)
    return data, enc(client, key, data)


def test_every_header_byte_is_protected(client: KmsClient, sample: tuple[bytes, bytes]
                                        ) -> None:
    _, blob = sample
    hlen, _ = layout(blob)
    for i in range(hlen):
        assert_invalid(client, flip(blob, i))


def test_flipped_bytes_in_every_chunk_and_tag(client: KmsClient, sample: tuple[bytes, bytes]
                                              ) -> None:
    _, blob = sample
    _, chunks = layout(blob)
    assert len(chunks) == 4
    for idx, (s, e) in enumerate(chunks):
        for pos in (s, (s + e) // 2, e - fe.TAG_LEN - 1, e - fe.TAG_LEN, e - 1):
            err = assert_invalid(client, flip(blob, pos))
            assert f"chunk {idx}" in err.message


def test_truncation(client: KmsClient, sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    hlen, chunks = layout(blob)
    cuts = {0, 1, 8, 15, 16, hlen - 1, hlen, hlen + 1, len(blob) - 1, len(blob) - fe.TAG_LEN}
    cuts |= {s for s, _ in chunks}  # exactly at every chunk boundary
    cuts |= {s + fe.TAG_LEN for s, _ in chunks} | {s + 100 for s, _ in chunks}
    for cut in sorted(c for c in cuts if 0 <= c < len(blob)):
        assert_invalid(client, blob[:cut])


def test_dropping_the_final_chunk(client: KmsClient, sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    _, chunks = layout(blob)
    s, _ = chunks[-1]
    err = assert_invalid(client, blob[:s])
    assert "chunk 2" in err.message  # the last remaining chunk fails as a final chunk


@pytest.mark.parametrize("extra", [b"\0", b"x" * fe.TAG_LEN, b"y" * (C + fe.TAG_LEN)])
def test_appended_bytes(client: KmsClient, sample: tuple[bytes, bytes], extra: bytes) -> None:
    _, blob = sample
    assert_invalid(client, blob + extra)


def test_appending_a_copy_of_the_last_chunk(client: KmsClient, sample: tuple[bytes, bytes]
                                            ) -> None:
    _, blob = sample
    _, chunks = layout(blob)
    s, e = chunks[-1]
    assert_invalid(client, blob + blob[s:e])


def test_reordered_duplicated_and_removed_chunks(client: KmsClient,
                                                 sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    hlen, chunks = layout(blob)
    parts = [blob[s:e] for s, e in chunks]
    head = blob[:hlen]
    for order in ([1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 1, 3], [0, 0, 2, 3], [0, 2, 3],
                  [1, 2, 3], [0, 1, 2, 2, 3]):
        assert_invalid(client, head + b"".join(parts[i] for i in order))
    if len(parts[3]) == len(parts[2]):  # a full last chunk can swap places with another
        assert_invalid(client, head + parts[0] + parts[1] + parts[3] + parts[2])


def test_chunk_spliced_from_another_file_with_the_same_key(client: KmsClient, key: str) -> None:
    data = os.urandom(3 * C + 9)
    a, b = enc(client, key, data), enc(client, key, data)
    hlen, chunks = layout(a)
    for s, e in chunks:  # same position, same key, same context, same plaintext
        assert_invalid(client, a[:s] + b[s:e] + a[e:])
    hb, _ = layout(b)
    assert_invalid(client, b[:hb] + a[hlen:])  # B's header on A's chunks
    assert_invalid(client, a[:hlen] + b[hb:])
    assert dec(client, a) == dec(client, b) == data


def test_not_an_encrypted_file(client: KmsClient) -> None:
    for blob in (b"", b"hello", os.urandom(4096), b"\x89HSMPFE\n\x02" + bytes(100)):
        assert_invalid(client, blob)
    assert "bad magic" in assert_invalid(client, b"x" * 64).message
    assert "version 2" in assert_invalid(client, b"\x89HSMPFE\n\x02" + bytes(100)).message


def test_an_empty_final_chunk_after_full_chunks_is_refused(client: KmsClient, key: str) -> None:
    """The encryptor never writes one (a full last chunk is the final one), so the reader
    refuses it even when its tag is right."""
    blob = enc(client, key, bytes(2 * C))
    header = fe.read_header(io.BytesIO(blob))
    dk = client.decrypt(header.wrapped_key, CTX).plaintext
    aead: AESGCM | SM4GCM = AESGCM(dk) if len(dk) == 32 else SM4GCM(dk)
    h, prefix = header.digest, header.nonce_prefix

    def seal(i: int, final: bool, data: bytes) -> bytes:
        f = bytes([final])
        return aead.encrypt(prefix + i.to_bytes(4, "big") + f, data, h + i.to_bytes(8, "big") + f)

    raw = header.raw
    assert raw + seal(0, False, bytes(C)) + seal(1, True, bytes(C)) == blob
    assert_invalid(client, raw + seal(0, False, bytes(C)) + seal(1, False, bytes(C))
                   + seal(2, True, b""))


# --- encryption context -----------------------------------------------------------------


def test_encryption_context(client: KmsClient, key: str) -> None:
    data = os.urandom(C + 1)
    blob = enc(client, key, data, {"a": "1", "b": "2"})
    assert dec(client, blob) == data
    assert dec(client, blob, {"b": "2", "a": "1"}) == data
    for wrong in ({"a": "2", "b": "2"}, {"a": "1"}, {}, {"a": "1", "b": "2", "c": "3"}):
        err = assert_invalid(client, blob, wrong)
        assert "context" in err.message
        assert "1" not in err.message.replace("context", "")  # no context values in messages
    # rewrite the stored context to another well-formed one: the data key will not unwrap
    i = blob.index(b"\x00\x00\x00\x01a\x00\x00\x00\x011")
    edited = blob[:i] + b"\x00\x00\x00\x01a\x00\x00\x00\x019" + blob[i + 10:]
    assert fe.read_header(io.BytesIO(edited)).context == {"a": "9", "b": "2"}
    assert_invalid(client, edited)
    # no context at all
    blob = enc(client, key, data, None)
    assert fe.read_header(io.BytesIO(blob)).context == {}
    assert dec(client, blob) == dec(client, blob, {}) == data
    assert_invalid(client, blob, {"a": "1"})


def test_secret_context_keys_are_refused(client: KmsClient, key: str) -> None:
    with pytest.raises(Validation, match="clear"):
        enc(client, key, b"x", {"secret:token": "hunter2"})


def test_non_canonical_context_is_refused() -> None:
    good = fe.parse_context(b"\0\0\0\x01a\0\0\0\x011\0\0\0\x01b\0\0\0\x012")
    assert good == {"a": "1", "b": "2"}
    for raw in (b"\0\0\0\x01b\0\0\0\x012\0\0\0\x01a\0\0\0\x011",  # unsorted
                b"\0\0\0\x01a\0\0\0\x011\0\0\0\x01a\0\0\0\x012",  # duplicate key
                b"\0\0\0\x05a", b"\0\0\0", b"\0\0\0\x01\xff\0\0\0\x00"):
        with pytest.raises(InvalidCiphertext):
            fe.parse_context(raw)


# --- keys and states --------------------------------------------------------------------


def test_keys_that_cannot_encrypt_files(client: KmsClient) -> None:
    sign = client.create_key("ECC_NIST_P256")
    with pytest.raises(InvalidKeyUsage):
        enc(client, sign.key_id, b"x")
    rsa = client.create_key("RSA_2048", "ENCRYPT_DECRYPT")
    with pytest.raises(InvalidKeyUsage):
        enc(client, rsa.key_id, b"x")
    with pytest.raises(Validation):
        fe.encrypt_file(client, "alias/nope", io.BytesIO(b""), io.BytesIO(), cipher="DES")
    for bad in (0, 63, fe.MAX_CHUNK_SIZE + 1):
        with pytest.raises(Validation):
            enc(client, sign.key_id, b"x", chunk=bad)


def test_alias_rotation_and_disabled_key(client: KmsClient) -> None:
    k = client.create_key("SM4")
    client.create_alias("alias/files-test", k.key_id)
    data = os.urandom(2 * C)
    before = enc(client, "alias/files-test", data)
    client.rotate_key_on_demand(k.key_id)
    after = enc(client, "alias/files-test", data)
    assert dec(client, before) == dec(client, after) == data
    client.disable_key(k.key_id)
    with pytest.raises(Disabled):
        dec(client, before)
    with pytest.raises(Disabled):
        enc(client, k.key_id, data)
    client.enable_key(k.key_id)
    assert dec(client, before) == data


def test_explicit_cipher_skips_describe(client: KmsClient, keys: dict[str, str]) -> None:
    """An AES CMK may protect an SM4-GCM file when the caller asks for it."""
    out = io.BytesIO()
    res = fe.encrypt_file(client, keys["SYMMETRIC_DEFAULT"], io.BytesIO(b"abc" * 200), out,
                          None, C, cipher="SM4_GCM")
    assert res.cipher == "SM4_GCM"
    assert dec(client, out.getvalue()) == b"abc" * 200


# --- the output path --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip-first", "flip-last", "truncate", "append"])
def test_output_never_holds_partial_plaintext(client: KmsClient, key: str, tmp_path: Path,
                                              damage: str) -> None:
    data = os.urandom(6 * C + 1)
    blob = enc(client, key, data)
    _, chunks = layout(blob)
    bad = {"flip-first": flip(blob, chunks[0][0]), "flip-last": flip(blob, len(blob) - 1),
           "truncate": blob[:chunks[-1][0]], "append": blob + b"\0"}[damage]
    (tmp_path / "bad.enc").write_bytes(bad)
    with pytest.raises(InvalidCiphertext):
        fe.decrypt_path(client, tmp_path / "bad.enc", tmp_path / "new.txt")
    assert not (tmp_path / "new.txt").exists()
    (tmp_path / "old.txt").write_bytes(b"previous contents")
    with pytest.raises(InvalidCiphertext):
        fe.decrypt_path(client, tmp_path / "bad.enc", tmp_path / "old.txt")
    assert (tmp_path / "old.txt").read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.enc", "old.txt"]
    # and the intact file does land there
    (tmp_path / "good.enc").write_bytes(blob)
    fe.decrypt_path(client, tmp_path / "good.enc", tmp_path / "old.txt")
    assert (tmp_path / "old.txt").read_bytes() == data


def test_stream_decryption_writes_only_verified_chunks(client: KmsClient, key: str) -> None:
    data = os.urandom(4 * C)
    blob = enc(client, key, data)
    _, chunks = layout(blob)
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertext):
        fe.decrypt_file(client, io.BytesIO(flip(blob, chunks[2][0])), out)
    assert out.getvalue() == data[:2 * C]  # chunks 0 and 1 verified, nothing of chunk 2


def test_errors_carry_no_plaintext_or_key_material(client: KmsClient, key: str) -> None:
    data = b"TOP-SECRET-PAYLOAD" * 40
    blob = enc(client, key, data, {"k": "v"})
    header = fe.read_header(io.BytesIO(blob))
    dk = client.decrypt(header.wrapped_key, {"k": "v"}).plaintext
    for bad in (flip(blob, len(blob) - 1), blob[:-1], blob + b"!"):
        try:
            dec(client, bad)
        except KmsError as exc:
            text = str(exc) + exc.message
            assert "TOP-SECRET" not in text and dk.hex() not in text
        else:
            raise AssertionError("tampered file decrypted")


def test_failed_chunks_leave_no_crashing_cycles(tmp_path: Path, token_dir: Path) -> None:
    """Regression: chaining the cipher's exception kept cffi from_buffer views of the chunk
    buffer in a reference cycle, and collecting it segfaulted. Run in a child process, keeping
    every InvalidCiphertext in a cycle and collecting after each."""
    cfg = tmp_path / "hsmpool.toml"
    cfg.write_text(pool_toml(token_dir, {INSTANCE: [6]}) + '[kms]\n'
                   + database_line(tmp_path / "kms.db") + 'audit_dir = false\n')
    script = f"""
import gc, io
from kms import Kms
from kms import fileenc as fe
from kms.errors import InvalidCiphertext
with Kms.open({str(cfg)!r}) as kms:
    c = kms.client({INSTANCE!r})
    key = c.create_key("SM4").key_id
    out = io.BytesIO()
    fe.encrypt_file(c, key, io.BytesIO(bytes(1000)), out, None, 256)
    blob = bytearray(out.getvalue())
    blob[-1] ^= 1
    for _ in range(50):
        try:
            fe.decrypt_file(c, io.BytesIO(bytes(blob)), io.BytesIO())
        except InvalidCiphertext as exc:
            exc.cycle = exc
        gc.collect()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == b"ok\n"
