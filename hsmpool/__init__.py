"""hsmpool: many PKCS#11 tokens as one load-balanced, health-checked, tenant-isolated pool.

    from hsmpool import Pool, KeySpec, SignAlgorithm

    with Pool.open("hsmpool.toml") as pool:
        inst = pool.instance("default")
        key = inst.generate(KeySpec.AES_256)       # a wrapped blob, safe to store
        ct = inst.encrypt(key, b"secret", aad=b"context")
        assert inst.decrypt(key, ct, aad=b"context") == b"secret"

Time limits: ``with hsmpool.deadline(2.0): inst.encrypt(...)`` bounds every token call in
the block (a hung token is abandoned and ejected, the operation retried on another member);
an event-loop server runs its requests through :class:`AsyncHub`. See ``hsmpool._calls``.

Exceptions: see :mod:`hsmpool.errors`.
"""

from hsmpool._calls import Hub as AsyncHub
from hsmpool._calls import deadline
from hsmpool.blob import KeyBlob, KeySpec
from hsmpool.config import PoolConfig, load_config, parse_config
from hsmpool.errors import (
    ConfigError,
    DeadlineExceededError,
    DecryptionError,
    ForeignBlobError,
    HsmPoolError,
    InstanceNotFoundError,
    InvalidBlobError,
    InvalidTagError,
    LeaseTimeoutError,
    LoginError,
    ModuleLoadError,
    PoolUnavailableError,
    TokenError,
    TokenNotFoundError,
    UnsupportedOperationError,
)
from hsmpool.instance import Instance, SignAlgorithm
from hsmpool.member import MemberStats
from hsmpool.pool import Pool

__all__ = [
    "AsyncHub",
    "ConfigError",
    "DeadlineExceededError",
    "DecryptionError",
    "ForeignBlobError",
    "HsmPoolError",
    "Instance",
    "InstanceNotFoundError",
    "InvalidBlobError",
    "InvalidTagError",
    "KeyBlob",
    "KeySpec",
    "LeaseTimeoutError",
    "LoginError",
    "MemberStats",
    "ModuleLoadError",
    "Pool",
    "PoolConfig",
    "PoolUnavailableError",
    "SignAlgorithm",
    "TokenError",
    "TokenNotFoundError",
    "UnsupportedOperationError",
    "deadline",
    "load_config",
    "parse_config",
]
