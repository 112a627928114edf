"""A hypothesis state machine: random sequences of key lifecycle operations against a model.

The model keeps, per key, its state, its versions, its deletion date and rotation schedule
and its minimum decryption version; per ciphertext, the key, version, plaintext and context.
After every step each key is described and listed, and every ciphertext ever made is
decrypted: it must give its plaintext, or fail with exactly the error the model predicts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hsmpool import Pool
from kms import Kms, KmsClient
from kms import errors as E
from kms.model import KeyState
from tests.kms.conftest import DAY, FakeClock, make_kms

ENABLED, DISABLED, PENDING, PURGED = "Enabled", "Disabled", "PendingDeletion", "Purged"


@dataclass
class MKey:
    spec: str
    state: str = ENABLED
    versions: list[str | None] = field(default_factory=list)  # None: made by run_due, id unknown
    deletion_date: float | None = None
    period: int | None = None
    next_rotation: float | None = None
    min_version: int = 1


@dataclass(frozen=True)
class MCt:
    key_id: str
    number: int  # the key version (1-based) that made it
    blob: bytes
    plaintext: bytes
    context: tuple[tuple[str, str], ...]


def state_error(state: str) -> type[E.KmsError] | None:
    """The error an operation using a key in this state raises (None: it works)."""
    return {ENABLED: None, DISABLED: E.Disabled, PENDING: E.InvalidState,
            PURGED: E.NotFound}[state]


alias_names = st.sampled_from(["alias/a", "alias/b", "alias/team/c"])
contexts = st.dictionaries(st.sampled_from(["a", "b", "purpose", "ü"]),
                           st.sampled_from(["", "1", "x y", "long value"]), max_size=3)


def run_machine(pool: Pool, base: Path) -> None:
    counter = itertools.count()

    class KeyMachine(RuleBasedStateMachine):
        keys = Bundle("keys")

        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock()
            self.db = base / f"sm-{next(counter)}.db"
            self.kms: Kms = make_kms(pool, self.db, self.clock)
            self.c: KmsClient = self.kms.client("svc")
            self.model: dict[str, MKey] = {}
            self.cts: list[MCt] = []
            self.aliases: dict[str, str] = {}  # alias name -> key id

        def teardown(self) -> None:
            self.kms.close()

        # ------------------------------------------------------------------ helpers

        def expect(self, err: type[E.KmsError] | None, fn: Any) -> Any:
            """Run fn; it must raise exactly ``err`` (or succeed when err is None)."""
            if err is None:
                return fn()
            try:
                fn()
            except E.KmsError as exc:
                assert type(exc) is err, f"expected {err.__name__}, got {exc!r}"
                return None
            raise AssertionError(f"expected {err.__name__}, the call succeeded")

        def decrypt_outcome(self, ct: MCt, ctx: dict[str, str]) -> type[E.KmsError] | None:
            k = self.model[ct.key_id]
            if k.state == PURGED:
                return E.InvalidCiphertext
            err = state_error(k.state)
            if err is not None:
                return err
            if ct.number < k.min_version or tuple(sorted(ctx.items())) != ct.context:
                return E.InvalidCiphertext
            return None

        # ------------------------------------------------------------------ rules

        @initialize(target=keys)
        def two_keys(self) -> Any:
            """Every run starts with an AES and an SM4 key (runs without keys test little)."""
            return multiple(self.create("SYMMETRIC_DEFAULT"), self.create("SM4"))

        @precondition(lambda self: len(self.model) < 4)  # few keys: more steps per key
        @rule(target=keys, spec=st.sampled_from(["SYMMETRIC_DEFAULT", "SM4"]))
        def create(self, spec: str) -> str:
            rec = self.c.create_key(spec)
            assert rec.state is KeyState.ENABLED
            self.model[rec.key_id] = MKey(spec, versions=[rec.primary_version])
            return rec.key_id

        @rule(key_id=keys)
        def rotate(self, key_id: str) -> None:
            k = self.model[key_id]
            v = self.expect(state_error(k.state), lambda: self.c.rotate_key_on_demand(key_id))
            if v is not None:
                assert v.number == len(k.versions) + 1
                k.versions.append(v.version_id)

        @rule(key_id=keys)
        def disable(self, key_id: str) -> None:
            k = self.model[key_id]
            err = {ENABLED: None, DISABLED: None, PENDING: E.InvalidState,
                   PURGED: E.NotFound}[k.state]
            if self.expect(err, lambda: self.c.disable_key(key_id)) is not None:
                k.state = DISABLED

        @rule(key_id=keys)
        def enable(self, key_id: str) -> None:
            k = self.model[key_id]
            err = {ENABLED: None, DISABLED: None, PENDING: E.InvalidState,
                   PURGED: E.NotFound}[k.state]
            if self.expect(err, lambda: self.c.enable_key(key_id)) is not None:
                k.state = ENABLED

        @rule(key_id=keys, days=st.integers(min_value=7, max_value=30))
        def schedule_deletion(self, key_id: str, days: int) -> None:
            k = self.model[key_id]
            err = {ENABLED: None, DISABLED: None, PENDING: E.InvalidState,
                   PURGED: E.NotFound}[k.state]
            rec = self.expect(err, lambda: self.c.schedule_key_deletion(key_id, days))
            if rec is not None:
                k.state, k.deletion_date = PENDING, self.clock.t + days * DAY
                assert rec.deletion_date == k.deletion_date

        @rule(key_id=keys)
        def cancel_deletion(self, key_id: str) -> None:
            k = self.model[key_id]
            err = {ENABLED: E.InvalidState, DISABLED: E.InvalidState, PENDING: None,
                   PURGED: E.NotFound}[k.state]
            if self.expect(err, lambda: self.c.cancel_key_deletion(key_id)) is not None:
                k.state, k.deletion_date = DISABLED, None

        @rule(key_id=keys, period=st.sampled_from([90, 100, 365]))
        def enable_rotation(self, key_id: str, period: int) -> None:
            k = self.model[key_id]
            rec = self.expect(state_error(k.state),
                              lambda: self.c.enable_key_rotation(key_id, period))
            if rec is not None:
                k.period, k.next_rotation = period, self.clock.t + period * DAY

        @rule(key_id=keys, number=st.integers(min_value=0, max_value=6))
        def set_min_version(self, key_id: str, number: int) -> None:
            k = self.model[key_id]
            err: type[E.KmsError] | None = E.NotFound if k.state == PURGED else None
            if err is None and not 1 <= number <= len(k.versions):
                err = E.Validation
            if self.expect(err, lambda: self.c.set_min_decryption_version(key_id, number)):
                k.min_version = number

        @rule(key_id=keys, plaintext=st.binary(min_size=1, max_size=40), ctx=contexts)
        def encrypt(self, key_id: str, plaintext: bytes, ctx: dict[str, str]) -> None:
            k = self.model[key_id]
            res = self.expect(state_error(k.state),
                              lambda: self.c.encrypt(key_id, plaintext, ctx))
            if res is not None:
                blob = res.ciphertext_blob
                known = k.versions[-1]
                if known is not None:
                    assert blob[1:17].hex() == known
                self.cts.append(MCt(key_id, len(k.versions), blob, plaintext,
                                    tuple(sorted(ctx.items()))))

        @rule(name=alias_names, key_id=keys)
        def create_alias(self, name: str, key_id: str) -> None:
            k = self.model[key_id]
            err = {PURGED: E.NotFound, PENDING: E.InvalidState}.get(k.state)
            if err is None and name in self.aliases:
                err = E.AlreadyExists
            if self.expect(err, lambda: self.c.create_alias(name, key_id)) is not None:
                self.aliases[name] = key_id

        @rule(name=alias_names, key_id=keys)
        def update_alias(self, name: str, key_id: str) -> None:
            k = self.model[key_id]
            err = E.NotFound if name not in self.aliases else \
                {PURGED: E.NotFound, PENDING: E.InvalidState}.get(k.state)
            if self.expect(err, lambda: self.c.update_alias(name, key_id)) is not None:
                self.aliases[name] = key_id

        @rule(name=alias_names)
        def delete_alias(self, name: str) -> None:
            err = None if name in self.aliases else E.NotFound
            self.expect(err, lambda: self.c.delete_alias(name))
            self.aliases.pop(name, None)

        @rule(name=alias_names, plaintext=st.binary(min_size=1, max_size=40))
        def encrypt_via_alias(self, name: str, plaintext: bytes) -> None:
            key_id = self.aliases.get(name)
            err = E.NotFound if key_id is None else state_error(self.model[key_id].state)
            res = self.expect(err, lambda: self.c.encrypt(name, plaintext))
            if res is not None and key_id is not None:
                k = self.model[key_id]
                assert res.key_id.endswith(key_id)
                self.cts.append(MCt(key_id, len(k.versions), res.ciphertext_blob, plaintext,
                                    ()))

        @rule(key_id=keys, plaintext=st.binary(min_size=1, max_size=40), ctx=contexts)
        def encrypt_twice(self, key_id: str, plaintext: bytes, ctx: dict[str, str]) -> None:
            """The same plaintext and context twice: two different ciphertexts (fresh
            nonces), both recorded. (Also makes encryptions more frequent.)"""
            before = len(self.cts)
            self.encrypt(key_id, plaintext, ctx)
            self.encrypt(key_id, plaintext, ctx)
            if len(self.cts) == before + 2:
                assert self.cts[-1].blob != self.cts[-2].blob

        @precondition(lambda self: bool(self.cts))
        @rule(data=st.data(), wrong=st.booleans())
        def decrypt(self, data: st.DataObject, wrong: bool) -> None:
            ct = data.draw(st.sampled_from(self.cts))
            ctx = dict(ct.context)
            if wrong:
                ctx = {**ctx, "extra": "pair"} if len(ctx) % 2 == 0 else {}
            err = self.decrypt_outcome(ct, ctx)
            out = self.expect(err, lambda: self.c.decrypt(ct.blob, ctx))
            if out is not None:
                assert out.plaintext == ct.plaintext

        @precondition(lambda self: bool(self.cts))
        @rule(data=st.data(), dst=keys, ctx=contexts)
        def re_encrypt(self, data: st.DataObject, dst: str, ctx: dict[str, str]) -> None:
            ct = data.draw(st.sampled_from(self.cts))
            err = self.decrypt_outcome(ct, dict(ct.context))
            d = self.model[dst]
            if err is None:
                err = state_error(d.state)
            res = self.expect(err, lambda: self.c.re_encrypt(ct.blob, dst, dict(ct.context),
                                                            ctx))
            if res is not None:
                self.cts.append(MCt(dst, len(d.versions), res[0].ciphertext_blob, ct.plaintext,
                                    tuple(sorted(ctx.items()))))

        @rule(days=st.sampled_from([0, 1, 6, 7, 13, 30, 31, 89, 90, 120]))
        def advance_and_run_due(self, days: int) -> None:
            self.clock.advance(days)
            now = self.clock.t
            want_purged, want_rotated = set(), set()
            for key_id, k in self.model.items():
                if k.state == PENDING and k.deletion_date is not None and \
                        k.deletion_date <= now:
                    want_purged.add(key_id)
                elif k.state == ENABLED and k.next_rotation is not None and \
                        k.next_rotation <= now and k.period is not None:
                    want_rotated.add(key_id)
            done = self.kms.run_due()
            assert set(done["purged"]) == want_purged and len(done["purged"]) == len(want_purged)
            assert set(done["rotated"]) == want_rotated
            assert len(done["rotated"]) == len(want_rotated)
            for key_id in want_purged:
                self.model[key_id].state = PURGED
                # a purge deletes the key's aliases
                self.aliases = {n: kid for n, kid in self.aliases.items() if kid != key_id}
            for key_id in want_rotated:
                k = self.model[key_id]
                assert k.next_rotation is not None and k.period is not None
                k.versions.append(None)
                nxt = k.next_rotation + k.period * DAY
                while nxt <= now:
                    nxt += k.period * DAY
                k.next_rotation = nxt
                listed = self.c.list_key_rotations(key_id)
                assert [v.number for v in listed] == list(range(1, len(k.versions) + 1))
                k.versions[-1] = listed[-1].version_id

        @rule()
        def restart(self) -> None:
            """A new service object on the same store (nothing cached survives)."""
            self.kms.close()
            self.kms = make_kms(pool, self.db, self.clock)
            self.c = self.kms.client("svc")

        # ------------------------------------------------------------------ invariants

        @invariant()
        def keys_match_the_model(self) -> None:
            for key_id, k in self.model.items():
                if k.state == PURGED:
                    self.expect(E.NotFound, lambda kid=key_id: self.c.describe_key(kid))
                    continue
                rec = self.c.describe_key(key_id)
                assert rec.state.value == k.state
                assert rec.deletion_date == (k.deletion_date if k.state == PENDING else None)
                assert rec.min_decrypt_version == k.min_version
                assert rec.rotation_enabled == (k.period is not None)
                assert rec.next_rotation == k.next_rotation
                listed = self.c.list_key_rotations(key_id)
                assert [v.number for v in listed] == list(range(1, len(k.versions) + 1))
                assert [v.version_id for v in listed] == k.versions
                assert rec.primary_version == k.versions[-1]
            live = {kid for kid, k in self.model.items() if k.state != PURGED}
            assert {r.key_id for r in self.c.list_keys(limit=1000).items} == live
            aliased = {a.name: a.key_id for a in self.c.list_aliases(limit=1000).items}
            assert aliased == self.aliases
            for name, key_id in self.aliases.items():
                assert self.c.describe_key(name).key_id == key_id

        @invariant()
        def every_ciphertext_behaves(self) -> None:
            for ct in self.cts:
                err = self.decrypt_outcome(ct, dict(ct.context))
                out = self.expect(err, lambda ct=ct: self.c.decrypt(ct.blob, dict(ct.context)))
                if out is not None:
                    assert out.plaintext == ct.plaintext
                    assert out.key_version == self.model[ct.key_id].versions[ct.number - 1]

    run_state_machine_as_test(
        KeyMachine,
        settings=settings(max_examples=100, stateful_step_count=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much]))


def test_key_lifecycle_state_machine(svc_pool: Pool, tmp_path: Path) -> None:
    run_machine(svc_pool, tmp_path)
