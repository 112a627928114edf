"""Aliases: create, update (re-point: manual rotation), delete, list.

An alias is a name of a key within an instance. Managing an alias is authorised on the alias
ARN and, by its ARN alone, on each key involved (the key it points at, the key it moves
to), as AWS does; a caller not allowed on the alias is told it does not exist, whether it
does or not.
"""

from __future__ import annotations

import re
from typing import Final

from kms import errors as E
from kms.caller import Caller, ListPage, Op, any_state, check_limit, check_marker, declare
from kms.keys.lifecycle import CAS_ATTEMPTS
from kms.model import AliasRecord, KeyRecord, KeyState

_ALIAS_RE: Final = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")

CREATE_ALIAS: Final = any_state("kms:CreateAlias", durable=True)
UPDATE_ALIAS: Final = any_state("kms:UpdateAlias", durable=True)
DELETE_ALIAS: Final = any_state("kms:DeleteAlias", durable=True)
LIST_ALIASES: Final = Op("kms:ListAliases", frozenset(KeyState))
declare(CREATE_ALIAS, UPDATE_ALIAS, DELETE_ALIAS, LIST_ALIASES)


class Aliases(Caller):
    """Alias management (see the module docstring)."""

    def _check_alias(self, name: object) -> str:
        if not isinstance(name, str) or not _ALIAS_RE.fullmatch(name):
            raise E.InvalidAliasName("alias names look like alias/[a-zA-Z0-9/_-]+")
        if name.startswith("alias/aws/"):
            raise E.InvalidAliasName("the alias/aws/ prefix is reserved")
        return name

    def _alias_arn(self, name: str) -> tuple[str, ...]:
        return (self.kms.alias_arn(self.instance_name, name),)

    def _allow_on_key(self, action: str, rec: KeyRecord) -> bool:
        """Alias management's check on a key: the action on the key ARN alone."""
        return self._allow(action, (rec.arn,), key=rec)

    def create_alias(self, alias_name: str, target_key_id: str) -> AliasRecord:
        """kms:CreateAlias on the alias and on the key (as in AWS)."""

        def body() -> AliasRecord:
            name = self._check_alias(alias_name)
            rec = self._key_for("kms:CreateAlias", target_key_id, key_arn_only=True)
            if not self._allow("kms:CreateAlias", self._alias_arn(name)):
                raise E.AccessDenied(f"not allowed to create alias {name}")
            if rec.state is KeyState.PENDING_DELETION:
                raise E.InvalidState(f"key {rec.arn} is pending deletion")
            now = self.kms.now()
            alias = AliasRecord(self.instance_name, name, rec.key_id, now, now)
            self._store.put_alias(alias, create=True)
            self.kms._forget_alias(self.instance_name, name, rec.key_id)
            self._audit("kms:CreateAlias", rec, None, "ok")
            return alias

        return self._run("kms:CreateAlias", body)

    def _current_alias(self, action: str, name: str) -> tuple[AliasRecord, KeyRecord]:
        """The alias and the key it points at, if the caller may run ``action`` on both;
        NotFound otherwise, whether or not the alias exists."""
        if not self._allow(action, self._alias_arn(name)):
            raise E.NotFound(f"alias {name} does not exist")
        self.kms._fresh()
        old = self._store.get_alias(self.instance_name, name)
        key = self.kms._key(old.key_id) if old is not None else None
        if old is None or key is None or not self._allow_on_key(action, key):
            raise E.NotFound(f"alias {name} does not exist")
        return old, key

    def update_alias(self, alias_name: str, target_key_id: str) -> AliasRecord:
        """kms:UpdateAlias on the alias, on the key it points at and on the new key."""

        def body() -> AliasRecord:
            name = self._check_alias(alias_name)
            old, old_key = self._current_alias("kms:UpdateAlias", name)
            rec = self._key_for("kms:UpdateAlias", target_key_id, key_arn_only=True)
            if rec.state is KeyState.PENDING_DELETION:
                raise E.InvalidState(f"key {rec.arn} is pending deletion")
            if old_key.usage is not rec.usage:
                raise E.Validation("an alias can only move to a key with the same usage")
            alias = AliasRecord(self.instance_name, name, rec.key_id, old.created,
                                self.kms.now())
            self._store.put_alias(alias, create=False)
            self.kms._forget_alias(self.instance_name, name, old.key_id, rec.key_id)
            self._audit("kms:UpdateAlias", rec, None, "ok")
            return alias

        return self._run("kms:UpdateAlias", body)

    def delete_alias(self, alias_name: str) -> None:
        """kms:DeleteAlias on the alias and on the key it points at."""

        def body() -> None:
            name = self._check_alias(alias_name)
            for _attempt in range(CAS_ATTEMPTS):
                old, key = self._current_alias("kms:DeleteAlias", name)
                if self._store.delete_alias(self.instance_name, name, key_id=old.key_id):
                    self.kms._forget_alias(self.instance_name, name, old.key_id)
                    self._audit("kms:DeleteAlias", key, None, "ok")
                    return
                self.kms._forget_alias(self.instance_name, name, old.key_id)  # moved meanwhile
            raise E.Internal("the alias is changing too fast; retry")

        self._run("kms:DeleteAlias", body)

    def list_aliases(self, key_id: str | None = None, limit: int = 100,
                     marker: str | None = None) -> ListPage:
        def body() -> ListPage:
            target = None
            if key_id is not None:
                target = self._key_for("kms:ListAliases", key_id).key_id
            elif not self._allow("kms:ListAliases", ()):
                raise E.AccessDenied("not allowed to list aliases")
            lim = check_limit(limit)
            rows = self._store.list_aliases(self.instance_name, target, check_marker(marker),
                                            lim + 1)
            more = len(rows) > lim
            rows = rows[:lim]
            self._audit("kms:ListAliases", None, None, "ok")
            return ListPage(tuple(rows), rows[-1].name if more and rows else None)

        return self._run("kms:ListAliases", body)
