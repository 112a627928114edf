"""An instance (tenant) of the pool and the key-material operations scoped to it.

Every operation takes a wrapped-key blob (:class:`hsmpool.blob.KeyBlob` or its bytes), checks
that the blob was wrapped under *this* instance's domain key before any token is touched,
then runs on a member of the instance's partition that offers the mechanisms needed,
unwrapping the blob into a session object there (cached per token) if needed.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from hsmpool import _p11 as p
from hsmpool import kek as _kek
from hsmpool._hostlock import host_lock
from hsmpool._p11 import Mechanism, P11Error, Template
from hsmpool.blob import EC_PARAMS, HMAC_BYTES, RSA_BITS, KeyBlob, KeySpec
from hsmpool.errors import (
    ConfigError,
    DecryptionError,
    ForeignBlobError,
    InvalidBlobError,
    InvalidTagError,
    UnsupportedOperationError,
)
from hsmpool.member import Member, MemberState

if TYPE_CHECKING:
    from hsmpool.balancer import Balancer

T = TypeVar("T")

log = logging.getLogger("hsmpool.instance")

BlobLike = KeyBlob | bytes | bytearray | memoryview

NONCE_LEN: Final = 12
TAG_LEN: Final = 16


class SignAlgorithm(enum.Enum):
    """Signing schemes; the hash is computed outside the token (or given as a digest)."""

    RSA_PKCS1_SHA256 = "RSASSA_PKCS1_V1_5_SHA_256"
    RSA_PKCS1_SHA384 = "RSASSA_PKCS1_V1_5_SHA_384"
    RSA_PKCS1_SHA512 = "RSASSA_PKCS1_V1_5_SHA_512"
    RSA_PSS_SHA256 = "RSASSA_PSS_SHA_256"
    RSA_PSS_SHA384 = "RSASSA_PSS_SHA_384"
    RSA_PSS_SHA512 = "RSASSA_PSS_SHA_512"
    ECDSA_SHA256 = "ECDSA_SHA_256"
    ECDSA_SHA384 = "ECDSA_SHA_384"
    ECDSA_SHA512 = "ECDSA_SHA_512"

    @property
    def hash_name(self) -> str:
        return _ALG_HASH[self]

    @property
    def family(self) -> str:
        return _ALG_FAMILY[self]


# Per-algorithm facts, computed once (signing is a hot path).
_ALG_HASH: Final = {a: "sha" + a.value[-3:] for a in SignAlgorithm}
_ALG_FAMILY: Final = {a: a.name.split("_")[0] + ("_PSS" if "PSS" in a.name else "")
                      for a in SignAlgorithm}
_DIGEST_SIZE: Final = {"sha256": 32, "sha384": 48, "sha512": 64}


_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
# DER DigestInfo prefixes (RFC 8017, section 9.2, note 1).
_DIGEST_INFO: Final = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_PSS: Final = {
    "sha256": Mechanism.pss(p.CKM_RSA_PKCS_PSS, p.CKM_SHA256, p.CKG_MGF1_SHA256, 32),
    "sha384": Mechanism.pss(p.CKM_RSA_PKCS_PSS, p.CKM_SHA384, p.CKG_MGF1_SHA384, 48),
    "sha512": Mechanism.pss(p.CKM_RSA_PKCS_PSS, p.CKM_SHA512, p.CKG_MGF1_SHA512, 64),
}
_RSA_PKCS: Final = Mechanism.plain(p.CKM_RSA_PKCS)
_RSA_X509: Final = Mechanism.plain(p.CKM_RSA_X_509)
_ECDSA: Final = Mechanism.plain(p.CKM_ECDSA)
_OAEP_SHA1: Final = Mechanism.oaep(p.CKM_SHA_1, p.CKG_MGF1_SHA1)
_HMAC_MECH: Final = {
    KeySpec.HMAC_SHA256: Mechanism.plain(p.CKM_SHA256_HMAC),
    KeySpec.HMAC_SHA384: Mechanism.plain(p.CKM_SHA384_HMAC),
    KeySpec.HMAC_SHA512: Mechanism.plain(p.CKM_SHA512_HMAC),
}

_SECRET_UNWRAP: Final = Template({
    p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_GENERIC_SECRET, p.CKA_TOKEN: False,
    p.CKA_SENSITIVE: False, p.CKA_EXTRACTABLE: True,
})


def _unwrap_template(spec: KeySpec) -> Template:
    common: dict[int, p.AttrValue] = {
        p.CKA_TOKEN: False, p.CKA_PRIVATE: True, p.CKA_SENSITIVE: True,
        p.CKA_EXTRACTABLE: False,
    }
    if spec is KeySpec.AES_256:
        common.update({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_AES,
                       p.CKA_ENCRYPT: True, p.CKA_DECRYPT: True})
    elif spec.is_hmac:
        common.update({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_GENERIC_SECRET,
                       p.CKA_SIGN: True, p.CKA_VERIFY: True})
    elif spec.is_rsa:
        common.update({p.CKA_CLASS: p.CKO_PRIVATE_KEY, p.CKA_KEY_TYPE: p.CKK_RSA,
                       p.CKA_SIGN: True, p.CKA_DECRYPT: True})
    elif spec.is_ec:
        common.update({p.CKA_CLASS: p.CKO_PRIVATE_KEY, p.CKA_KEY_TYPE: p.CKK_EC,
                       p.CKA_SIGN: True})
    else:
        raise AssertionError(spec)
    return Template(common)


_UNWRAP_TEMPLATES: Final[dict[KeySpec, Template]] = {
    s: _unwrap_template(s) for s in KeySpec if s is not KeySpec.SECRET
}

# Mechanisms each kind of operation needs on a member.
_NEED_UNWRAP: Final = (p.CKM_AES_KEY_WRAP_PAD,)
_GEN_MECH: Final = {
    KeySpec.AES_256: p.CKM_AES_KEY_GEN,
    KeySpec.HMAC_SHA256: p.CKM_GENERIC_SECRET_KEY_GEN,
    KeySpec.HMAC_SHA384: p.CKM_GENERIC_SECRET_KEY_GEN,
    KeySpec.HMAC_SHA512: p.CKM_GENERIC_SECRET_KEY_GEN,
    KeySpec.RSA_2048: p.CKM_RSA_PKCS_KEY_PAIR_GEN,
    KeySpec.RSA_3072: p.CKM_RSA_PKCS_KEY_PAIR_GEN,
    KeySpec.RSA_4096: p.CKM_RSA_PKCS_KEY_PAIR_GEN,
    KeySpec.EC_P256: p.CKM_EC_KEY_PAIR_GEN,
    KeySpec.EC_SECP256K1: p.CKM_EC_KEY_PAIR_GEN,
    KeySpec.SECRET: p.CKM_GENERIC_SECRET_KEY_GEN,
}
_CURVES: Final = {KeySpec.EC_P256: ec.SECP256R1(), KeySpec.EC_SECP256K1: ec.SECP256K1()}


#: A lock beyond this host around an instance's domain-key set-up, by instance name (the
#: embedder's: ``kms`` takes a PostgreSQL advisory lock, so that nodes on different hosts
#: sharing the tokens do not each make a domain key). See :class:`hsmpool.Pool`.
SetupLock = Callable[[str], AbstractContextManager[object]]


class Instance:
    """A tenant: its partition of tokens and its domain keys. Obtain via ``pool.instance()``.

    ``domain_key_state[member][domain]`` says what each member holds: for ``kek``
    ``"hardened"`` or ``"unhardened"`` (see :mod:`hsmpool.kek`), for ``swkek`` ``"present"``;
    ``"missing"`` where the key could not be copied to the member (no SO PIN configured:
    the member then serves no key operations of the instance), ``"unsupported"`` where the
    member cannot wrap keys at all.
    """

    def __init__(self, balancer: Balancer, name: str, members: list[Member], *,
                 setup_lock: SetupLock | None = None) -> None:
        self.balancer = balancer
        self.name = name
        self.members = tuple(members)
        self._by_need: dict[tuple[int, ...], tuple[Member, ...]] = {}
        self.kek_ids: dict[str, bytes] = {}
        self.domain_key_state: dict[str, dict[str, str]] = {m.name: {} for m in members}
        with _instance_lock(name, members), \
                (setup_lock(name) if setup_lock is not None else contextlib.nullcontext()):
            for domain in _kek.DOMAINS:
                self._ensure_domain_key(domain)
        self._warn_about_domain_keys(self.members)

    # --- domain keys -------------------------------------------------------------------

    def _ensure_domain_key(self, domain: str) -> None:
        found: dict[str, tuple[int, bytes]] = {}
        for m in self.members:
            hit = _kek.find_domain_key(m, domain, self.name)
            if hit is not None:
                found[m.name] = hit
        ids = {kid for _, kid in found.values()}
        if len(ids) > 1:
            raise ConfigError(f"instance {self.name!r}: the tokens of its partition hold "
                              f"different {domain} keys")
        wrappers = [m for m in self.members if p.CKM_AES_KEY_WRAP_PAD in m.mechanisms]
        for m in self.members:
            self.domain_key_state[m.name][domain] = "unsupported"
        if not found:
            if not wrappers:
                # No member can wrap keys: the instance serves keyless operations only
                # (random bytes); key operations raise UnsupportedOperationError.
                return
            found[wrappers[0].name] = _kek.generate_domain_key(wrappers[0], domain, self.name)
        kek_id = next(iter(found.values()))[1]
        sources = [(m, found[m.name][0]) for m in self.members if m.name in found]
        for m in wrappers:
            if m.name in found:
                m.domain_keys[domain] = found[m.name][0]
            elif p.CKM_RSA_PKCS_OAEP in m.mechanisms:
                handle = self._copy_from_any(sources, m, domain, kek_id)
                if handle is not None:
                    m.domain_keys[domain] = handle
            else:
                continue  # cannot receive a copy: stays "unsupported"
            self._note_state(m, domain)
        self.kek_ids[domain] = kek_id

    def _copy_from_any(self, sources: list[tuple[Member, int]], target: Member, domain: str,
                       kek_id: bytes) -> int | None:
        """Copy a domain key from the first holder whose SO PIN is configured; None (and
        the target serves no key operations) if none is: a serving host need not hold any
        SO PIN once the partition's tokens all hold the instance's domain keys."""
        for source, handle in sources:
            try:
                return _kek.copy_domain_key(source, target, domain, self.name, kek_id, handle)
            except _kek.SoPinMissing:
                continue
        return None

    def _note_state(self, m: Member, domain: str) -> None:
        handle = m.domain_keys.get(domain)
        if handle is None:
            state = "missing"
        elif domain in _kek.HARDENED:
            state = "hardened" if _kek.kek_is_hardened(m, handle) else "unhardened"
        else:
            state = "present"
        self.domain_key_state[m.name][domain] = state

    def _warn_about_domain_keys(self, members: tuple[Member, ...]) -> None:
        for state, why in (
            ("missing", "no SO PIN is available to copy them there (so_pin_file or "
                        "so_pin_env of a token that holds them): those tokens serve no key "
                        "operations of this instance until an administrator runs "
                        "'hsmpool status' with an SO PIN"),
            ("unhardened", "it was made without CKA_UNWRAP_TEMPLATE and is modifiable: "
                           "a holder of the user PIN and of key blobs can read HSM keys "
                           "out (see docs/security.md)"),
        ):
            names = sorted({m.name for m in members
                            for st in self.domain_key_state[m.name].values() if st == state})
            if names:
                what = "domain keys are missing on" if state == "missing" else \
                    "the kek domain key is not hardened on"
                log.warning("instance %r: %s token(s) %s: %s", self.name, what,
                            ", ".join(names), why)

    def add_member(self, member: Member) -> None:
        """Admit a token to the partition at run time, copying the domain keys to it."""
        if member.instance not in (None, self.name) or member in self.members:
            raise ConfigError(f"token {member.name!r} already belongs to instance "
                              f"{member.instance!r}")
        can_wrap = p.CKM_AES_KEY_WRAP_PAD in member.mechanisms
        self.domain_key_state[member.name] = {d: "unsupported" for d in _kek.DOMAINS}
        for domain in _kek.DOMAINS if can_wrap else ():
            source = next((m for m in self.members if domain in m.domain_keys), None)
            if source is None:
                continue
            member.domain_keys[domain] = _kek.copy_domain_key(
                source, member, domain, self.name, self.kek_ids[domain],
                source.domain_keys[domain])
            self._note_state(member, domain)
        member.instance = self.name
        self.members = (*self.members, member)
        self._by_need.clear()
        self._warn_about_domain_keys((member,))

    def only(self, *names: str) -> Instance:
        """A view of this instance restricted to some of its members (self-tests, tooling).

        The view shares the domain keys and the members (their sessions, caches and
        breakers); only the routing differs.
        """
        chosen = tuple(m for m in self.members if m.name in names)
        if len(chosen) != len(set(names)):
            unknown = sorted(set(names) - {m.name for m in chosen})
            raise ConfigError(f"instance {self.name!r} has no token(s) {unknown}")
        view = copy.copy(self)
        view.members = chosen
        view._by_need = {}
        return view

    # --- routing -----------------------------------------------------------------------

    def capable(self, need: tuple[int, ...]) -> tuple[Member, ...]:
        """Members that offer every mechanism in ``need`` (cached)."""
        hit = self._by_need.get(need)
        if hit is None:
            keyed = p.CKM_AES_KEY_WRAP_PAD in need
            hit = tuple(m for m in self.members
                        if all(x in m.mechanisms for x in need)
                        and (not keyed or "kek" in m.domain_keys))
            self._by_need[need] = hit
        return hit

    def _run(self, need: tuple[int, ...], fn: Callable[[Member, int], T], what: str,
             *, slow_is_failure: bool = True, hang_budget: bool | None = None) -> T:
        return self.balancer.execute(self.capable(need), fn, what,
                                     slow_is_failure=slow_is_failure,
                                     hang_budget=hang_budget)

    def _blob(self, blob: BlobLike) -> KeyBlob:
        kb = KeyBlob.parse(blob)
        own = self.kek_ids.get(kb.spec.domain)
        if own is None:
            raise UnsupportedOperationError(f"no token of instance {self.name!r} can unwrap "
                                            "keys (CKM_AES_KEY_WRAP_PAD)")
        if kb.kek_id != own:
            raise ForeignBlobError(f"key blob was not wrapped by instance {self.name!r}")
        return kb

    def _handle(self, member: Member, kb: KeyBlob) -> int:
        handle = member.cached_handle(kb.raw)
        if handle is not None:
            return handle
        kek = member.domain_keys["kek"]
        with member.anchor_lock:
            try:
                handle = member.module.unwrap(member.anchor, _kek.WRAP_PAD, kek, kb.wrapped,
                                              _UNWRAP_TEMPLATES[kb.spec])
            except P11Error as exc:
                if exc.rv in p.HARD_FAULTS:
                    raise  # the member is unwell: Member.run counts it, the pool retries
                raise InvalidBlobError("key blob could not be unwrapped (corrupt, or not "
                                       f"a {kb.spec.name} key)") from None
        return member.cache_handle(kb.raw, handle)

    def invalidate(self, blob: BlobLike) -> None:
        """Drop the unwrapped copies of a key from every member's cache."""
        raw = KeyBlob.parse(blob).raw
        for m in self.members:
            m.invalidate(raw)

    # --- generation and import ---------------------------------------------------------

    def generate(self, spec: KeySpec) -> KeyBlob:
        """Generate a key (pair) inside a token and return it wrapped under the domain key."""
        if spec is KeySpec.SECRET:
            raise ValueError("use generate_secret(n) for SOFTWARE material")
        need = (_GEN_MECH[spec], p.CKM_AES_KEY_WRAP_PAD)
        # Generation is slow by nature: slowness never counts against the token. Key pairs
        # (RSA: seconds) have no hang budget either, only the deadline; a secret key's
        # generation does: a call past it is a hung token, abandoned and retried on another
        # (else a CreateKey that meets a hung token first waits out the hang while every
        # other operation has moved on).
        return self._run(need, lambda m, s: self._generate_on(m, s, spec),
                         f"generating a {spec.name} key", slow_is_failure=False,
                         hang_budget=not spec.is_pair)

    def _generate_on(self, m: Member, s: int, spec: KeySpec) -> KeyBlob:
        mod = m.module
        kek = m.domain_keys["kek"]
        eph: dict[int, p.AttrValue] = {p.CKA_TOKEN: False, p.CKA_PRIVATE: True,
                                       p.CKA_SENSITIVE: True, p.CKA_EXTRACTABLE: True}
        if not spec.is_pair:
            attrs = dict(eph)
            if spec is KeySpec.AES_256:
                attrs.update({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_AES,
                              p.CKA_VALUE_LEN: 32, p.CKA_ENCRYPT: True, p.CKA_DECRYPT: True})
            else:
                attrs.update({p.CKA_CLASS: p.CKO_SECRET_KEY,
                              p.CKA_KEY_TYPE: p.CKK_GENERIC_SECRET,
                              p.CKA_VALUE_LEN: HMAC_BYTES[spec], p.CKA_SIGN: True,
                              p.CKA_VERIFY: True})
            key = mod.generate_key(s, _GEN_MECH[spec], Template(attrs))
            try:
                wrapped = mod.wrap(s, _kek.WRAP_PAD, kek, key)
            finally:
                _destroy(m, s, key)
            return KeyBlob.build(spec, self.kek_ids["kek"], b"", wrapped)
        priv_attrs = dict(eph)
        priv_attrs[p.CKA_SIGN] = True
        pub_attrs: dict[int, p.AttrValue] = {p.CKA_TOKEN: False, p.CKA_VERIFY: True}
        if spec.is_rsa:
            priv_attrs[p.CKA_DECRYPT] = True
            pub_attrs.update({p.CKA_MODULUS_BITS: RSA_BITS[spec],
                              p.CKA_PUBLIC_EXPONENT: b"\x01\x00\x01", p.CKA_ENCRYPT: True})
        else:
            pub_attrs[p.CKA_EC_PARAMS] = EC_PARAMS[spec]
        pub, priv = mod.generate_key_pair(s, _GEN_MECH[spec], Template(pub_attrs),
                                          Template(priv_attrs))
        try:
            if spec.is_rsa:
                n = int.from_bytes(mod.get_attribute(s, pub, p.CKA_MODULUS), "big")
                e = int.from_bytes(mod.get_attribute(s, pub, p.CKA_PUBLIC_EXPONENT), "big")
                pk: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = rsa.RSAPublicNumbers(
                    e, n).public_key()
            else:
                point = _der_octet_string(mod.get_attribute(s, pub, p.CKA_EC_POINT))
                pk = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[spec], point)
            spki = pk.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
            wrapped = mod.wrap(s, _kek.WRAP_PAD, kek, priv)
        finally:
            _destroy(m, s, pub)
            _destroy(m, s, priv)
        return KeyBlob.build(spec, self.kek_ids["kek"], spki, wrapped)

    def import_key(self, spec: KeySpec, material: bytes) -> KeyBlob:
        """Import caller-supplied material as an HSM key (BYOK) and return it wrapped.

        ``material`` is the raw key for AES_256 (32 bytes) and HMAC specs (16..64 bytes), and
        a DER PKCS#8 private key for RSA and EC specs, which must match the spec. The
        material goes into a token as a session object, is wrapped there and destroyed.
        """
        if spec is KeySpec.SECRET:
            return self.import_secret(material)
        material = _bytes(material, "material")
        attrs: dict[int, p.AttrValue] = {p.CKA_TOKEN: False, p.CKA_PRIVATE: True,
                                         p.CKA_SENSITIVE: True, p.CKA_EXTRACTABLE: True}
        spki = b""
        if spec is KeySpec.AES_256:
            if len(material) != 32:
                raise ValueError("AES_256 key material must be 32 bytes")
            attrs.update({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_AES,
                          p.CKA_VALUE: material, p.CKA_ENCRYPT: True, p.CKA_DECRYPT: True})
        elif spec.is_hmac:
            if not 16 <= len(material) <= 128:
                raise ValueError("HMAC key material must be 16..128 bytes")
            attrs.update({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_GENERIC_SECRET,
                          p.CKA_VALUE: material, p.CKA_SIGN: True, p.CKA_VERIFY: True})
        else:
            try:
                key = serialization.load_der_private_key(material, password=None)
            except (ValueError, TypeError):
                raise ValueError("key material is not a DER PKCS#8 private key") from None
            if spec.is_rsa:
                if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != RSA_BITS[spec]:
                    raise ValueError(f"key material is not an {spec.name} private key")
                nums = key.private_numbers()
                pub = nums.public_numbers

                def be(x: int) -> bytes:
                    return x.to_bytes((x.bit_length() + 7) // 8 or 1, "big")

                attrs.update({
                    p.CKA_CLASS: p.CKO_PRIVATE_KEY, p.CKA_KEY_TYPE: p.CKK_RSA,
                    p.CKA_MODULUS: be(pub.n), p.CKA_PUBLIC_EXPONENT: be(pub.e),
                    p.CKA_PRIVATE_EXPONENT: be(nums.d), p.CKA_PRIME_1: be(nums.p),
                    p.CKA_PRIME_2: be(nums.q), p.CKA_EXPONENT_1: be(nums.dmp1),
                    p.CKA_EXPONENT_2: be(nums.dmq1), p.CKA_COEFFICIENT: be(nums.iqmp),
                    p.CKA_SIGN: True, p.CKA_DECRYPT: True})
            elif spec.is_ec:
                if (not isinstance(key, ec.EllipticCurvePrivateKey)
                        or key.curve.name != _CURVES[spec].name):
                    raise ValueError(f"key material is not an {spec.name} private key")
                value = key.private_numbers().private_value.to_bytes(32, "big")
                attrs.update({p.CKA_CLASS: p.CKO_PRIVATE_KEY, p.CKA_KEY_TYPE: p.CKK_EC,
                              p.CKA_EC_PARAMS: EC_PARAMS[spec], p.CKA_VALUE: value,
                              p.CKA_SIGN: True})
            else:
                raise AssertionError(spec)
            spki = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        template = Template(attrs)

        def op(m: Member, s: int) -> KeyBlob:
            try:
                obj = m.module.create_object(s, template)
            except P11Error as exc:
                if exc.rv in p.HARD_FAULTS:
                    raise
                raise ValueError(f"the token refused the key material ({exc.name})") from None
            try:
                wrapped = m.module.wrap(s, _kek.WRAP_PAD, m.domain_keys["kek"], obj)
            finally:
                _destroy(m, s, obj)
            return KeyBlob.build(spec, self.kek_ids["kek"], spki, wrapped)

        return self._run((p.CKM_AES_KEY_WRAP_PAD,), op, f"importing a {spec.name} key")

    def generate_secret(self, length: int) -> KeyBlob:
        """Random SOFTWARE material of ``length`` bytes, made and wrapped inside a token."""
        if not 1 <= length <= 512:
            raise ValueError("secret length must be 1..512 bytes")
        need = (p.CKM_GENERIC_SECRET_KEY_GEN, p.CKM_AES_KEY_WRAP_PAD)

        tpl = Template({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_GENERIC_SECRET,
                        p.CKA_TOKEN: False, p.CKA_VALUE_LEN: length, p.CKA_SENSITIVE: True,
                        p.CKA_EXTRACTABLE: True})

        def op(m: Member, s: int) -> KeyBlob:
            return self._wrap_secret(
                m, s, m.module.generate_key(s, p.CKM_GENERIC_SECRET_KEY_GEN, tpl))

        return self._run(need, op, "generating a secret")

    def import_secret(self, material: bytes) -> KeyBlob:
        """Wrap caller-supplied SOFTWARE material (SM2/SM4 keys, imported key material)."""
        if not isinstance(material, bytes | bytearray | memoryview):
            raise TypeError("material must be bytes")
        material = bytes(material)
        if not 1 <= len(material) <= 4096:
            raise ValueError("secret material must be 1..4096 bytes")

        tpl = Template({p.CKA_CLASS: p.CKO_SECRET_KEY, p.CKA_KEY_TYPE: p.CKK_GENERIC_SECRET,
                        p.CKA_TOKEN: False, p.CKA_VALUE: material, p.CKA_SENSITIVE: True,
                        p.CKA_EXTRACTABLE: True})

        def op(m: Member, s: int) -> KeyBlob:
            return self._wrap_secret(m, s, m.module.create_object(s, tpl))

        return self._run((p.CKM_AES_KEY_WRAP_PAD,), op, "importing a secret")

    def _wrap_secret(self, m: Member, s: int, key: int) -> KeyBlob:
        """Wrap a just-made session secret under the SOFTWARE domain key, then destroy it."""
        try:
            wrapped = m.module.wrap(s, _kek.WRAP_PAD, m.domain_keys["swkek"], key)
        finally:
            _destroy(m, s, key)
        return KeyBlob.build(KeySpec.SECRET, self.kek_ids["swkek"], b"", wrapped)

    def export_secret(self, blob: BlobLike) -> bytes:
        """The material of a SOFTWARE blob, unwrapped in a token and read back."""
        kb = self._blob(blob)
        if kb.spec is not KeySpec.SECRET:
            raise InvalidBlobError(f"a {kb.spec.name} key is HSM-protected: its material "
                                   "never leaves a token")

        def op(m: Member, s: int) -> bytes:
            try:
                h = m.module.unwrap(s, _kek.WRAP_PAD, m.domain_keys["swkek"], kb.wrapped,
                                    _SECRET_UNWRAP)
            except P11Error as exc:
                if exc.rv in p.HARD_FAULTS:
                    raise
                raise InvalidBlobError("key blob could not be unwrapped") from None
            try:
                return m.module.get_attribute(s, h, p.CKA_VALUE)
            finally:
                _destroy(m, s, h)

        return self._run(_NEED_UNWRAP, op, "unwrapping a secret")

    # --- symmetric ---------------------------------------------------------------------

    def encrypt(self, blob: BlobLike, plaintext: bytes, aad: bytes = b"") -> bytes:
        """AES-256-GCM with a fresh 96-bit nonce: returns ``nonce || ciphertext || tag``."""
        kb = self._blob(blob)
        if kb.spec is not KeySpec.AES_256:
            raise InvalidBlobError(f"AES-GCM needs an AES_256 key, not {kb.spec.name}")
        data, aad = _bytes(plaintext, "plaintext"), _bytes(aad, "aad")

        def op(m: Member, s: int) -> bytes:
            nonce = os.urandom(NONCE_LEN)
            return nonce + m.module.gcm(p.ENCRYPT, s, self._handle(m, kb), nonce, aad, data)

        return self._run(_NEED_GCM, op, "AES-GCM")

    def decrypt(self, blob: BlobLike, ciphertext: bytes, aad: bytes = b"") -> bytes:
        """Inverse of :meth:`encrypt`; :class:`InvalidTagError` if anything was altered."""
        kb = self._blob(blob)
        if kb.spec is not KeySpec.AES_256:
            raise InvalidBlobError(f"AES-GCM needs an AES_256 key, not {kb.spec.name}")
        data, aad = _bytes(ciphertext, "ciphertext"), _bytes(aad, "aad")
        if len(data) < NONCE_LEN + TAG_LEN:
            raise InvalidTagError("ciphertext is too short")
        nonce, body = data[:NONCE_LEN], data[NONCE_LEN:]

        def op(m: Member, s: int) -> bytes:
            try:
                return m.module.gcm(p.DECRYPT, s, self._handle(m, kb), nonce, aad, body)
            except P11Error as exc:
                # SoftHSM2 reports a failed tag as CKR_GENERAL_ERROR.
                if exc.rv in (p.CKR_GENERAL_ERROR, p.CKR_ENCRYPTED_DATA_INVALID,
                              p.CKR_ENCRYPTED_DATA_LEN_RANGE, p.CKR_FUNCTION_FAILED):
                    raise InvalidTagError("AES-GCM authentication failed") from None
                raise

        return self._run(_NEED_GCM, op, "AES-GCM")

    # --- HMAC --------------------------------------------------------------------------

    def hmac(self, blob: BlobLike, message: bytes) -> bytes:
        kb = self._blob(blob)
        if not kb.spec.is_hmac:
            raise InvalidBlobError(f"HMAC needs an HMAC key, not {kb.spec.name}")
        data = _bytes(message, "message")
        mech = _HMAC_MECH[kb.spec]
        size = HMAC_BYTES[kb.spec]
        return self._run(
            (mech.ptr.mechanism, p.CKM_AES_KEY_WRAP_PAD),
            lambda m, s: m.module.crypt(p.SIGN, s, mech, self._handle(m, kb), data, size),
            f"{kb.spec.name}")

    def verify_hmac(self, blob: BlobLike, message: bytes, mac: bytes) -> bool:
        """Recompute the MAC in a token and compare in constant time."""
        expected = self.hmac(blob, message)
        return hmac.compare_digest(expected, _bytes(mac, "mac"))

    # --- asymmetric --------------------------------------------------------------------

    def public_key(self, blob: BlobLike) -> bytes:
        """The DER SubjectPublicKeyInfo of a key pair."""
        kb = self._blob(blob)
        if not kb.spec.is_pair:
            raise InvalidBlobError(f"a {kb.spec.name} key has no public key")
        return kb.public_key

    def sign(self, blob: BlobLike, message: bytes, algorithm: SignAlgorithm) -> bytes:
        """Sign a message (hashed here, outside the token)."""
        data = _bytes(message, "message")
        digest = hashlib.new(algorithm.hash_name, data).digest()
        return self.sign_digest(blob, digest, algorithm)

    def sign_digest(self, blob: BlobLike, digest: bytes, algorithm: SignAlgorithm) -> bytes:
        """Sign a precomputed digest. ECDSA signatures are DER, RSA ones raw."""
        kb = self._blob(blob)
        digest = _bytes(digest, "digest")
        hash_len = _DIGEST_SIZE[algorithm.hash_name]
        if len(digest) != hash_len:
            raise ValueError(f"{algorithm.value} needs a {hash_len}-byte digest")
        family = algorithm.family
        if family.startswith("RSA") != kb.spec.is_rsa or (family == "ECDSA") != kb.spec.is_ec:
            raise InvalidBlobError(f"{algorithm.value} cannot use a {kb.spec.name} key")
        if family == "RSA":
            mech, data, size = _RSA_PKCS, _DIGEST_INFO[algorithm.hash_name] + digest, 512
        elif family == "RSA_PSS":
            mech, data, size = _PSS[algorithm.hash_name], digest, 512
        else:
            mech, data, size = _ECDSA, digest, 132
        raw = self._run(
            (mech.ptr.mechanism, p.CKM_AES_KEY_WRAP_PAD),
            lambda m, s: m.module.crypt(p.SIGN, s, mech, self._handle(m, kb), data, size),
            algorithm.value)
        if family == "ECDSA":
            half = len(raw) // 2
            return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                              int.from_bytes(raw[half:], "big"))
        return raw

    def verify(self, blob: BlobLike, message: bytes, signature: bytes,
               algorithm: SignAlgorithm, *, is_digest: bool = False) -> bool:
        """Verify with the public key (no token needed). Never raises for a bad signature."""
        kb = self._blob(blob)
        pk = serialization.load_der_public_key(self.public_key(kb))
        data = _bytes(message, "message")
        hash_alg = _HASHES[algorithm.hash_name]
        chosen: hashes.HashAlgorithm | utils.Prehashed = (
            utils.Prehashed(hash_alg) if is_digest else hash_alg)
        try:
            if isinstance(pk, rsa.RSAPublicKey) and algorithm.family == "RSA":
                pk.verify(signature, data, padding.PKCS1v15(), chosen)
            elif isinstance(pk, rsa.RSAPublicKey) and algorithm.family == "RSA_PSS":
                pk.verify(signature, data, padding.PSS(padding.MGF1(hash_alg),
                                                       hash_alg.digest_size), chosen)
            elif isinstance(pk, ec.EllipticCurvePublicKey) and algorithm.family == "ECDSA":
                pk.verify(signature, data, ec.ECDSA(chosen))
            else:
                raise InvalidBlobError(f"{algorithm.value} cannot use a {kb.spec.name} key")
        except InvalidSignature:
            return False
        except ValueError:
            return False
        return True

    def rsa_decrypt(self, blob: BlobLike, ciphertext: bytes, hash_name: str = "sha256") -> bytes:
        """RSAES-OAEP decryption (MGF1 with the same hash). ``sha1`` runs entirely in the
        token; ``sha256`` uses the token's raw RSA and decodes OAEP here in constant time
        (SoftHSM2 2.6 offers OAEP with SHA-1 only)."""
        kb = self._blob(blob)
        if not kb.spec.is_rsa:
            raise InvalidBlobError(f"RSA-OAEP needs an RSA key, not {kb.spec.name}")
        data = _bytes(ciphertext, "ciphertext")
        k = RSA_BITS[kb.spec] // 8
        if len(data) != k:
            raise DecryptionError("ciphertext length does not match the key")
        # A ciphertext at or above the modulus is invalid input; SoftHSM2 would answer
        # CKR_GENERAL_ERROR, which looks like a sick token. Refuse it before any token sees it.
        if int.from_bytes(data, "big") >= self._modulus(kb):
            raise DecryptionError("RSA-OAEP decryption failed")
        if hash_name == "sha1":
            def op(m: Member, s: int) -> bytes:
                try:
                    return m.module.crypt(p.DECRYPT, s, _OAEP_SHA1, self._handle(m, kb), data, k)
                except P11Error as exc:
                    if exc.rv in (p.CKR_ENCRYPTED_DATA_INVALID, p.CKR_DATA_INVALID,
                                  p.CKR_DATA_LEN_RANGE,
                                  p.CKR_GENERAL_ERROR):
                        raise DecryptionError("RSA-OAEP decryption failed") from None
                    raise
            return self._run((p.CKM_RSA_PKCS_OAEP, p.CKM_AES_KEY_WRAP_PAD), op, "RSA-OAEP")
        if hash_name not in ("sha256",):
            raise ValueError("OAEP hash must be 'sha1' or 'sha256'")

        def raw_op(m: Member, s: int) -> bytes:
            try:
                return m.module.crypt(p.DECRYPT, s, _RSA_X509, self._handle(m, kb), data, k)
            except P11Error as exc:
                if exc.rv in (p.CKR_ENCRYPTED_DATA_INVALID, p.CKR_DATA_INVALID,
                              p.CKR_DATA_LEN_RANGE):
                    raise DecryptionError("RSA-OAEP decryption failed") from None
                raise
        em = self._run((p.CKM_RSA_X_509, p.CKM_AES_KEY_WRAP_PAD), raw_op, "RSA-OAEP")
        return oaep_decode(em.rjust(k, b"\0"), hashlib.sha256)

    @staticmethod
    def _modulus(kb: KeyBlob) -> int:
        pk = serialization.load_der_public_key(kb.public_key)
        assert isinstance(pk, rsa.RSAPublicKey)
        return pk.public_numbers().n

    # --- randomness --------------------------------------------------------------------

    def random(self, n: int) -> bytes:
        """``n`` random bytes from a token's RNG."""
        if not 0 <= n <= 1 << 20:
            raise ValueError("random length must be 0..1 MiB")
        return self._run((), lambda m, s: m.module.random(s, n), "random")

    def healthy_members(self) -> list[str]:
        return [m.name for m in self.members if m.state is MemberState.HEALTHY]

    def serving_members(self) -> list[str]:
        """The healthy members that can serve the instance's operations: not those its
        domain keys are ``"missing"`` on (no SO PIN to copy them there), which serve none of
        its key operations however healthy the token is."""
        return [m.name for m in self.members if m.state is MemberState.HEALTHY
                and "missing" not in self.domain_key_state.get(m.name, {}).values()]


_NEED_GCM: Final = (p.CKM_AES_GCM, p.CKM_AES_KEY_WRAP_PAD)


def _instance_lock(name: str, members: list[Member]) -> AbstractContextManager[None]:
    """Serialise the first-time set-up of an instance's domain keys between the processes
    of this host (server workers, tools): without it, processes opening a new instance at
    the same moment each generate a domain key, and the partition ends up with several."""
    ident = hashlib.sha256("\0".join([name, *sorted(m.info.serial for m in members)])
                           .encode()).hexdigest()[:24]
    return host_lock(f"instance-{ident}")


def _destroy(m: Member, s: int, handle: int) -> None:
    try:
        m.module.destroy_object(s, handle)
    except P11Error:
        pass


def _bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _der_octet_string(der: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point (some tokens omit it)."""
    if len(der) >= 2 and der[0] == 0x04:
        if der[1] < 0x80:
            body = der[2:]
            if len(body) == der[1]:
                return body
        else:
            n = der[1] & 0x7F
            length = int.from_bytes(der[2:2 + n], "big")
            body = der[2 + n:]
            if len(body) == length:
                return body
    return der


def _mgf1(seed: bytes, length: int, hash_fn: Callable[[bytes], hashlib._Hash]) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hash_fn(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def oaep_decode(em: bytes, hash_fn: Callable[..., hashlib._Hash], label: bytes = b"") -> bytes:
    """EME-OAEP decoding (RFC 8017, 7.1.2 step 3), without data-dependent early exits.

    Every check is folded into one flag before the single failure point, and the message
    start is found by a full scan; the only branch on secret data is the final one, whose
    error does not say which check failed.
    """
    h_len = hash_fn().digest_size
    k = len(em)
    if k < 2 * h_len + 2:
        raise DecryptionError("RSA-OAEP decryption failed")
    l_hash = hash_fn(label).digest()
    y = em[0]
    masked_seed = em[1:1 + h_len]
    masked_db = em[1 + h_len:]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1(masked_db, h_len, hash_fn),
                                       strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1(seed, k - h_len - 1, hash_fn),
                                     strict=True))
    bad = y | (0 if hmac.compare_digest(db[:h_len], l_hash) else 1)
    # Find the 0x01 separator after the zero padding, scanning every byte.
    found = 0
    index = 0
    for i in range(h_len, len(db)):
        b = db[i]
        is_one = int(b == 1)
        is_zero = int(b == 0)
        first_one = is_one & (found ^ 1)
        index |= i * first_one  # set once
        bad |= (found ^ 1) & (is_zero ^ 1) & (is_one ^ 1)  # a non-zero, non-one before 0x01
        found |= is_one
    bad |= found ^ 1
    if bad:
        raise DecryptionError("RSA-OAEP decryption failed")
    return db[index + 1:]


__all__ = ["Instance", "SignAlgorithm", "oaep_decode"]
