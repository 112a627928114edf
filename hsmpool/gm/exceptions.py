"""Exceptions raised by :mod:`hsmpool.gm`.

One flat set, deliberately independent of ``cryptography.exceptions`` so callers do not need
that package to catch them:

- :class:`InvalidTag`: an AEAD (SM4-GCM) tag did not verify. Nothing was decrypted.
- :class:`InvalidSignature`: an SM2 signature or an HMAC-SM3 tag did not verify.
- :class:`DecryptionError`: a well-formed SM2 ciphertext did not decrypt (its C3 check value
  did not match: wrong key or tampered data). A subclass of :class:`ValueError`, like the
  errors for malformed input.

Malformed input (wrong lengths, bad encodings, points not on the curve, bad padding) raises
:class:`ValueError`; arguments of the wrong type raise :class:`TypeError`. No message ever
contains key material or plaintext.
"""

from __future__ import annotations

__all__ = ["DecryptionError", "InvalidSignature", "InvalidTag"]


class InvalidTag(Exception):
    """The authentication tag did not verify."""


class InvalidSignature(Exception):
    """The signature or MAC did not verify."""


class DecryptionError(ValueError):
    """An SM2 ciphertext did not decrypt under this key."""
