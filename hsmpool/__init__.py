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

:func:`pkcs11_module_path` is where ``pip install`` put ``libhsmpool-pkcs11.so``, the PKCS#11
module that presents a KMS server's keys to third-party software (docs/pkcs11.md).
"""

from pathlib import Path as _Path

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
    "pkcs11_module_path",
]


def pkcs11_module_path() -> str:
    """The absolute path of ``libhsmpool-pkcs11.so`` (built by ``pip install``).

    Raises :class:`FileNotFoundError` when the package was installed without it."""
    path = _Path(__file__).resolve().parent / "libhsmpool-pkcs11.so"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall hsmpool (pip install -e .)")
    return str(path)
