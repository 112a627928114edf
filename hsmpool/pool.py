"""The pool: modules, members (tokens), instances (tenants), balancing and health.

``Pool.open(config)`` loads each PKCS#11 module once (through the shim copy), finds every
configured token by label or serial, logs in, probes its mechanisms, and makes sure every
instance's domain keys are on every token of its partition (copying them where missing).

Balancing is least in-flight, weighted, among the healthy members of an instance that offer
the mechanisms an operation needs. A device fault on one member is retried on another; the
member's breaker ejects it after consecutive failures and a background prober readmits it.

Degraded start: with ``[pool] require_all_tokens = false`` a token that is missing or
refuses login at open is left out (:attr:`Pool.missing` says why) as long as each instance
keeps at least one token that holds its domain keys; by default (unset) :class:`Pool` is
strict and the first such failure is raised.

Logging (logger ``hsmpool.pool``): a WARNING when a token is left out at open, when it is
ejected, and when the prober readmits it.

Time: a caller with a call context (``hsmpool.deadline(seconds)``, the server's requests)
has a deadline for the whole operation, enforced while a token call is in progress; a call
that runs past the hang budget is abandoned, its member ejected, and the operation retried
on another member (a hedge) while time is left. See :mod:`hsmpool._calls`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

from hsmpool import _calls, _p11
from hsmpool import kek as _kek
from hsmpool._p11 import Module, P11Error, acquire_module, release_module
from hsmpool._shim import shim_for
from hsmpool.balancer import Balancer
from hsmpool.config import PoolConfig, TokenConfig, load_config
from hsmpool.errors import (
    ConfigError,
    InstanceNotFoundError,
    LoginError,
    ModuleLoadError,
    PoolUnavailableError,
    TokenError,
    TokenNotFoundError,
)
from hsmpool.instance import Instance, SetupLock
from hsmpool.member import Member, MemberState, MemberStats

__all__ = ["Pool"]

log = logging.getLogger("hsmpool.pool")


class Pool:
    """A pool of PKCS#11 tokens partitioned into instances. Thread-safe."""

    def __init__(self, config: PoolConfig, *, setup_lock: SetupLock | None = None) -> None:
        """``setup_lock(instance)``, if given, is held (inside this host's own lock) while
        an instance's domain keys are looked for and, the first time, made or copied: a
        lock of the whole cluster, for nodes on several hosts sharing the tokens."""
        self.config = config
        self.settings = config.settings
        self._modules: dict[str, Module] = {}
        self.members: dict[str, Member] = {}
        self._closed = False
        self._prober: threading.Thread | None = None
        self._probe_wake = threading.Event()
        self._lock = threading.Lock()
        self.balancer = Balancer(self.settings)
        #: Tokens left out at open (``require_all_tokens = false``): name -> why.
        self.missing: dict[str, str] = {}
        strict = self.settings.require_all_tokens is not False
        try:
            owner = {t: i.name for i in config.instances.values() for t in i.tokens}
            for tok in config.tokens.values():
                try:
                    self.members[tok.name] = self._open_member(tok, owner.get(tok.name))
                except (TokenNotFoundError, LoginError, TokenError) as exc:
                    if strict:
                        raise
                    self.missing[tok.name] = str(exc)
            if not self.members:
                raise PoolUnavailableError("no configured token could be opened: " + "; ".join(
                    self.missing.values()))
            self.instances: dict[str, Instance] = {}
            for inst in config.instances.values():
                members = [self.members[t] for t in inst.tokens if t in self.members]
                gone = [t for t in inst.tokens if t not in self.members]
                if not members:
                    raise PoolUnavailableError(
                        f"instance {inst.name!r}: no token of its partition could be opened ("
                        + "; ".join(self.missing[t] for t in gone) + ")")
                if gone and not any(_kek.find_domain_key(m, d, inst.name) is not None
                                    for m in members for d in _kek.DOMAINS):
                    # New domain keys made now would not be the ones on the missing tokens
                    # (nor unwrap the blobs already stored under those).
                    raise PoolUnavailableError(
                        f"instance {inst.name!r}: token(s) {', '.join(gone)} missing, and no "
                        "token present holds the instance's domain keys; refusing to make "
                        "new ones while part of the partition is missing")
                self.instances[inst.name] = Instance(self.balancer, inst.name, members,
                                                     setup_lock=setup_lock)
        except BaseException:
            self.close()
            raise
        for name, why in self.missing.items():  # once the pool stands (else: the error)
            log.warning("token %r left out of the pool: %s", name, why)
        for m in self.members.values():
            m.on_eject = self._on_eject

    @classmethod
    def open(cls, config: PoolConfig | str | os.PathLike[str], *,
             setup_lock: SetupLock | None = None) -> Pool:
        """Open a pool from a :class:`PoolConfig` or the path of a TOML file."""
        if not isinstance(config, PoolConfig):
            config = load_config(config)
        return cls(config, setup_lock=setup_lock)

    # --- opening -----------------------------------------------------------------------

    def _module(self, name: str) -> Module:
        mod = self._modules.get(name)
        if mod is not None:
            return mod
        mcfg = self.config.modules[name]
        for key, value in mcfg.env.items():
            os.environ[key] = value
        if not Path(mcfg.path).exists():
            raise ModuleLoadError(f"module {name!r}: library {mcfg.path!r} does not exist")
        try:
            path = shim_for(mcfg.path)
        except (OSError, RuntimeError) as exc:
            raise ModuleLoadError(f"module {name!r}: cannot prepare the shim: {exc}") from None
        try:
            mod = acquire_module(path)
        except OSError as exc:
            raise ModuleLoadError(f"module {name!r}: cannot load {mcfg.path!r}: {exc}") from None
        except P11Error as exc:
            raise ModuleLoadError(f"module {name!r}: {exc}") from None
        self._modules[name] = mod
        return mod

    def _open_member(self, tok: TokenConfig, instance: str | None) -> Member:
        mod = self._module(tok.module)
        for attempt in range(4):
            infos = _token_infos(mod, tok.module)
            if tok.label is not None:
                matches = [i for i in infos if i.label == tok.label]
                what = f"label {tok.label!r}"
            else:
                matches = [i for i in infos if i.serial == tok.serial]
                what = f"serial {tok.serial!r}"
            if matches or len(infos) == len(mod.slots()):
                break
            # A slot could not be read (another process rewriting a SoftHSM2 token file):
            # look again before saying the token does not exist.
            time.sleep(0.1 * (attempt + 1))
        if not matches:
            raise TokenNotFoundError(f"token {tok.name!r}: no token with {what} in module "
                                     f"{tok.module!r}")
        if len(matches) > 1:
            raise ConfigError(f"token {tok.name!r}: several tokens have {what}; use 'serial'")
        try:
            return Member(tok, mod, matches[0], self.settings, instance)
        except LoginError:
            raise
        except P11Error as exc:
            raise TokenError(f"token {tok.name!r}: cannot open: {exc}", exc.name) from None

    # --- public API --------------------------------------------------------------------

    def instance(self, name: str) -> Instance:
        try:
            return self.instances[name]
        except KeyError:
            raise InstanceNotFoundError(f"no instance {name!r} in this pool") from None

    def stats(self) -> dict[str, MemberStats]:
        """Per token: state, in-flight, ops, errors, latency percentiles."""
        return {name: m.stats() for name, m in self.members.items()}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._probe_wake.set()
        for m in self.members.values():
            m.close()
        stuck = {m.config.module for m in self.members.values() if m.stuck}
        for name, mod in self._modules.items():
            if name not in stuck:  # a thread is still inside that library: never unload it
                release_module(mod)
        self._modules.clear()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- health ------------------------------------------------------------------------

    def _on_eject(self, member: Member, why: str = "ejected after failures") -> None:
        log.warning("token %r (label %r, instance %s) %s; probing it for readmission",
                    member.name, member.info.label, member.instance or "-", why)
        with self._lock:
            if self._closed:
                return
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(
                    target=_probe_loop, args=(weakref.ref(self),), name="hsmpool-prober",
                    daemon=True,
                )
                self._prober.start()
        self._probe_wake.set()

    def eject(self, name: str, why: str) -> bool:
        """Eject token ``name`` on outside evidence (``why``: whose); the prober probes it
        and readmits it once it answers, as after failures seen here. True if it was
        serving until now. KeyError for a token the pool does not have."""
        member = self.members[name]
        ejected = member.eject()
        if ejected:
            self._on_eject(member, why=why)
        return ejected

    def hold(self, name: str) -> bool:
        """An operator ejects token ``name`` from the pool until :meth:`release`. True if
        it was serving until now. KeyError for a token the pool does not have."""
        member = self.members[name]
        ejected = member.hold()
        if ejected:
            log.warning("token %r (label %r, instance %s) ejected by an operator", member.name,
                        member.info.label, member.instance or "-")
        return ejected

    def release(self, name: str) -> bool:
        """End an operator's hold on token ``name``: the prober probes it and readmits it
        (within ``probe_interval`` when it answers). True if it was held."""
        member = self.members[name]
        released = member.release()
        if released and member.state is MemberState.EJECTED:
            self._on_eject(member, why="released by an operator")
        return released

    def ejected(self) -> Iterable[Member]:
        return [m for m in self.members.values() if m.state is MemberState.EJECTED]


def _token_infos(mod: Module, name: str) -> list[_p11.TokenInfo]:
    """Token info of every slot. Another process may be rewriting a SoftHSM2 token file at
    that moment (CKR_GENERAL_ERROR): such a slot is retried a few times, then skipped."""
    try:
        slots = mod.slots()
    except P11Error as exc:
        raise ModuleLoadError(f"module {name!r}: cannot list tokens: {exc}") from None
    infos = []
    for slot in slots:
        for attempt in range(8):
            try:
                infos.append(mod.token_info(slot))
                break
            except P11Error:
                time.sleep(0.01 * (attempt + 1))
    return infos


def _probe_loop(ref: weakref.ref[Pool]) -> None:
    """Probe ejected members with exponential backoff; readmit those that answer."""
    backoff: dict[str, float] = {}
    due: dict[str, float] = {}
    since: dict[str, float] = {}  # when the prober first saw a member ejected
    while True:
        pool = ref()
        if pool is None or pool._closed:
            return
        settings = pool.settings
        now = time.monotonic()
        ejected = [m for m in pool.ejected() if not m.held]  # held: an operator's
        for m in pool.members.values():
            m.reap()
        # Probes are bounded like requests: a token that still hangs costs one budget.
        budget = 2 * max(settings.slow_call_ms, settings.hang_ms) / 1e3
        for m in ejected:
            if m.name not in due:
                since[m.name] = now
                backoff[m.name] = settings.probe_interval
                due[m.name] = now + settings.probe_interval
            if now < due[m.name]:
                continue
            if m.reap():
                ok = False  # a call it was given earlier has not returned: still hung
            else:
                with _calls.deadline(budget):
                    ok = m.probe()
            if ok:
                try:
                    with _calls.deadline(budget + settings.lease_timeout):
                        ok = m.readmit()
                except (P11Error, LoginError, ConfigError):
                    ok = False
            if ok:
                log.warning("token %r (label %r) readmitted after %.1f s out of the pool",
                            m.name, m.info.label, time.monotonic() - since.pop(m.name, now))
                backoff.pop(m.name, None)
                due.pop(m.name, None)
            else:
                backoff[m.name] = min(backoff[m.name] * 2, settings.probe_max_interval)
                due[m.name] = time.monotonic() + backoff[m.name]
        wake = pool._probe_wake
        wait = min((d - time.monotonic() for d in due.values()), default=1.0)
        del pool
        wake.wait(max(wait, 0.005))
        wake.clear()
