"""The exceptions of the pool: one root, :class:`HsmPoolError`.

::

    HsmPoolError
     +-- ConfigError                 bad or incomplete configuration file
     +-- ModuleLoadError             a PKCS#11 library could not be loaded or initialised
     +-- TokenNotFoundError          no token with the configured label or serial
     +-- LoginError                  wrong or locked PIN
     +-- InstanceNotFoundError       no such instance (tenant) in this pool
     +-- UnsupportedOperationError   no member of the partition offers the mechanism
     +-- PoolUnavailableError        no healthy member could serve the operation
     |    +-- LeaseTimeoutError      every session of the chosen token stayed busy
     |    +-- DeadlineExceededError  the operation's deadline passed (hung or slow tokens)
     +-- InvalidBlobError            a wrapped-key blob is corrupt, truncated or unusable
     |    +-- ForeignBlobError       the blob belongs to another instance
     +-- InvalidTagError             AES-GCM authentication failed (tampered data, wrong AAD)
     +-- DecryptionError             an RSA decryption failed (bad padding, wrong key)
     +-- TokenError                  any other PKCS#11 failure, with its ``CKR_`` name

Messages name tokens, instances and ``CKR_`` codes; they never contain PINs, key material,
plaintext or blob bytes.
"""

from __future__ import annotations


class HsmPoolError(Exception):
    """Root of every exception raised by :mod:`hsmpool`."""


class ConfigError(HsmPoolError):
    """The configuration file is malformed or refers to something that does not exist."""


class ModuleLoadError(HsmPoolError):
    """A PKCS#11 module could not be loaded or initialised."""


class TokenNotFoundError(HsmPoolError):
    """No slot holds a token with the configured label or serial."""


class LoginError(HsmPoolError):
    """The token refused the PIN (incorrect, or locked)."""


class InstanceNotFoundError(HsmPoolError):
    """The pool has no instance (tenant) of that name."""


class UnsupportedOperationError(HsmPoolError):
    """No member of the instance's partition supports the mechanism the operation needs."""


class PoolUnavailableError(HsmPoolError):
    """Every capable member of the partition failed or is ejected."""


class LeaseTimeoutError(PoolUnavailableError):
    """No session of the token became free within the lease timeout."""


class DeadlineExceededError(PoolUnavailableError):
    """The operation's deadline (``hsmpool.deadline``, a server request's) passed before a
    token answered; the call in progress was abandoned."""


class InvalidBlobError(HsmPoolError):
    """A wrapped-key blob is malformed, truncated, tampered with, or of the wrong kind."""


class ForeignBlobError(InvalidBlobError):
    """The blob was wrapped under another instance's domain key."""


class InvalidTagError(HsmPoolError):
    """Authenticated decryption failed: the ciphertext, nonce, tag or AAD is wrong."""


class DecryptionError(HsmPoolError):
    """An RSA decryption failed (padding check, wrong key)."""


class TokenError(HsmPoolError):
    """A token returned an error the pool does not map to a more specific exception."""

    def __init__(self, message: str, ckr: str | None = None) -> None:
        super().__init__(message)
        self.ckr = ckr
