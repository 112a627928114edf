"""Key metadata: enums with the AWS KMS spellings, immutable records, and the spec tables.

Capabilities are data: :data:`SPECS` says, per key spec, which usages it allows, how the pool
holds its material, its protection level, and which algorithms each usage offers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from hsmpool.blob import KeySpec as PoolSpec

#: The rotation periods the service keeps (days): the union of its protocols' ranges (AWS
#: KMS 90..2560, Alibaba Cloud 7..730); each front end checks its own.
MIN_ROTATION_DAYS: Final = 7
MAX_ROTATION_DAYS: Final = 2560


class KeySpec(enum.StrEnum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
    SM4 = "SM4"
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"
    ECC_NIST_P256 = "ECC_NIST_P256"
    ECC_SECG_P256K1 = "ECC_SECG_P256K1"
    SM2 = "SM2"
    HMAC_256 = "HMAC_256"
    HMAC_384 = "HMAC_384"
    HMAC_512 = "HMAC_512"
    HMAC_SM3 = "HMAC_SM3"


class KeyUsage(enum.StrEnum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    SIGN_VERIFY = "SIGN_VERIFY"
    GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"


class Origin(enum.StrEnum):
    AWS_KMS = "AWS_KMS"
    EXTERNAL = "EXTERNAL"


class KeyState(enum.StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    PENDING_IMPORT = "PendingImport"


class ProtectionLevel(enum.StrEnum):
    HSM = "HSM"
    SOFTWARE = "SOFTWARE"


@dataclass(frozen=True, slots=True)
class SpecInfo:
    spec: KeySpec
    usages: tuple[KeyUsage, ...]
    pool_spec: PoolSpec
    protection: ProtectionLevel
    secret_len: int = 0  # bytes of SOFTWARE material
    encryption_algorithms: tuple[str, ...] = ()
    signing_algorithms: tuple[str, ...] = ()
    mac_algorithms: tuple[str, ...] = ()
    symmetric: bool = False
    encryption_aliases: tuple[str, ...] = ()  # other names accepted for the algorithms

    def offers_encryption(self, algorithm: str) -> bool:
        """Whether keys of this spec encrypt with ``algorithm`` (a name or an alias)."""
        return algorithm in self.encryption_algorithms or algorithm in self.encryption_aliases

    @property
    def rotatable(self) -> bool:
        """Automatic and on-demand rotation: symmetric encryption keys (as in AWS KMS)."""
        return self.symmetric


_RSA_SIGN = ("RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
             "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384",
             "RSASSA_PKCS1_V1_5_SHA_512")
_RSA_ENC = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
_ENC = KeyUsage.ENCRYPT_DECRYPT
_SIGN = KeyUsage.SIGN_VERIFY
_MAC = KeyUsage.GENERATE_VERIFY_MAC

SPECS: Final[Mapping[KeySpec, SpecInfo]] = {
    s.spec: s for s in (
        SpecInfo(KeySpec.SYMMETRIC_DEFAULT, (_ENC,), PoolSpec.AES_256, ProtectionLevel.HSM,
                 encryption_algorithms=("SYMMETRIC_DEFAULT",), symmetric=True),
        # SM4 keys: SYMMETRIC_DEFAULT (SM4-GCM), as AWS China names it; SM4_GCM accepted too.
        SpecInfo(KeySpec.SM4, (_ENC,), PoolSpec.SECRET, ProtectionLevel.SOFTWARE, 16,
                 encryption_algorithms=("SYMMETRIC_DEFAULT",), symmetric=True,
                 encryption_aliases=("SM4_GCM",)),
        SpecInfo(KeySpec.RSA_2048, (_ENC, _SIGN), PoolSpec.RSA_2048, ProtectionLevel.HSM,
                 encryption_algorithms=_RSA_ENC, signing_algorithms=_RSA_SIGN),
        SpecInfo(KeySpec.RSA_3072, (_ENC, _SIGN), PoolSpec.RSA_3072, ProtectionLevel.HSM,
                 encryption_algorithms=_RSA_ENC, signing_algorithms=_RSA_SIGN),
        SpecInfo(KeySpec.RSA_4096, (_ENC, _SIGN), PoolSpec.RSA_4096, ProtectionLevel.HSM,
                 encryption_algorithms=_RSA_ENC, signing_algorithms=_RSA_SIGN),
        SpecInfo(KeySpec.ECC_NIST_P256, (_SIGN,), PoolSpec.EC_P256, ProtectionLevel.HSM,
                 signing_algorithms=("ECDSA_SHA_256",)),
        SpecInfo(KeySpec.ECC_SECG_P256K1, (_SIGN,), PoolSpec.EC_SECP256K1, ProtectionLevel.HSM,
                 signing_algorithms=("ECDSA_SHA_256",)),
        SpecInfo(KeySpec.SM2, (_SIGN, _ENC), PoolSpec.SECRET, ProtectionLevel.SOFTWARE, 32,
                 encryption_algorithms=("SM2PKE",), signing_algorithms=("SM2DSA",)),
        SpecInfo(KeySpec.HMAC_256, (_MAC,), PoolSpec.HMAC_SHA256, ProtectionLevel.HSM,
                 mac_algorithms=("HMAC_SHA_256",)),
        SpecInfo(KeySpec.HMAC_384, (_MAC,), PoolSpec.HMAC_SHA384, ProtectionLevel.HSM,
                 mac_algorithms=("HMAC_SHA_384",)),
        SpecInfo(KeySpec.HMAC_512, (_MAC,), PoolSpec.HMAC_SHA512, ProtectionLevel.HSM,
                 mac_algorithms=("HMAC_SHA_512",)),
        SpecInfo(KeySpec.HMAC_SM3, (_MAC,), PoolSpec.SECRET, ProtectionLevel.SOFTWARE, 32,
                 mac_algorithms=("HMAC_SM3",)),
    )
}


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key's metadata. Immutable: changes make a new record (``evolve``) with a higher
    ``revision`` that the store writes in one transaction before the service swaps it in."""

    key_id: str
    instance: str
    arn: str
    spec: KeySpec
    usage: KeyUsage
    origin: Origin
    state: KeyState
    created: float
    description: str = ""
    deletion_date: float | None = None
    rotation_enabled: bool = False
    rotation_period_days: int = 365
    next_rotation: float | None = None
    primary_version: str | None = None  # version id, hex
    min_decrypt_version: int = 1
    tags: tuple[tuple[str, str], ...] = ()
    policy: str | None = None
    import_valid_to: float | None = None
    revision: int = 1
    purged_at: float | None = None  # set when the deletion window passed and it was shredded

    def __post_init__(self) -> None:
        if self.usage not in SPECS[self.spec].usages:
            raise ValueError(f"{self.spec} keys cannot have usage {self.usage}")
        if not MIN_ROTATION_DAYS <= self.rotation_period_days <= MAX_ROTATION_DAYS:
            raise ValueError(f"rotation period must be {MIN_ROTATION_DAYS}..{MAX_ROTATION_DAYS} "
                             "days")
        if self.min_decrypt_version < 1:
            raise ValueError("minimum decryption version must be at least 1")

    @property
    def info(self) -> SpecInfo:
        return SPECS[self.spec]

    @property
    def protection(self) -> ProtectionLevel:
        return SPECS[self.spec].protection

    @property
    def purged(self) -> bool:
        """Shredded after its deletion window: kept for the audit trail, seen by nobody."""
        return self.purged_at is not None

    def evolve(self, **changes: object) -> KeyRecord:
        return replace(self, revision=self.revision + 1, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a key's material: the pool blob (``None`` once destroyed)."""

    version_id: str  # 32 hex digits (a UUID without dashes)
    key_id: str
    number: int
    created: float
    blob: bytes | None
    public_key: bytes = b""  # DER SubjectPublicKeyInfo for key pairs
    imported: bool = False

    @property
    def version_bytes(self) -> bytes:
        return bytes.fromhex(self.version_id)


@dataclass(frozen=True, slots=True)
class AliasRecord:
    instance: str
    name: str
    key_id: str
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant on one key (see :mod:`kms.keys.grants`): its grantee principal may run
    ``operations`` (AWS wire names, e.g. ``"Decrypt"``) on the key, under the encryption
    context constraints ``subset`` (the request's context includes these pairs) and
    ``equals`` (the request's context is exactly this), both when both are given.
    Principals are held by id (``grantee_id``) and shown by ARN (``grantee_arn``)."""

    grant_id: str  # 64 hex digits
    key_id: str
    instance: str
    name: str | None
    grantee_id: str
    grantee_arn: str
    retiring_id: str | None
    retiring_arn: str | None
    operations: tuple[str, ...]
    subset: Mapping[str, str] | None
    equals: Mapping[str, str] | None
    token: str
    issuing_account: str
    created: float
    actions: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", frozenset("kms:" + op for op in self.operations))

    def allows(self, action: str, context: Mapping[str, str] | None) -> bool:
        """Whether the grant lets its grantee run ``action`` with this encryption context.
        CreateGrant and RetireGrant are decided by those operations, never here."""
        if action not in self.actions or action in _GRANT_MANAGEMENT:
            return False
        return action == "kms:DescribeKey" or self.context_ok(context)

    def context_ok(self, context: Mapping[str, str] | None) -> bool:
        ctx = context or _NO_CONTEXT
        if self.equals is not None and dict(ctx) != dict(self.equals):
            return False
        return self.subset is None or all(ctx.get(k) == v for k, v in self.subset.items())

    def implied_by(self, subset: Mapping[str, str] | None,
                   equals: Mapping[str, str] | None) -> bool:
        """Whether every context meeting the constraints (``subset``, ``equals``) also meets
        this grant's: a grant made through this one must be at least as strict."""
        if self.equals is not None and (equals is None or dict(equals) != dict(self.equals)):
            return False
        if self.subset is None:
            return True
        known = equals if equals is not None else subset
        return known is not None and all(known.get(k) == v for k, v in self.subset.items())


_GRANT_MANAGEMENT: Final = frozenset({"kms:CreateGrant", "kms:RetireGrant"})
_NO_CONTEXT: Final[Mapping[str, str]] = {}


@dataclass(frozen=True, slots=True)
class ImportToken:
    token_id: str
    key_id: str
    wrapping_algorithm: str
    wrapping_key_spec: str
    wrapping_blob: bytes
    public_key: bytes
    expires: float
