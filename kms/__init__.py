"""kms: the key management service on the hsmpool pool.

    from kms import Kms

    with Kms.open("var/hsmpool.toml") as service:
        kms = service.client("default")            # an instance; principal None = the embedder
        key = kms.create_key()                     # SYMMETRIC_DEFAULT (AES-256-GCM in a token)
        ct = kms.encrypt(key.key_id, b"secret", {"purpose": "demo"}).ciphertext_blob
        assert kms.decrypt(ct, {"purpose": "demo"}).plaintext == b"secret"

Exceptions: :mod:`kms.errors` (one class per AWS KMS error name).
"""

from kms.errors import KmsError
from kms.keys.importing import ImportParameters
from kms.model import AliasRecord, KeyRecord, KeySpec, KeyState, KeyUsage, KeyVersion, Origin
from kms.service import (
    DataKey,
    DataKeyPair,
    DecryptResult,
    EncryptResult,
    Kms,
    KmsClient,
    ListPage,
    PublicKeyInfo,
)
from kms.store import Store

__all__ = [
    "AliasRecord",
    "DataKey",
    "DataKeyPair",
    "DecryptResult",
    "EncryptResult",
    "ImportParameters",
    "KeyRecord",
    "KeySpec",
    "KeyState",
    "KeyUsage",
    "KeyVersion",
    "Kms",
    "KmsClient",
    "KmsError",
    "ListPage",
    "Origin",
    "PublicKeyInfo",
    "Store",
]
