"""The pool's configuration, read from a TOML file into frozen dataclasses.

Example (relative paths are relative to the file)::

    [pool]
    sessions_per_token = 8        # bounded session pool per token
    lease_timeout = 5.0           # seconds to wait for a free session
    key_cache_size = 1024         # unwrapped key handles kept per token (LRU)
    failure_threshold = 3         # consecutive failures that eject a token
    slow_call_ms = 500            # a call slower than this counts as a failure
    hang_ms = 250                 # a bounded call running longer is abandoned, the token ejected
    probe_interval = 0.1          # first health probe after ejection (doubles...)
    probe_max_interval = 2.0      # ...up to this
    operation_timeout = 10.0      # time budget of one operation across members
    executor_spin_us = 50         # an idle executor thread polls this long before sleeping
    require_all_tokens = false    # true: a token missing at start fails the open (unset:
                                  # hsmpool.Pool is strict, the hsmpool command degrades)

    [modules.softhsm]
    path = "/usr/lib/softhsm/libsofthsm2.so"
    env = { SOFTHSM2_CONF = "var/softhsm/softhsm2.conf" }   # set before the module loads

    [tokens.t0]
    module = "softhsm"
    label = "hsmpool-0"           # or: serial = "1e517b266ad758df"
    pin_file = "var/softhsm/user.pin"   # or: pin_env = "HSMPOOL_PIN"
    so_pin_env = "HSMPOOL_SO_PIN"  # optional (or so_pin_file): needed only to copy the
                                   # domain keys *from* this token to one that lacks them
    weight = 1

    [instances.default]
    tokens = ["t0", "t1", "t2"]

PINs are never written inline: only the name of an environment variable or of a file.

The SO PIN is an administrator's secret: a pool opens without it as long as every token of
a partition holds the instance's domain keys (a token that lacks them then serves no key
operations of the instance; see :attr:`hsmpool.instance.Instance.domain_key_state`), so a
serving host's configuration need name none, or name a variable that is set only for the
administrator's ``hsmpool status`` run. See ``docs/security.md``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hsmpool.errors import ConfigError

__all__ = [
    "InstanceConfig",
    "ModuleConfig",
    "PoolConfig",
    "PoolSettings",
    "TokenConfig",
    "degraded_default",
    "load_config",
    "parse_config",
    "read_toml",
]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    sessions_per_token: int = 8
    lease_timeout: float = 5.0
    key_cache_size: int = 1024
    failure_threshold: int = 3
    slow_call_ms: float = 500.0
    hang_ms: float = 250.0
    probe_interval: float = 0.1
    probe_max_interval: float = 2.0
    operation_timeout: float = 10.0
    executor_spin_us: int = 50
    #: ``True``: every configured token must open (the pool fails otherwise). ``False``: a
    #: token that is missing or refuses login is left out (``Pool.missing``) as long as each
    #: instance keeps at least one token. ``None`` (unset): strict for :class:`hsmpool.Pool`
    #: (and ``kms.Kms.open``); the ``hsmpool`` command (serve, status, the key and
    #: credentials commands) treats it as ``False``.
    require_all_tokens: bool | None = None

    def __post_init__(self) -> None:
        if self.require_all_tokens is not None and not isinstance(self.require_all_tokens,
                                                                  bool):
            raise ConfigError("pool.require_all_tokens must be true or false")
        if self.sessions_per_token < 1:
            raise ConfigError("pool.sessions_per_token must be at least 1")
        if self.key_cache_size < 1:
            raise ConfigError("pool.key_cache_size must be at least 1")
        if self.failure_threshold < 1:
            raise ConfigError("pool.failure_threshold must be at least 1")
        for name in ("lease_timeout", "slow_call_ms", "hang_ms", "probe_interval",
                     "probe_max_interval", "operation_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"pool.{name} must be a positive number")
        if (isinstance(self.executor_spin_us, bool) or not isinstance(self.executor_spin_us, int)
                or not 0 <= self.executor_spin_us <= 10_000):
            raise ConfigError("pool.executor_spin_us must be an integer 0..10000")


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    name: str
    path: str
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TokenConfig:
    name: str
    module: str
    label: str | None = None
    serial: str | None = None
    pin_env: str | None = None
    pin_file: str | None = None
    so_pin_env: str | None = None
    so_pin_file: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.label is None) == (self.serial is None):
            raise ConfigError(f"token {self.name!r}: give exactly one of 'label' or 'serial'")
        if (self.pin_env is None) == (self.pin_file is None):
            raise ConfigError(f"token {self.name!r}: give exactly one of 'pin_env' or 'pin_file'")
        if self.so_pin_env is not None and self.so_pin_file is not None:
            raise ConfigError(f"token {self.name!r}: give at most one of so_pin_env/so_pin_file")
        if not self.weight > 0:
            raise ConfigError(f"token {self.name!r}: weight must be positive")

    def user_pin(self) -> bytes:
        pin = _read_secret(self.name, "PIN", self.pin_env, self.pin_file)
        assert pin is not None
        return pin

    def so_pin(self) -> bytes | None:
        return _read_secret(self.name, "SO PIN", self.so_pin_env, self.so_pin_file)


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    name: str
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PoolConfig:
    settings: PoolSettings
    modules: Mapping[str, ModuleConfig]
    tokens: Mapping[str, TokenConfig]
    instances: Mapping[str, InstanceConfig]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ConfigError("the configuration defines no [tokens.*]")
        for tok in self.tokens.values():
            if tok.module not in self.modules:
                raise ConfigError(f"token {tok.name!r} names unknown module {tok.module!r}")
        owner: dict[str, str] = {}
        for inst in self.instances.values():
            if not inst.tokens:
                raise ConfigError(f"instance {inst.name!r} has no tokens")
            for t in inst.tokens:
                if t not in self.tokens:
                    raise ConfigError(f"instance {inst.name!r} names unknown token {t!r}")
                if t in owner:
                    raise ConfigError(
                        f"token {t!r} is in two partitions ({owner[t]!r} and {inst.name!r}); "
                        "a token belongs to at most one instance"
                    )
                owner[t] = inst.name


def _read_secret(token: str, what: str, env: str | None, path: str | None) -> bytes | None:
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"token {token!r}: environment variable {env!r} for its {what} "
                              "is not set")
        return value.encode()
    if path is not None:
        try:
            return Path(path).read_text().strip().encode()
        except OSError as exc:
            raise ConfigError(f"token {token!r}: cannot read {what} file {path!r}: "
                              f"{exc.strerror}") from None
    return None


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a table")
    return value


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p))


_SETTINGS_FIELDS = set(PoolSettings.__dataclass_fields__)
_TOKEN_KEYS = {"module", "label", "serial", "pin_env", "pin_file", "so_pin_env", "so_pin_file",
               "weight"}


def parse_config(doc: Mapping[str, Any], base_dir: Path | None = None,
                 source: str = "<memory>") -> PoolConfig:
    """Build a :class:`PoolConfig` from a parsed TOML document."""
    base = base_dir or Path.cwd()
    unknown = set(doc) - {"pool", "modules", "tokens", "instances", "kms", "server"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
    raw_settings = dict(_table(doc, "pool", source))
    bad = set(raw_settings) - _SETTINGS_FIELDS
    if bad:
        raise ConfigError(f"{source}: unknown [pool] key(s) {sorted(bad)}")
    try:
        settings = PoolSettings(**raw_settings)
    except TypeError as exc:
        raise ConfigError(f"{source}: [pool]: {exc}") from None

    modules: dict[str, ModuleConfig] = {}
    for name, m in _table(doc, "modules", source).items():
        if not isinstance(m, dict) or not isinstance(m.get("path"), str):
            raise ConfigError(f"{source}: module {name!r} needs a 'path' string")
        env = m.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"{source}: module {name!r}: 'env' must map names to strings")
        env = {k: (_resolve(base, v) if k.endswith("_CONF") else v) for k, v in env.items()}
        path = m["path"]
        modules[name] = ModuleConfig(name, _resolve(base, path) if "/" in path else path, env)

    tokens: dict[str, TokenConfig] = {}
    for name, t in _table(doc, "tokens", source).items():
        if not isinstance(t, dict):
            raise ConfigError(f"{source}: token {name!r} must be a table")
        bad = set(t) - _TOKEN_KEYS
        if bad:
            raise ConfigError(f"{source}: token {name!r}: unknown key(s) {sorted(bad)}")
        if not isinstance(t.get("module"), str):
            raise ConfigError(f"{source}: token {name!r} needs a 'module'")
        kw = dict(t)
        for key in ("pin_file", "so_pin_file"):
            if isinstance(kw.get(key), str):
                kw[key] = _resolve(base, kw[key])
        try:
            tokens[name] = TokenConfig(name=name, **kw)
        except TypeError as exc:
            raise ConfigError(f"{source}: token {name!r}: {exc}") from None

    instances: dict[str, InstanceConfig] = {}
    for name, i in _table(doc, "instances", source).items():
        toks = i.get("tokens") if isinstance(i, dict) else None
        if not isinstance(toks, list) or not all(isinstance(x, str) for x in toks):
            raise ConfigError(f"{source}: instance {name!r} needs 'tokens', a list of names")
        instances[name] = InstanceConfig(name, tuple(toks))
    return PoolConfig(settings, modules, tokens, instances, source)


def read_toml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """A configuration file's document and the folder its relative paths start from."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(p)!r} does not exist") from None
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(f"configuration file {str(p)!r} cannot be read: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the file itself
        raise ConfigError(f"{p}: not valid TOML: not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(f"{p}: not valid TOML: arrays or tables nested too deep") from None
    return doc, p.resolve().parent


def load_config(path: str | os.PathLike[str]) -> PoolConfig:
    """Read and validate a TOML configuration file."""
    doc, base = read_toml(path)
    return parse_config(doc, base, str(path))


def degraded_default(config: PoolConfig) -> PoolConfig:
    """``config`` with ``[pool] require_all_tokens`` false unless the file set it: what the
    ``hsmpool`` command opens (a token missing at start is left out and reported instead of
    failing the whole pool)."""
    if config.settings.require_all_tokens is not None:
        return config
    return replace(config, settings=replace(config.settings, require_all_tokens=False))
