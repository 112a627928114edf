"""The Chinese commercial cryptography algorithms, natively implemented.

- SM4 (GB/T 32907-2016): :class:`SM4ECB`, :class:`SM4CBC` (PKCS#7), :class:`SM4CTR`,
  :class:`SM4GCM` (RFC 8998 AEAD). Vectorised (AVX-512/AVX2 with GFNI, carry-less multiply
  for GHASH) with a portable C fallback, chosen at run time; see :func:`implementation`.
- SM3 (GB/T 32905-2016): :func:`sm3`, :class:`SM3`, :func:`hmac_sm3`, :class:`HMACSM3`.
- SM2 (GB/T 32918-2016) over the system libcrypto: :class:`SM2PrivateKey`,
  :class:`SM2PublicKey`, with the default distinguishing ID :data:`DEFAULT_UID`.

Errors: :class:`InvalidTag`, :class:`InvalidSignature`, :class:`DecryptionError` (see
:mod:`hsmpool.gm.exceptions`); malformed input is ValueError, wrong types TypeError.
"""

from __future__ import annotations

from ._binding import lib
from ._sm2 import DEFAULT_UID, SM2PrivateKey, SM2PublicKey
from ._sm3 import HMACSM3, SM3, hmac_sm3, sm3
from ._sm4 import SM4CBC, SM4CTR, SM4ECB, SM4GCM
from .exceptions import DecryptionError, InvalidSignature, InvalidTag

__all__ = [
    "DEFAULT_UID",
    "HMACSM3",
    "SM2PrivateKey",
    "SM2PublicKey",
    "SM3",
    "SM4CBC",
    "SM4CTR",
    "SM4ECB",
    "SM4GCM",
    "DecryptionError",
    "InvalidSignature",
    "InvalidTag",
    "available_implementations",
    "hmac_sm3",
    "implementation",
    "set_implementation",
    "sm3",
]

_NAMES = {
    int(lib.HSM_GM_IMPL_PORTABLE): "portable",
    int(lib.HSM_GM_IMPL_AVX2): "avx2",
    int(lib.HSM_GM_IMPL_AVX512): "avx512",
    int(lib.HSM_GM_IMPL_AVX2_AESNI): "avx2-aesni",
}
_IDS = {name: i for i, name in _NAMES.items()}


def implementation() -> str:
    """The SM4 implementation in use: "avx512", "avx2" or "portable" (or "avx2-aesni", the
    AVX2 code with an AES-NI S-box that "avx2" means on CPUs without GFNI, when forced)."""
    return _NAMES[int(lib.hsm_gm_impl())]


def available_implementations() -> list[str]:
    """The implementations this CPU can run ("portable" always, first; the best last)."""
    order = ["portable", "avx2-aesni", "avx2", "avx512"]
    return [n for n in order if lib.hsm_gm_impl_available(_IDS[n])]


def set_implementation(name: str) -> None:
    """Force an implementation, process-wide (for tests and benchmarks).

    ValueError for an unknown name or one this CPU cannot run. Key objects need not be
    recreated: schedules are implementation-independent.
    """
    impl = _IDS.get(name)
    if impl is None:
        raise ValueError(f"unknown implementation {name!r}; expected one of {sorted(_IDS)}")
    if lib.hsm_gm_set_impl(impl) != 0:
        raise ValueError(f"implementation {name!r} is not supported by this CPU")
