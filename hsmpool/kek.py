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
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hsmpool import _p11 as p
from hsmpool._p11 import Mechanism, P11Error, Template
from hsmpool.errors import ConfigError, TokenError

if TYPE_CHECKING:
    from hsmpool.member import Member

DOMAINS = ("kek", "swkek")

WRAP_PAD = Mechanism.plain(p.CKM_AES_KEY_WRAP_PAD)
_OAEP_SHA1 = Mechanism.oaep(p.CKM_SHA_1, p.CKG_MGF1_SHA1)


def label_of(domain: str, instance: str) -> bytes:
    return f"hsmpool:{domain}:{instance}".encode()


def _domain_template(label: bytes, key_id: bytes, *, generate: bool) -> Template:
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
    return Template(attrs)


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
    tpl = _domain_template(label_of(domain, instance), key_id, generate=True)
    handle = member.module.generate_key(member.anchor, p.CKM_AES_KEY_GEN, tpl)
    return handle, key_id


def copy_domain_key(
    source: Member, target: Member, domain: str, instance: str, key_id: bytes,
    source_handle: int,
) -> int:
    """Copy a domain key from ``source`` to ``target`` token (see the module docstring)."""
    so_pin = source.config.so_pin()
    if so_pin is None:
        raise ConfigError(
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
        tpl = _domain_template(label_of(domain, instance), key_id, generate=False)
        return mod_t.unwrap(sess_t, _OAEP_SHA1, priv_t, wrapped, tpl)
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
