"""The service's exceptions: one root, :class:`KmsError`, and one class per kind of failure.

The kinds are the service's own, not any protocol's: each front end maps them to its wire
codes with a table of its own (``kms/api/aws_kms.py`` to AWS KMS's exception names and HTTP
statuses; the Secrets Manager and Alibaba front ends to theirs). ``kind`` is also what the
audit trail records as the result of a failed operation.

::

    KmsError: NotFound, InstanceNotFound, Disabled, InvalidState, InvalidCiphertext,
        IncorrectKey, InvalidKeyUsage, InvalidSignature, InvalidMac,
        AlreadyExists, InvalidAliasName, InvalidArn, InvalidMarker,
        UnsupportedOperation, LimitExceeded, InvalidImportToken,
        ExpiredImportToken, InvalidGrantToken, InvalidGrantId,
        IncorrectKeyMaterial, InvalidTag, MalformedPolicyDocument, Validation,
        AccessDenied, KeyUnavailable, DependencyTimeout (StoreUnavailable), Internal

(InstanceNotFound is a NotFound: the pool has no such instance. StoreUnavailable is a
DependencyTimeout: the metadata store did not answer, and every front end answers it with
its retryable 503.)

Messages never contain plaintext, key material, encryption-context values or secrets.
"""

from __future__ import annotations

from typing import ClassVar


class KmsError(Exception):
    """Root of every exception raised by :mod:`kms`."""

    #: The protocol-neutral kind (the class's name; subclasses of a kind keep its kind).
    kind: ClassVar[str] = "Internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.kind)
        self.message = message or self.kind


class NotFound(KmsError):
    """The resource does not exist (also: not this instance's, or the caller may not know)."""

    kind = "NotFound"


class InstanceNotFound(NotFound):
    """The pool has no instance (tenant) of that name: ``Kms.client`` and the credential
    functions raise it for :class:`hsmpool.errors.InstanceNotFoundError`. A server answers a
    caller whose instance is gone as an unrecognised client, never with this."""


class Disabled(KmsError):
    """The key is disabled."""

    kind = "Disabled"


class InvalidState(KmsError):
    """The resource's state does not allow the operation."""

    kind = "InvalidState"


class InvalidCiphertext(KmsError):
    """The ciphertext is not valid (tampered, another context, material deleted)."""

    kind = "InvalidCiphertext"


class IncorrectKey(KmsError):
    """The ciphertext was made with another key than the one named."""

    kind = "IncorrectKey"


class InvalidKeyUsage(KmsError):
    """The key's usage or spec does not offer the operation or algorithm."""

    kind = "InvalidKeyUsage"


class InvalidSignature(KmsError):
    """The signature does not verify."""

    kind = "InvalidSignature"


class InvalidMac(KmsError):
    """The MAC does not verify."""

    kind = "InvalidMac"


class AlreadyExists(KmsError):
    """A resource of that name exists."""

    kind = "AlreadyExists"


class InvalidAliasName(KmsError):
    """An alias name that is not allowed."""

    kind = "InvalidAliasName"


class InvalidArn(KmsError):
    """An ARN that does not parse."""

    kind = "InvalidArn"


class InvalidMarker(KmsError):
    """A pagination marker that is not one of ours."""

    kind = "InvalidMarker"


class UnsupportedOperation(KmsError):
    """The operation is not offered for this resource."""

    kind = "UnsupportedOperation"


class LimitExceeded(KmsError):
    """A quota is reached."""

    kind = "LimitExceeded"


class InvalidImportToken(KmsError):
    """The import token is not valid for the key."""

    kind = "InvalidImportToken"


class ExpiredImportToken(KmsError):
    """The import token has expired."""

    kind = "ExpiredImportToken"


class InvalidGrantToken(KmsError):
    """A grant token that is not valid."""

    kind = "InvalidGrantToken"


class InvalidGrantId(KmsError):
    """A grant id that is not the key's."""

    kind = "InvalidGrantId"


class IncorrectKeyMaterial(KmsError):
    """Imported material that is not the key's earlier material."""

    kind = "IncorrectKeyMaterial"


class InvalidTag(KmsError):
    """Tags that are not allowed."""

    kind = "InvalidTag"


class MalformedPolicyDocument(KmsError):
    """A policy document that does not parse or is not allowed."""

    kind = "MalformedPolicyDocument"


class Validation(KmsError):
    """An argument that is not valid."""

    kind = "Validation"


class AccessDenied(KmsError):
    """Not allowed (operations with no resource to feign not to see)."""

    kind = "AccessDenied"


class KeyUnavailable(KmsError):
    """The pool cannot serve the request now (retry later)."""

    kind = "KeyUnavailable"


class DependencyTimeout(KmsError):
    """The HSMs did not answer in time (retry)."""

    kind = "DependencyTimeout"


class StoreUnavailable(DependencyTimeout):
    """The metadata store did not answer: unreachable, or no connection within the store's
    short wait (:class:`kms.store.postgres.PostgresStore` raises it for psycopg's connection
    failures and pool timeouts, ``raise ... from`` the cause). Its kind is DependencyTimeout,
    so a client sees a retryable 503; the message names no host or user."""


class Internal(KmsError):
    """An internal failure (nothing about it is told)."""

    kind = "Internal"


#: Every kind, one class each (a front end's table must cover them all: tests check it).
ALL_ERRORS: tuple[type[KmsError], ...] = (
    NotFound, Disabled, InvalidState, InvalidCiphertext, IncorrectKey, InvalidKeyUsage,
    InvalidSignature, InvalidMac, AlreadyExists, InvalidAliasName, InvalidArn,
    InvalidMarker, UnsupportedOperation, LimitExceeded, InvalidImportToken,
    ExpiredImportToken, InvalidGrantToken, InvalidGrantId, IncorrectKeyMaterial, InvalidTag,
    MalformedPolicyDocument, Validation, AccessDenied, KeyUnavailable, DependencyTimeout,
    Internal,
)
