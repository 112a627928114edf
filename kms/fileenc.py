"""Envelope encryption of files of any size, streamed in constant memory.

::

    from kms import Kms
    from kms.fileenc import encrypt_path, decrypt_path

    with Kms.open("var/hsmpool.toml") as service:
        client = service.client("default")
        encrypt_path(client, "alias/backups", "db.dump", "db.dump.enc", {"host": "db1"})
        decrypt_path(client, "db.dump.enc", "db.dump")

Each file gets a fresh data key from ``GenerateDataKey`` under the chosen KMS key (the
"CMK"). The data cipher follows the CMK's key spec: ``SYMMETRIC_DEFAULT`` keys give
AES-256-GCM (cryptography's AESGCM), ``SM4`` keys give SM4-GCM (:class:`hsmpool.gm.SM4GCM`),
so data protected by an SM4 key is protected by SM4 end to end. Only the wrapped data key is
stored; decryption needs the service (``Decrypt``) but no key id.

File format, version 1 (integers big-endian)::

    offset  size  field
    0       8     magic 89 'H' 'S' 'M' 'P' 'F' 'E' 0A
    8       1     format version (1)
    9       1     data cipher: 1 = AES-256-GCM, 2 = SM4-GCM
    10      4     chunk size S, 64 .. 64 MiB (plaintext bytes per chunk)
    14      2     W, length of the wrapped data key (1 .. 4096)
    16      W     wrapped data key: the KMS ciphertext blob (kms.ciphertext) of the data key,
                  made with the encryption context as its AAD
    16+W    4     C, length of the encryption context (0 .. 8192)
    20+W    C     the encryption context, canonical (kms.ciphertext.canonical_context)
    20+W+C  7     P, random nonce prefix
    27+W+C        chunks 0 .. n-1, each GCM ciphertext || 16-byte tag

The chunks follow the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizar: "Online
authenticated-encryption and its nonce-reuse misuse-resistance", CRYPTO 2015). Chunk i holds
plaintext bytes [i*S, (i+1)*S); every chunk but the last holds exactly S bytes, the last holds
1 .. S bytes (0 only for an empty file, which is one empty final chunk). With f = 1 for the
last chunk and 0 otherwise, and H = SHA-256 of the whole header (offset 0 up to the chunks)::

    nonce_i = P || uint32(i) || uint8(f)                    (12 bytes)
    AAD_i   = H || uint64(i) || uint8(f)
    chunk_i = GCM-Encrypt(data key, nonce_i, plaintext_i, AAD_i)

What that detects: an edit of any header byte changes H (or, for the wrapped key and the
context, fails ``Decrypt`` first), so chunk 0 fails; a chunk moved to another position fails
(i is in nonce and AAD); a chunk from another file fails (another data key and another H);
truncation at a chunk boundary makes a non-final chunk the last one read, whose tag was made
with f = 0, so it fails as a final chunk; dropping the final chunk is the same; bytes appended
after the final chunk make it a non-final chunk (f = 0), so it fails; a partial chunk fails its
tag. A file decrypts only if it is byte for byte what the encryptor wrote.

The reader knows the final chunk without a length field: it reads S + 16 bytes at a time, one
chunk ahead; a chunk followed by end of file is the final one.

Limits: at most 2**32 chunks per file (4 PiB at the default 1 MiB chunks); GCM nonces never
repeat under a data key, and each file has its own data key.

The encryption context is stored in the header in the clear (as in the AWS Encryption SDK), so
it must hold nothing secret: keys starting ``secret:`` and the service's
``secret_context_keys`` are refused. On decryption the stored context is passed to
``Decrypt``; a context given by the caller must equal it exactly.

Streams: :func:`decrypt_file` writes each chunk to ``dst`` as soon as that chunk is verified,
so on an error ``dst`` may hold a verified prefix; discard it. :func:`decrypt_path` writes to
a temporary file next to the output and renames it into place only after the final chunk
verified, so the output path never holds partial plaintext. Data keys are held in a
bytearray that is zeroed after use (the service's own ``bytes`` copy cannot be wiped from
Python; the cipher objects keep their own copies, which SM4GCM wipes and OpenSSL frees).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmpool.gm import SM4GCM
from hsmpool.gm import InvalidTag as GmInvalidTag
from kms import errors as E
from kms.ciphertext import MAX_CONTEXT_BYTES, canonical_context
from kms.model import KeySpec

if TYPE_CHECKING:
    from kms.service import KmsClient

MAGIC: Final = b"\x89HSMPFE\n"
FORMAT_VERSION: Final = 1
CIPHER_AES_256_GCM: Final = 1
CIPHER_SM4_GCM: Final = 2
CIPHER_NAMES: Final = {CIPHER_AES_256_GCM: "AES_256_GCM", CIPHER_SM4_GCM: "SM4_GCM"}
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MIN_CHUNK_SIZE: Final = 64
MAX_CHUNK_SIZE: Final = 64 << 20
MAX_WRAPPED_KEY: Final = 4096
MAX_CHUNKS: Final = 1 << 32
PREFIX_LEN: Final = 7
TAG_LEN: Final = 16

_FIXED = struct.Struct(">8sBBIH")  # magic, version, cipher, chunk size, wrapped-key length
_U32 = struct.Struct(">I")
_NONCE_TAIL = struct.Struct(">IB")
_AAD_TAIL = struct.Struct(">QB")
# cipher id -> (data key spec for GenerateDataKey, key length)
_DATA_KEY: Final = {CIPHER_AES_256_GCM: ("AES_256", 32), CIPHER_SM4_GCM: ("SM4", 16)}
_BY_NAME: Final = {v: k for k, v in CIPHER_NAMES.items()}

Progress = Callable[[int], None]
"""Called after each chunk with the number of input bytes consumed so far (including the
header when reading ciphertext)."""


class _Aead(Protocol):
    def encrypt(self, nonce: bytes, data: memoryview, aad: bytes, /) -> bytes: ...

    def decrypt(self, nonce: bytes, data: memoryview, aad: bytes, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FileHeader:
    """A parsed header. ``raw`` is every header byte (hashed into each chunk's AAD)."""

    cipher: int
    chunk_size: int
    wrapped_key: bytes
    context: dict[str, str]
    nonce_prefix: bytes
    raw: bytes

    @property
    def cipher_name(self) -> str:
        return CIPHER_NAMES[self.cipher]

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    def __len__(self) -> int:
        return len(self.raw)


@dataclass(frozen=True, slots=True)
class FileResult:
    """What an encryption or decryption did (no secrets)."""

    key_id: str  # the CMK's ARN
    cipher: str  # AES_256_GCM or SM4_GCM
    chunk_size: int
    chunks: int
    plaintext_bytes: int
    ciphertext_bytes: int
    context: dict[str, str]
    key_version: str | None = None  # decryption: the CMK version that wrapped the data key


def build_header(cipher: int, chunk_size: int, wrapped_key: bytes,
                 context: Mapping[str, str] | None, nonce_prefix: bytes) -> bytes:
    if cipher not in CIPHER_NAMES:
        raise E.Validation(f"unknown data cipher {cipher}")
    _check_chunk_size(chunk_size)
    if not 1 <= len(wrapped_key) <= MAX_WRAPPED_KEY:
        raise E.Validation("the wrapped data key has an invalid length")
    if len(nonce_prefix) != PREFIX_LEN:
        raise E.Validation(f"the nonce prefix must be {PREFIX_LEN} bytes")
    ctx = canonical_context(context)
    return (_FIXED.pack(MAGIC, FORMAT_VERSION, cipher, chunk_size, len(wrapped_key))
            + wrapped_key + _U32.pack(len(ctx)) + ctx + nonce_prefix)


def read_header(src: BinaryIO) -> FileHeader:
    """Read and parse a header from ``src`` (positioned at the chunks afterwards).

    Raises :class:`~kms.errors.InvalidCiphertext` for anything that is not a well-formed
    version-1 header. The header is authenticated only later, by the chunks."""
    bad = E.InvalidCiphertext
    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise bad("not an hsmpool encrypted file (too short)")
    magic, version, cipher, chunk_size, wlen = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise bad("not an hsmpool encrypted file (bad magic)")
    if version != FORMAT_VERSION:
        raise bad(f"unsupported encrypted-file format version {version}")
    if cipher not in CIPHER_NAMES:
        raise bad(f"unknown data cipher {cipher} in the file header")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise bad("invalid chunk size in the file header")
    if not 1 <= wlen <= MAX_WRAPPED_KEY:
        raise bad("invalid wrapped-key length in the file header")
    wrapped = _read_exact(src, wlen)
    clen_raw = _read_exact(src, 4)
    if len(wrapped) < wlen or len(clen_raw) < 4:
        raise bad("the file header is truncated")
    (clen,) = _U32.unpack(clen_raw)
    if clen > MAX_CONTEXT_BYTES:
        raise bad("invalid encryption-context length in the file header")
    ctx_raw = _read_exact(src, clen)
    prefix = _read_exact(src, PREFIX_LEN)
    if len(ctx_raw) < clen or len(prefix) < PREFIX_LEN:
        raise bad("the file header is truncated")
    context = parse_context(ctx_raw)
    return FileHeader(cipher, chunk_size, wrapped, context, prefix,
                      fixed + wrapped + clen_raw + ctx_raw + prefix)


def parse_context(raw: bytes) -> dict[str, str]:
    """The inverse of :func:`kms.ciphertext.canonical_context`; only canonical input passes."""
    out: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(raw):
            fields: list[str] = []
            for _ in range(2):
                (n,) = _U32.unpack_from(raw, pos)
                pos += 4
                if pos + n > len(raw):
                    raise ValueError
                fields.append(raw[pos:pos + n].decode("utf-8"))
                pos += n
            out[fields[0]] = fields[1]
    except (struct.error, ValueError):
        raise E.InvalidCiphertext("malformed encryption context in the file header") from None
    if canonical_context(out) != raw:
        raise E.InvalidCiphertext("malformed encryption context in the file header")
    return out


def cipher_for_spec(spec: KeySpec | str) -> int:
    """The data cipher for files under a CMK of this key spec."""
    if spec == KeySpec.SYMMETRIC_DEFAULT:
        return CIPHER_AES_256_GCM
    if spec == KeySpec.SM4:
        return CIPHER_SM4_GCM
    raise E.InvalidKeyUsage(f"{spec} keys cannot encrypt files; use a SYMMETRIC_DEFAULT or "
                            "SM4 key")


def encrypt_file(client: KmsClient, key_id: str, src: BinaryIO, dst: BinaryIO,
                 context: Mapping[str, str] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None,
                 *, cipher: str | None = None) -> FileResult:
    """Encrypt ``src`` to ``dst`` under a fresh data key from ``key_id`` (id, ARN or alias).

    ``cipher`` (``"AES_256_GCM"`` or ``"SM4_GCM"``) skips the ``DescribeKey`` call that
    otherwise picks the data cipher from the CMK's key spec."""
    _check_chunk_size(chunk_size)
    ctx = dict(context or {})
    _check_context_public(client, ctx)
    if cipher is None:
        cipher_id = cipher_for_spec(client.describe_key(key_id).spec)
    elif cipher in _BY_NAME:
        cipher_id = _BY_NAME[cipher]
    else:
        raise E.Validation(f"unknown data cipher {cipher!r}; use AES_256_GCM or SM4_GCM")
    spec, key_len = _DATA_KEY[cipher_id]
    dk = client.generate_data_key(key_id, spec, encryption_context=ctx or None)
    key = bytearray(dk.plaintext or b"")
    try:
        if len(key) != key_len:
            raise E.Internal("the service returned a data key of the wrong length")
        aead = _aead(cipher_id, key)
    finally:
        _wipe(key)
    header = build_header(cipher_id, chunk_size, dk.ciphertext_blob, ctx,
                          os.urandom(PREFIX_LEN))
    dst.write(header)
    digest = hashlib.sha256(header).digest()
    prefix = header[-PREFIX_LEN:]
    written = len(header)
    consumed = 0
    index = 0
    # Two buffers, filled in place (no allocation per chunk): the current chunk and the next,
    # whose emptiness tells whether the current one is the final chunk.
    cur, nxt = bytearray(chunk_size), bytearray(chunk_size)
    n = _fill(src, cur)
    while True:
        m = _fill(src, nxt) if n == chunk_size else 0
        final = m == 0
        if index >= MAX_CHUNKS:
            raise E.Validation("the file is too large for this chunk size")
        with memoryview(cur) as view:
            sealed = aead.encrypt(_nonce(prefix, index, final), view[:n],
                                  _aad(digest, index, final))
        dst.write(sealed)
        written += len(sealed)
        consumed += n
        index += 1
        if progress is not None:
            progress(consumed)
        if final:
            break
        cur, nxt, n = nxt, cur, m
    dst.flush()
    return FileResult(dk.key_id, CIPHER_NAMES[cipher_id], chunk_size, index, consumed,
                      written, ctx)


def decrypt_file(client: KmsClient, src: BinaryIO, dst: BinaryIO,
                 context: Mapping[str, str] | None = None,
                 progress: Progress | None = None) -> FileResult:
    """Decrypt ``src`` to ``dst``. ``context``, if given, must equal the stored context.

    Chunks are written as they verify: after an exception ``dst`` may hold a prefix of the
    plaintext and must be discarded (:func:`decrypt_path` does that for you)."""
    header = read_header(src)
    if context is not None and canonical_context(context) != canonical_context(header.context):
        raise E.InvalidCiphertext("the encryption context does not match the file's")
    res = client.decrypt(header.wrapped_key, header.context or None)
    key = bytearray(res.plaintext)
    try:
        if len(key) != _DATA_KEY[header.cipher][1]:
            raise E.InvalidCiphertext("the wrapped data key has the wrong length for the "
                                      "file's cipher")
        aead = _aead(header.cipher, key)
    finally:
        _wipe(key)
    digest = header.digest
    prefix = header.nonce_prefix
    seg_len = header.chunk_size + TAG_LEN
    consumed = len(header)
    produced = 0
    index = 0
    cur, nxt = bytearray(seg_len), bytearray(seg_len)
    n = _fill(src, cur)
    while True:
        m = _fill(src, nxt) if n == seg_len else 0
        final = m == 0
        if n < TAG_LEN or (final and index > 0 and n == TAG_LEN):
            raise E.InvalidCiphertext("the encrypted file is truncated or corrupted")
        if index >= MAX_CHUNKS:
            raise E.InvalidCiphertext("the encrypted file has too many chunks")
        plain = _open_chunk(aead, _nonce(prefix, index, final), cur, n,
                            _aad(digest, index, final))
        if plain is None:
            raise E.InvalidCiphertext(
                f"chunk {index} failed authentication: the file was modified, truncated or "
                "extended")
        dst.write(plain)
        produced += len(plain)
        consumed += n
        index += 1
        if progress is not None:
            progress(consumed)
        if final:
            break
        cur, nxt, n = nxt, cur, m
    dst.flush()
    return FileResult(res.key_id, header.cipher_name, header.chunk_size, index, produced,
                      consumed, dict(header.context), res.key_version)


# --- path helpers -----------------------------------------------------------------------


def encrypt_path(client: KmsClient, key_id: str, src: str | os.PathLike[str],
                 dst: str | os.PathLike[str], context: Mapping[str, str] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None,
                 *, cipher: str | None = None) -> FileResult:
    """Encrypt file ``src`` to ``dst`` (written to a temporary file, renamed when done)."""
    with open(src, "rb") as fin, atomic_output(dst) as fout:
        return encrypt_file(client, key_id, fin, fout, context, chunk_size, progress,
                            cipher=cipher)


def decrypt_path(client: KmsClient, src: str | os.PathLike[str],
                 dst: str | os.PathLike[str], context: Mapping[str, str] | None = None,
                 progress: Progress | None = None) -> FileResult:
    """Decrypt file ``src`` to ``dst``; ``dst`` appears only once every chunk verified."""
    with open(src, "rb") as fin, atomic_output(dst) as fout:
        return decrypt_file(client, fin, fout, context, progress)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[BinaryIO]:
    """A new file (mode 0600) beside ``path``; renamed onto ``path`` on success, removed on
    any failure. With ``replace=False`` an existing ``path`` is never overwritten (even one
    created while the file was written): :class:`FileExistsError`, and the new file is
    removed."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                   dir=target.parent if str(target.parent) else ".")
    except OSError as exc:  # name the output, not the temporary file
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- internals --------------------------------------------------------------------------


def _link_new(tmp: str, target: Path) -> None:
    """Move ``tmp`` to ``target`` unless ``target`` exists, atomically where the file system
    has hard links (a link never replaces a file)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
    except OSError:  # no hard links here (e.g. some FUSE or FAT mounts): check, then rename
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST),
                                  str(target)) from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _check_chunk_size(chunk_size: object) -> None:
    if (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
            or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE):
        raise E.Validation(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")


def _check_context_public(client: KmsClient, ctx: Mapping[str, str]) -> None:
    secret = client.kms.settings.secret_context_keys
    for k in ctx:
        if not isinstance(k, str):
            raise E.Validation("EncryptionContext keys and values must be strings")
        if k.startswith("secret:") or k in secret:
            raise E.Validation(f"encryption-context key {k!r} is marked secret, and file "
                               "headers store the context in the clear")


def _aead(cipher: int, key: bytearray) -> _Aead:
    if cipher == CIPHER_AES_256_GCM:
        return AESGCM(key)
    return SM4GCM(key)


def _open_chunk(aead: _Aead, nonce: bytes, buf: bytearray, n: int, aad: bytes) -> bytes | None:
    """The plaintext of ``buf[:n]``, or None if its tag is wrong.

    Returning None rather than raising from inside ``except`` matters: the cipher's exception
    (whose traceback holds the frames that hold cffi ``from_buffer`` views of ``buf``) is then
    freed here by reference counting. Kept alive as the ``__context__`` of our exception, it
    ends up in a reference cycle, and the garbage collector's teardown of such a cycle
    (cffi from_buffer object + memoryview) crashes CPython 3.11 with cffi here."""
    with memoryview(buf) as view:
        try:
            return aead.decrypt(nonce, view[:n], aad)
        except (InvalidTag, GmInvalidTag):
            return None


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + _NONCE_TAIL.pack(index, final)


def _aad(digest: bytes, index: int, final: bool) -> bytes:
    return digest + _AAD_TAIL.pack(index, final)


def _fill(src: BinaryIO, buf: bytearray) -> int:
    """Fill ``buf`` from ``src`` (``readinto`` when the stream has it); the byte count, less
    than ``len(buf)`` only at end of file."""
    readinto = getattr(src, "readinto", None)
    got = 0
    with memoryview(buf) as view:
        while got < len(buf):
            if readinto is not None:
                n = readinto(view[got:])
            else:
                data = src.read(len(buf) - got)
                n = None if data is None else len(data)
                if n:
                    view[got:got + n] = data
            if n is None:
                raise E.Validation("non-blocking input streams are not supported")
            if n == 0:
                break
            got += n
    return got


def _read_exact(src: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at end of file (short reads from pipes are retried)."""
    data = src.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
