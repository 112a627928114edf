"""The KMS exceptions: one root, :class:`KmsError`; one class per AWS KMS error name.

Each class carries ``code``, the exception name of the AWS KMS API (what a front end puts in
``__type`` and what boto3 maps to its exception classes), and ``status``, the HTTP status.

::

    KmsError
     +-- NotFound                 NotFoundException            (also: not yours, not allowed)
     |    +-- InstanceNotFound    NotFoundException            (no such instance in the pool)
     +-- Disabled                 DisabledException
     +-- KMSInvalidState          KMSInvalidStateException
     +-- InvalidCiphertext        InvalidCiphertextException
     +-- IncorrectKey             IncorrectKeyException
     +-- InvalidKeyUsage          InvalidKeyUsageException
     +-- KMSInvalidSignature      KMSInvalidSignatureException
     +-- KMSInvalidMac            KMSInvalidMacException
     +-- AlreadyExists            AlreadyExistsException
     +-- InvalidAliasName         InvalidAliasNameException
     +-- InvalidArn               InvalidArnException
     +-- InvalidMarker            InvalidMarkerException
     +-- UnsupportedOperation     UnsupportedOperationException
     +-- LimitExceeded            LimitExceededException
     +-- InvalidImportToken       InvalidImportTokenException
     +-- ExpiredImportToken       ExpiredImportTokenException
     +-- InvalidGrantToken        InvalidGrantTokenException
     +-- InvalidGrantId           InvalidGrantIdException
     +-- IncorrectKeyMaterial     IncorrectKeyMaterialException
     +-- Tag                      TagException
     +-- MalformedPolicyDocument  MalformedPolicyDocumentException
     +-- Validation               ValidationException
     +-- AccessDenied             AccessDeniedException
     +-- KeyUnavailable           KeyUnavailableException      (the pool cannot serve now)
     +-- DependencyTimeout        DependencyTimeoutException
     +-- KMSInternal              KMSInternalException

Messages never contain plaintext, key material, encryption-context values or secrets.
"""

from __future__ import annotations


class KmsError(Exception):
    """Root of every exception raised by :mod:`kms`."""

    code = "KMSInternalException"
    status = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class NotFound(KmsError):
    code = "NotFoundException"


class InstanceNotFound(NotFound):
    """The pool has no instance (tenant) of that name: ``Kms.client`` and the credential
    functions raise it for :class:`hsmpool.errors.InstanceNotFoundError`. A server answers a
    caller whose instance is gone as an unrecognised client, never with this."""


class Disabled(KmsError):
    code = "DisabledException"


class KMSInvalidState(KmsError):
    code = "KMSInvalidStateException"


class InvalidCiphertext(KmsError):
    code = "InvalidCiphertextException"


class IncorrectKey(KmsError):
    code = "IncorrectKeyException"


class InvalidKeyUsage(KmsError):
    code = "InvalidKeyUsageException"


class KMSInvalidSignature(KmsError):
    code = "KMSInvalidSignatureException"


class KMSInvalidMac(KmsError):
    code = "KMSInvalidMacException"


class AlreadyExists(KmsError):
    code = "AlreadyExistsException"


class InvalidAliasName(KmsError):
    code = "InvalidAliasNameException"


class InvalidArn(KmsError):
    code = "InvalidArnException"


class InvalidMarker(KmsError):
    code = "InvalidMarkerException"


class UnsupportedOperation(KmsError):
    code = "UnsupportedOperationException"


class LimitExceeded(KmsError):
    code = "LimitExceededException"


class InvalidImportToken(KmsError):
    code = "InvalidImportTokenException"


class ExpiredImportToken(KmsError):
    code = "ExpiredImportTokenException"


class InvalidGrantToken(KmsError):
    code = "InvalidGrantTokenException"


class InvalidGrantId(KmsError):
    code = "InvalidGrantIdException"


class IncorrectKeyMaterial(KmsError):
    code = "IncorrectKeyMaterialException"


class Tag(KmsError):
    code = "TagException"


class MalformedPolicyDocument(KmsError):
    code = "MalformedPolicyDocumentException"


class Validation(KmsError):
    code = "ValidationException"


class AccessDenied(KmsError):
    code = "AccessDeniedException"


class KeyUnavailable(KmsError):
    code = "KeyUnavailableException"
    status = 500


class DependencyTimeout(KmsError):
    code = "DependencyTimeoutException"
    status = 503


class KMSInternal(KmsError):
    code = "KMSInternalException"
    status = 500


ALL_ERRORS: tuple[type[KmsError], ...] = (
    NotFound, Disabled, KMSInvalidState, InvalidCiphertext, IncorrectKey, InvalidKeyUsage,
    KMSInvalidSignature, KMSInvalidMac, AlreadyExists, InvalidAliasName, InvalidArn,
    InvalidMarker, UnsupportedOperation, LimitExceeded, InvalidImportToken, ExpiredImportToken,
    InvalidGrantToken, InvalidGrantId, IncorrectKeyMaterial, Tag, MalformedPolicyDocument,
    Validation, AccessDenied,
    KeyUnavailable, DependencyTimeout, KMSInternal,
)
