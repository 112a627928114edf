"""Instance domain keys: creation on a partition and copying between its tokens.

Each instance has two AES-256 domain keys on every token of its partition and on no other
token: ``kek`` wraps HSM keys, ``swkek`` wraps SOFTWARE material (see :mod:`hsmpool.blob`).
They are private, sensitive token objects, labelled ``hsmpool:<domain>:<instance>`` with a
random 16-byte ``CKA_ID`` shared by all copies, usable only to wrap and unwrap, and
extractable only under a *trusted* key (``CKA_WRAP_WITH_TRUSTED``).

Copying to a new member never exposes the key outside a token:

1. the target token generates an RSA-2048 transport pair (session objects; the private half
   sensitive and non-extractable);
2. the source token's security officer imports the transport public key as a trusted token
   object (a separate short-lived process, :mod:`hsmpool._so_tool`, because PKCS#11 allows
   no SO login while this process has the user logged in);
3. the source wraps the domain key under it with ``CKM_RSA_PKCS_OAEP`` (SHA-1, the only
   OAEP hash SoftHSM2 2.6 offers) and the target unwraps it as a token object;
4. the transport objects are destroyed on both sides.

Hardening of ``kek`` (the HSM domain key). Whoever holds a token's user PIN can call the
token directly; with a key blob from the metadata store they could unwrap it under the
domain key into a readable object, or switch ``CKA_DECRYPT`` on for the domain key and
decrypt the blob with AES-ECB (RFC 5649 unwrapping by hand). So ``kek`` is made with

* ``CKA_UNWRAP_TEMPLATE`` = {``CKA_SENSITIVE`` true, ``CKA_EXTRACTABLE`` false}: the token
  refuses to unwrap anything under it that would not be sensitive and non-extractable
  (SoftHSM2 2.6.1 requires the caller's template to carry both attributes with those values:
  ``CKR_TEMPLATE_INCONSISTENT`` otherwise);
* ``CKA_MODIFIABLE`` false and ``CKA_COPYABLE`` false: its attributes (``CKA_DECRYPT``...)
  cannot be changed, in place or in a copy (``CKR_ACTION_PROHIBITED``).

A copy to a new member is unwrapped with the same attributes. ``swkek`` is not hardened: the
SOFTWARE material it wraps is read back by design (see ``docs/decisions.md``).

Domain keys made before this (no unwrap template, modifiable) cannot be hardened in place:
SoftHSM2 2.6.1 answers ``CKR_ATTRIBUTE_READ_ONLY`` to setting ``CKA_UNWRAP_TEMPLATE`` on an
existing key and to ``C_CopyObject`` with it, and a new key would not unwrap the existing
blobs. :func:`kek_is_hardened` tells them apart; the pool warns about them and
``hsmpool status`` reports them. A token that refuses the hardening attributes when the key
is made gets an unhardened key, with the same warning.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from hsmpool import _p11 as p
from hsmpool._p11 import Mechanism, P11Error, Template
from hsmpool.errors import ConfigError, TokenError

if TYPE_CHECKING:
    from hsmpool.member import Member

DOMAINS = ("kek", "swkek")
#: The domain keys made with an unwrap template and unmodifiable (module docstring).
HARDENED: frozenset[str] = frozenset({"kek"})

log = logging.getLogger("hsmpool.kek")

WRAP_PAD = Mechanism.plain(p.CKM_AES_KEY_WRAP_PAD)
_OAEP_SHA1 = Mechanism.oaep(p.CKM_SHA_1, p.CKG_MGF1_SHA1)


def label_of(domain: str, instance: str) -> bytes:
    return f"hsmpool:{domain}:{instance}".encode()


#: What the HSM domain key imposes on every key unwrapped under it (its
#: ``CKA_UNWRAP_TEMPLATE``); the pool's own unwrap templates carry both attributes.
HSM_UNWRAP_TEMPLATE: Mapping[int, p.AttrValue] = MappingProxyType(
    {p.CKA_SENSITIVE: True, p.CKA_EXTRACTABLE: False})
_HSM_UNWRAP = Template(HSM_UNWRAP_TEMPLATE)
#: Return codes of a token that does not take the hardening attributes.
_UNSUPPORTED = frozenset({p.CKR_ATTRIBUTE_TYPE_INVALID, p.CKR_ATTRIBUTE_VALUE_INVALID,
                          p.CKR_TEMPLATE_INCONSISTENT})


def _domain_template(label: bytes, key_id: bytes, *, generate: bool,
                     harden: bool = False) -> Template:
    attrs: dict[int, p.AttrValue] = {
        p.CKA_CLASS: p.CKO_SECRET_KEY,
        p.CKA_KEY_TYPE: p.CKK_AES,
        p.CKA_TOKEN: True,
        p.CKA_PRIVATE: True,
        p.CKA_LABEL: label,
        p.CKA_ID: key_id,
        p.CKA_SENSITIVE: True,
        p.CKA_EXTRACTABLE: True,
        p.CKA_WRAP_WITH_TRUSTED: True,
        p.CKA_WRAP: True,
        p.CKA_UNWRAP: True,
        p.CKA_ENCRYPT: False,
        p.CKA_DECRYPT: False,
        p.CKA_SIGN: False,
        p.CKA_VERIFY: False,
        p.CKA_DERIVE: False,
    }
    if generate:
        attrs[p.CKA_VALUE_LEN] = 32
    if harden:
        attrs[p.CKA_UNWRAP_TEMPLATE] = _HSM_UNWRAP
        attrs[p.CKA_COPYABLE] = False
        # Last: SoftHSM2 2.6.1 applies an unwrap template in order, and any attribute after
        # CKA_MODIFIABLE=false fails with CKR_ATTRIBUTE_READ_ONLY.
        attrs[p.CKA_MODIFIABLE] = False
    return Template(attrs)


def _hardened_or_not(make: Callable[[Template], int], domain: str, member: Member,
                     instance: str, template: Callable[[bool], Template]) -> int:
    """Make a domain key hardened if it is one of :data:`HARDENED`; if the token refuses
    the hardening attributes, unhardened, with a warning."""
    if domain not in HARDENED:
        return make(template(False))
    try:
        return make(template(True))
    except P11Error as exc:
        if exc.rv not in _UNSUPPORTED:
            raise
    log.warning("token %r refused the hardening attributes of the %s key of instance %r "
                "(CKA_UNWRAP_TEMPLATE, CKA_MODIFIABLE, CKA_COPYABLE): made without them; "
                "holders of its user PIN can read the HSM keys it wraps", member.name,
                domain, instance)
    return make(template(False))


def kek_is_hardened(member: Member, handle: int) -> bool:
    """Whether a domain key on a token carries the hardening of the module docstring: the
    unwrap template exactly, and neither modifiable nor copyable."""
    mod, s = member.module, member.anchor
    try:
        unwrap = mod.get_attribute_array(s, handle, p.CKA_UNWRAP_TEMPLATE)
        modifiable = mod.get_attribute(s, handle, p.CKA_MODIFIABLE)
        copyable = mod.get_attribute(s, handle, p.CKA_COPYABLE)
    except P11Error as exc:
        if exc.rv in p.HARD_FAULTS:
            raise
        return False
    want = {attr: b"\x01" if value else b"\x00" for attr, value in HSM_UNWRAP_TEMPLATE.items()}
    return unwrap == want and modifiable == b"\x00" and copyable == b"\x00"


def find_domain_key(member: Member, domain: str, instance: str) -> tuple[int, bytes] | None:
    """The (handle, CKA_ID) of an instance's domain key on a token, or None."""
    tpl = Template({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_LABEL: label_of(domain, instance)})
    found = member.module.find(member.anchor, tpl, 4)
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError(f"token {member.name!r} holds several {domain} keys for instance "
                          f"{instance!r}")
    handle = found[0]
    return handle, member.module.get_attribute(member.anchor, handle, p.CKA_ID)


def any_domain_keys(member: Member) -> list[str]:
    """Labels of every hsmpool domain key on a token (for isolation checks)."""
    tpl = Template({p.CKA_CLASS: p.CKO_SECRET_KEY})
    labels = []
    for h in member.module.find(member.anchor, tpl, 1024):
        try:
            label = member.module.get_attribute(member.anchor, h, p.CKA_LABEL).decode()
        except (P11Error, UnicodeDecodeError):
            continue
        if label.startswith("hsmpool:"):
            labels.append(label)
    return labels


def generate_domain_key(member: Member, domain: str, instance: str) -> tuple[int, bytes]:
    key_id = secrets.token_bytes(16)
    label = label_of(domain, instance)
    handle = _hardened_or_not(
        lambda tpl: member.module.generate_key(member.anchor, p.CKM_AES_KEY_GEN, tpl),
        domain, member, instance,
        lambda harden: _domain_template(label, key_id, generate=True, harden=harden))
    return handle, key_id


class SoPinMissing(ConfigError):
    """Copying a domain key needs the source token's SO PIN, and none is configured."""


def copy_domain_key(
    source: Member, target: Member, domain: str, instance: str, key_id: bytes,
    source_handle: int,
) -> int:
    """Copy a domain key from ``source`` to ``target`` token (see the module docstring)."""
    try:
        so_pin = source.config.so_pin()
    except ConfigError as exc:  # so_pin_env names a variable that is not set
        raise SoPinMissing(str(exc)) from None
    if so_pin is None:
        raise SoPinMissing(
            f"copying the {domain} key of instance {instance!r} to token {target.name!r} "
            f"needs the SO PIN of token {source.name!r} (so_pin_file or so_pin_env)"
        )
    mod_t, sess_t = target.module, target.anchor
    pub_t, priv_t = mod_t.generate_key_pair(
        sess_t,
        p.CKM_RSA_PKCS_KEY_PAIR_GEN,
        Template({p.CKA_TOKEN: False, p.CKA_MODULUS_BITS: 2048,
                  p.CKA_PUBLIC_EXPONENT: b"\x01\x00\x01", p.CKA_WRAP: True,
                  p.CKA_ENCRYPT: False, p.CKA_VERIFY: False}),
        Template({p.CKA_TOKEN: False, p.CKA_PRIVATE: True, p.CKA_SENSITIVE: True,
                  p.CKA_EXTRACTABLE: False, p.CKA_UNWRAP: True, p.CKA_DECRYPT: False,
                  p.CKA_SIGN: False}),
    )
    try:
        modulus = mod_t.get_attribute(sess_t, pub_t, p.CKA_MODULUS)
        exponent = mod_t.get_attribute(sess_t, pub_t, p.CKA_PUBLIC_EXPONENT)
        transport_label = "hsmpool:transport:" + secrets.token_hex(8)
        _so_call(source, so_pin, ["import", transport_label, modulus.hex(), exponent.hex()])
        try:
            mod_s, sess_s = source.module, source.anchor
            found = mod_s.find(
                sess_s, Template({p.CKA_CLASS: p.CKO_PUBLIC_KEY,
                                  p.CKA_LABEL: transport_label.encode()}), 2)
            if len(found) != 1:
                raise TokenError(f"token {source.name!r}: the trusted transport key did not "
                                 "appear after the SO import")
            wrapped = mod_s.wrap(sess_s, _OAEP_SHA1, found[0], source_handle)
        finally:
            _so_call(source, so_pin, ["delete", transport_label])
        label = label_of(domain, instance)
        return _hardened_or_not(
            lambda tpl: mod_t.unwrap(sess_t, _OAEP_SHA1, priv_t, wrapped, tpl),
            domain, target, instance,
            lambda harden: _domain_template(label, key_id, generate=False, harden=harden))
    finally:
        for h in (pub_t, priv_t):
            try:
                mod_t.destroy_object(sess_t, h)
            except P11Error:
                pass


def _so_call(member: Member, so_pin: bytes, args: Sequence[str]) -> None:
    cmd = [sys.executable, "-m", "hsmpool._so_tool", member.module.path,
           member.info.serial, *args]
    env = dict(os.environ)
    proc = subprocess.run(cmd, input=so_pin, capture_output=True, env=env, timeout=60,
                          check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TokenError(f"token {member.name!r}: SO step '{args[0]}' failed: "
                         f"{msg[-1] if msg else proc.returncode}")
