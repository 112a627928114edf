"""The pool's thin PKCS#11 binding over ``native/p11glue.c`` (cffi, API mode).

Private: the rest of the package talks to tokens only through :class:`Module`. Every
function returns plain Python values and raises :class:`P11Error` carrying the ``CKR_``
code; the pool translates those into its public exceptions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from hsmpool._hostlock import token_files
from hsmpool._p11_cffi import ffi, lib

# --- constants (values from the PKCS#11 v2.40 specification) ---------------------------

CKU_SO: Final = 0
CKU_USER: Final = 1

CKO_PUBLIC_KEY: Final = 2
CKO_PRIVATE_KEY: Final = 3
CKO_SECRET_KEY: Final = 4

CKK_RSA: Final = 0x00
CKK_EC: Final = 0x03
CKK_GENERIC_SECRET: Final = 0x10
CKK_AES: Final = 0x1F

CKA_CLASS: Final = 0x000
CKA_TOKEN: Final = 0x001
CKA_PRIVATE: Final = 0x002
CKA_LABEL: Final = 0x003
CKA_VALUE: Final = 0x011
CKA_TRUSTED: Final = 0x086
CKA_KEY_TYPE: Final = 0x100
CKA_ID: Final = 0x102
CKA_SENSITIVE: Final = 0x103
CKA_ENCRYPT: Final = 0x104
CKA_DECRYPT: Final = 0x105
CKA_WRAP: Final = 0x106
CKA_UNWRAP: Final = 0x107
CKA_SIGN: Final = 0x108
CKA_VERIFY: Final = 0x10A
CKA_DERIVE: Final = 0x10C
CKA_MODULUS: Final = 0x120
CKA_MODULUS_BITS: Final = 0x121
CKA_PUBLIC_EXPONENT: Final = 0x122
CKA_PRIVATE_EXPONENT: Final = 0x123
CKA_PRIME_1: Final = 0x124
CKA_PRIME_2: Final = 0x125
CKA_EXPONENT_1: Final = 0x126
CKA_EXPONENT_2: Final = 0x127
CKA_COEFFICIENT: Final = 0x128
CKA_VALUE_LEN: Final = 0x161
CKA_EXTRACTABLE: Final = 0x162
CKA_NEVER_EXTRACTABLE: Final = 0x164
CKA_MODIFIABLE: Final = 0x170
CKA_COPYABLE: Final = 0x171
CKA_EC_PARAMS: Final = 0x180
CKA_EC_POINT: Final = 0x181
CKA_WRAP_WITH_TRUSTED: Final = 0x210
CKF_ARRAY_ATTRIBUTE: Final = 0x40000000
#: Attribute arrays (values are CK_ATTRIBUTE arrays: pass a :class:`Template`).
CKA_WRAP_TEMPLATE: Final = CKF_ARRAY_ATTRIBUTE | 0x211
CKA_UNWRAP_TEMPLATE: Final = CKF_ARRAY_ATTRIBUTE | 0x212

CKM_RSA_PKCS_KEY_PAIR_GEN: Final = 0x0000
CKM_RSA_PKCS: Final = 0x0001
CKM_RSA_X_509: Final = 0x0003
CKM_RSA_PKCS_OAEP: Final = 0x0009
CKM_RSA_PKCS_PSS: Final = 0x000D
CKM_SHA256_RSA_PKCS: Final = 0x0040
CKM_SHA384_RSA_PKCS: Final = 0x0041
CKM_SHA512_RSA_PKCS: Final = 0x0042
CKM_SHA256_RSA_PKCS_PSS: Final = 0x0043
CKM_SHA384_RSA_PKCS_PSS: Final = 0x0044
CKM_SHA512_RSA_PKCS_PSS: Final = 0x0045
CKM_SHA_1: Final = 0x0220
CKM_SHA256: Final = 0x0250
CKM_SHA256_HMAC: Final = 0x0251
CKM_SHA384: Final = 0x0260
CKM_SHA384_HMAC: Final = 0x0261
CKM_SHA512: Final = 0x0270
CKM_SHA512_HMAC: Final = 0x0271
CKM_GENERIC_SECRET_KEY_GEN: Final = 0x0350
CKM_EC_KEY_PAIR_GEN: Final = 0x1040
CKM_ECDSA: Final = 0x1041
CKM_AES_KEY_GEN: Final = 0x1080
CKM_AES_CBC_PAD: Final = 0x1085
CKM_AES_GCM: Final = 0x1087
CKM_AES_KEY_WRAP: Final = 0x2109
CKM_AES_KEY_WRAP_PAD: Final = 0x210A

CKG_MGF1_SHA1: Final = 0x1
CKG_MGF1_SHA256: Final = 0x2
CKG_MGF1_SHA384: Final = 0x3
CKG_MGF1_SHA512: Final = 0x4
CKZ_DATA_SPECIFIED: Final = 0x1

CKF_TOKEN_INITIALIZED: Final = 0x400
CKF_USER_PIN_LOCKED: Final = 0x40000

ENCRYPT: Final = 0
DECRYPT: Final = 1
SIGN: Final = 2

CKR_NAMES: Final[Mapping[int, str]] = {
    0x80000020: "HP11_TIMEOUT",
    0x000: "CKR_OK",
    0x001: "CKR_CANCEL",
    0x002: "CKR_HOST_MEMORY",
    0x003: "CKR_SLOT_ID_INVALID",
    0x005: "CKR_GENERAL_ERROR",
    0x006: "CKR_FUNCTION_FAILED",
    0x007: "CKR_ARGUMENTS_BAD",
    0x010: "CKR_ATTRIBUTE_READ_ONLY",
    0x011: "CKR_ATTRIBUTE_SENSITIVE",
    0x012: "CKR_ATTRIBUTE_TYPE_INVALID",
    0x013: "CKR_ATTRIBUTE_VALUE_INVALID",
    0x01B: "CKR_ACTION_PROHIBITED",
    0x020: "CKR_DATA_INVALID",
    0x021: "CKR_DATA_LEN_RANGE",
    0x030: "CKR_DEVICE_ERROR",
    0x031: "CKR_DEVICE_MEMORY",
    0x032: "CKR_DEVICE_REMOVED",
    0x040: "CKR_ENCRYPTED_DATA_INVALID",
    0x041: "CKR_ENCRYPTED_DATA_LEN_RANGE",
    0x050: "CKR_FUNCTION_CANCELED",
    0x054: "CKR_FUNCTION_NOT_SUPPORTED",
    0x060: "CKR_KEY_HANDLE_INVALID",
    0x062: "CKR_KEY_SIZE_RANGE",
    0x063: "CKR_KEY_TYPE_INCONSISTENT",
    0x068: "CKR_KEY_FUNCTION_NOT_PERMITTED",
    0x069: "CKR_KEY_NOT_WRAPPABLE",
    0x06A: "CKR_KEY_UNEXTRACTABLE",
    0x070: "CKR_MECHANISM_INVALID",
    0x071: "CKR_MECHANISM_PARAM_INVALID",
    0x082: "CKR_OBJECT_HANDLE_INVALID",
    0x090: "CKR_OPERATION_ACTIVE",
    0x091: "CKR_OPERATION_NOT_INITIALIZED",
    0x0A0: "CKR_PIN_INCORRECT",
    0x0A1: "CKR_PIN_INVALID",
    0x0A2: "CKR_PIN_LEN_RANGE",
    0x0A4: "CKR_PIN_LOCKED",
    0x0B0: "CKR_SESSION_CLOSED",
    0x0B1: "CKR_SESSION_COUNT",
    0x0B3: "CKR_SESSION_HANDLE_INVALID",
    0x0B5: "CKR_SESSION_READ_ONLY",
    0x0C0: "CKR_SIGNATURE_INVALID",
    0x0C1: "CKR_SIGNATURE_LEN_RANGE",
    0x0D0: "CKR_TEMPLATE_INCOMPLETE",
    0x0D1: "CKR_TEMPLATE_INCONSISTENT",
    0x0E0: "CKR_TOKEN_NOT_PRESENT",
    0x0E1: "CKR_TOKEN_NOT_RECOGNIZED",
    0x0F0: "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
    0x0F2: "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
    0x100: "CKR_USER_ALREADY_LOGGED_IN",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x102: "CKR_USER_PIN_NOT_INITIALIZED",
    0x104: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    0x110: "CKR_WRAPPED_KEY_INVALID",
    0x112: "CKR_WRAPPED_KEY_LEN_RANGE",
    0x113: "CKR_WRAPPING_KEY_HANDLE_INVALID",
    0x115: "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
    0x150: "CKR_BUFFER_TOO_SMALL",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}

CKR_GENERAL_ERROR: Final = 0x005
CKR_ATTRIBUTE_SENSITIVE: Final = 0x011
CKR_ATTRIBUTE_TYPE_INVALID: Final = 0x012
CKR_ATTRIBUTE_VALUE_INVALID: Final = 0x013
CKR_ACTION_PROHIBITED: Final = 0x01B
CKR_TEMPLATE_INCONSISTENT: Final = 0x0D1
CKR_FUNCTION_FAILED: Final = 0x006
CKR_DEVICE_ERROR: Final = 0x030
CKR_DEVICE_MEMORY: Final = 0x031
CKR_DEVICE_REMOVED: Final = 0x032
CKR_ENCRYPTED_DATA_INVALID: Final = 0x040
CKR_ENCRYPTED_DATA_LEN_RANGE: Final = 0x041
CKR_KEY_HANDLE_INVALID: Final = 0x060
CKR_OBJECT_HANDLE_INVALID: Final = 0x082
CKR_DATA_INVALID: Final = 0x020
CKR_DATA_LEN_RANGE: Final = 0x021
CKR_PIN_INCORRECT: Final = 0x0A0
CKR_PIN_INVALID: Final = 0x0A1
CKR_PIN_LEN_RANGE: Final = 0x0A2
CKR_PIN_LOCKED: Final = 0x0A4
CKR_SESSION_CLOSED: Final = 0x0B0
CKR_SESSION_HANDLE_INVALID: Final = 0x0B3
CKR_SIGNATURE_INVALID: Final = 0x0C0
CKR_SIGNATURE_LEN_RANGE: Final = 0x0C1
CKR_TOKEN_NOT_PRESENT: Final = 0x0E0
CKR_USER_ALREADY_LOGGED_IN: Final = 0x100
CKR_USER_NOT_LOGGED_IN: Final = 0x101
CKR_USER_PIN_NOT_INITIALIZED: Final = 0x102
CKR_WRAPPED_KEY_INVALID: Final = 0x110
CKR_WRAPPED_KEY_LEN_RANGE: Final = 0x112
CKR_BUFFER_TOO_SMALL: Final = 0x150
CKR_CRYPTOKI_NOT_INITIALIZED: Final = 0x190
#: Not a PKCS#11 code: the glue's answer for a call that did not finish within its time
#: (see :class:`CallTimeout`); vendor-defined range, so no module returns it.
HP11_TIMEOUT: Final = 0x80000020

#: Return codes that say "this token (or session) is unwell", not "your input is wrong":
#: the operation may succeed on another member and the member's breaker counts them.
DEVICE_FAULTS: Final = frozenset(
    {
        CKR_GENERAL_ERROR,
        CKR_FUNCTION_FAILED,
        CKR_DEVICE_ERROR,
        CKR_DEVICE_MEMORY,
        CKR_DEVICE_REMOVED,
        CKR_SESSION_CLOSED,
        CKR_SESSION_HANDLE_INVALID,
        CKR_TOKEN_NOT_PRESENT,
        CKR_USER_NOT_LOGGED_IN,
        CKR_CRYPTOKI_NOT_INITIALIZED,
        CKR_KEY_HANDLE_INVALID,
        CKR_OBJECT_HANDLE_INVALID,
        HP11_TIMEOUT,
    }
)


#: The subset of DEVICE_FAULTS that can only mean a sick token or session. Where a bad input
#: can also produce CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED (unwrapping a corrupt blob),
#: only these are retried: a forged blob must not eject healthy tokens.
HARD_FAULTS: Final = frozenset(
    {
        CKR_DEVICE_ERROR,
        CKR_DEVICE_MEMORY,
        CKR_DEVICE_REMOVED,
        CKR_SESSION_CLOSED,
        CKR_SESSION_HANDLE_INVALID,
        CKR_TOKEN_NOT_PRESENT,
        CKR_USER_NOT_LOGGED_IN,
        CKR_CRYPTOKI_NOT_INITIALIZED,
        HP11_TIMEOUT,
    }
)


class P11Error(Exception):
    """A PKCS#11 function returned something other than CKR_OK."""

    def __init__(self, rv: int, function: str) -> None:
        self.rv = rv
        self.function = function
        self.name = CKR_NAMES.get(rv, f"CKR_0x{rv:08X}")
        super().__init__(f"{function}: {self.name}")


class CallTimeout(P11Error):
    """A call ran past its time: the token's hang budget, or the request's deadline
    (``deadline_passed``). The call was abandoned: it may still be running in the token."""

    def __init__(self, function: str, deadline_passed: bool) -> None:
        super().__init__(HP11_TIMEOUT, function)
        self.deadline_passed = deadline_passed


def _fail(rv: int, function: str) -> P11Error:
    return P11Error(rv, function)


#: How a :class:`Module` call runs when it is routed (see :meth:`Module.bind`): given the
#: direct glue function, its ``hp11_submit_*`` twin, the arguments and the objects that own
#: the memory the arguments point to, return the call's CK_RV.
Router = Any


# --- attribute templates ----------------------------------------------------------------

_TRUE = ffi.new("unsigned char*", 1)
_FALSE = ffi.new("unsigned char*", 0)


class Template:
    """A CK_ATTRIBUTE array built once from a mapping, with its buffers kept alive.

    A value that is itself a :class:`Template` makes an attribute-array attribute
    (``CKA_UNWRAP_TEMPLATE``, ``CKA_WRAP_TEMPLATE``): ``pValue`` points at the nested
    CK_ATTRIBUTE array and ``ulValueLen`` is its size in bytes, as PKCS#11 defines them.
    """

    __slots__ = ("array", "count", "_keep")

    def __init__(self, attrs: Mapping[int, AttrValue]) -> None:
        self.count = len(attrs)
        self.array = ffi.new("CK_ATTRIBUTE[]", max(self.count, 1))
        keep: list[Any] = []
        for i, (attr, value) in enumerate(attrs.items()):
            entry = self.array[i]
            entry.type = attr
            if isinstance(value, bool):
                entry.pValue = _TRUE if value else _FALSE
                entry.ulValueLen = 1
            elif isinstance(value, Template):
                keep.append(value)
                entry.pValue = value.array
                entry.ulValueLen = value.count * ffi.sizeof("CK_ATTRIBUTE")
            elif isinstance(value, int):
                buf = ffi.new("unsigned long*", value)
                keep.append(buf)
                entry.pValue = buf
                entry.ulValueLen = ffi.sizeof("unsigned long")
            else:
                cbuf = ffi.new("unsigned char[]", bytes(value))
                keep.append(cbuf)
                entry.pValue = cbuf
                entry.ulValueLen = len(value)
        self._keep = keep


AttrValue = bool | int | bytes | Template


# --- mechanisms -------------------------------------------------------------------------


class Mechanism:
    """A CK_MECHANISM (with its parameter block) built once and reused."""

    __slots__ = ("ptr", "_keep")

    def __init__(self, mechanism: int, param: Any = None, param_size: int = 0) -> None:
        self.ptr = ffi.new("CK_MECHANISM*")
        self.ptr.mechanism = mechanism
        if param is None:
            self.ptr.pParameter = ffi.NULL
            self.ptr.ulParameterLen = 0
        else:
            self.ptr.pParameter = param
            self.ptr.ulParameterLen = param_size
        self._keep = param

    @classmethod
    def plain(cls, mechanism: int) -> Mechanism:
        return cls(mechanism)

    @classmethod
    def pss(cls, mechanism: int, hash_alg: int, mgf: int, salt_len: int) -> Mechanism:
        p = ffi.new("CK_RSA_PKCS_PSS_PARAMS*")
        p.hashAlg = hash_alg
        p.mgf = mgf
        p.sLen = salt_len
        return cls(mechanism, p, ffi.sizeof("CK_RSA_PKCS_PSS_PARAMS"))

    @classmethod
    def oaep(cls, hash_alg: int, mgf: int) -> Mechanism:
        p = ffi.new("CK_RSA_PKCS_OAEP_PARAMS*")
        p.hashAlg = hash_alg
        p.mgf = mgf
        p.source = CKZ_DATA_SPECIFIED
        p.pSourceData = ffi.NULL
        p.ulSourceDataLen = 0
        return cls(CKM_RSA_PKCS_OAEP, p, ffi.sizeof("CK_RSA_PKCS_OAEP_PARAMS"))


# --- the module -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenInfo:
    slot: int
    label: str
    serial: str
    manufacturer: str
    model: str
    flags: int


def _text(raw: Any, n: int) -> str:
    return bytes(ffi.buffer(raw, n)).decode("utf-8", "replace").rstrip(" \0")


_REGISTRY: dict[str, tuple[Module, int]] = {}
_REGISTRY_LOCK = threading.Lock()


def acquire_module(path: str) -> Module:
    """The process-wide :class:`Module` for a library path, loaded on first use.

    A library is loaded and initialised once per process (dlopen returns the same handle
    for the same file, and C_Initialize may run once), so pools share it, counted.
    """
    with _REGISTRY_LOCK:
        hit = _REGISTRY.get(path)
        if hit is not None:
            _REGISTRY[path] = (hit[0], hit[1] + 1)
            return hit[0]
        mod = Module(path)
        _REGISTRY[path] = (mod, 1)
        return mod


def release_module(mod: Module) -> None:
    """Drop one reference; the last one finalises and unloads the library."""
    with _REGISTRY_LOCK:
        hit = _REGISTRY.get(mod.path)
        if hit is None or hit[0] is not mod:
            return
        if hit[1] > 1:
            _REGISTRY[mod.path] = (mod, hit[1] - 1)
            return
        del _REGISTRY[mod.path]
    mod.close()


class Module:
    """One loaded and initialised PKCS#11 library (usually through the shim).

    Use :func:`acquire_module` / :func:`release_module` rather than the constructor when
    several users in one process may load the same library.

    Every call that concerns a token goes through ``self._call(direct, submit, args, keep)``:
    here it calls the glue function ``direct(*args)`` in the caller's thread. A view made by
    :meth:`bind` routes those calls instead (a token's executor, with a timeout; see
    ``hsmpool._calls``); ``submit`` is the ``hp11_submit_*`` twin of ``direct`` and ``keep``
    the Python objects that own memory the arguments point to.
    """

    def __init__(self, path: str) -> None:
        err = ffi.new("char[512]")
        handle = lib.hp11_load(path.encode(), err, 512)
        if handle == ffi.NULL:
            raise OSError(ffi.string(err).decode("utf-8", "replace"))
        with token_files():  # not while another process of this host logs in (_hostlock)
            rv = lib.hp11_initialize(handle)
        if rv:
            lib.hp11_unload(handle)
            raise _fail(rv, "C_Initialize")
        self._m = handle
        self.path = path
        self._closed = False
        self._lock = threading.Lock()

    def bind(self, router: Router) -> Module:
        """A view of this module whose token calls go through ``router(direct, submit,
        args, keep, function)`` (a member's executor); it shares the library handle."""
        view = _RoutedModule.__new__(_RoutedModule)
        view.__dict__.update(self.__dict__)
        view._router = router
        view._parent = self
        return view

    @staticmethod
    def _call(direct: Any, submit: Any, args: tuple[Any, ...], keep: Any, function: str
              ) -> int:
        return int(direct(*args))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                lib.hp11_unload(self._m)

    # slots and tokens (module-wide: never routed)

    def slots(self) -> list[int]:
        count = ffi.new("unsigned long*", 0)
        rv = lib.hp11_slot_list(self._m, ffi.NULL, count)
        if rv:
            raise _fail(rv, "C_GetSlotList")
        arr = ffi.new("unsigned long[]", max(count[0], 1))
        rv = lib.hp11_slot_list(self._m, arr, count)
        if rv:
            raise _fail(rv, "C_GetSlotList")
        return [int(arr[i]) for i in range(count[0])]

    def token_info(self, slot: int) -> TokenInfo:
        label = ffi.new("unsigned char[32]")
        manuf = ffi.new("unsigned char[32]")
        model = ffi.new("unsigned char[16]")
        serial = ffi.new("unsigned char[16]")
        flags = ffi.new("unsigned long*")
        with token_files():  # it reads the file a login rewrites (hsmpool._hostlock)
            rv = lib.hp11_token_info(self._m, slot, label, manuf, model, serial, flags)
        if rv:
            raise _fail(rv, "C_GetTokenInfo")
        return TokenInfo(
            slot=slot,
            label=_text(label, 32),
            serial=_text(serial, 16),
            manufacturer=_text(manuf, 32),
            model=_text(model, 16),
            flags=int(flags[0]),
        )

    def mechanisms(self, slot: int) -> frozenset[int]:
        count = ffi.new("unsigned long*", 0)
        rv = lib.hp11_mechanisms(self._m, slot, ffi.NULL, count)
        if rv:
            raise _fail(rv, "C_GetMechanismList")
        arr = ffi.new("unsigned long[]", max(count[0], 1))
        rv = lib.hp11_mechanisms(self._m, slot, arr, count)
        if rv:
            raise _fail(rv, "C_GetMechanismList")
        return frozenset(int(arr[i]) for i in range(count[0]))

    # sessions

    def open_session(self, slot: int) -> int:
        out = ffi.new("unsigned long*")
        rv = self._call(lib.hp11_open_session, lib.hp11_submit_open_session,
                        (self._m, slot, out), out, "C_OpenSession")
        if rv:
            raise _fail(rv, "C_OpenSession")
        return int(out[0])

    def close_session(self, session: int) -> None:
        rv = self._call(lib.hp11_close_session, lib.hp11_submit_close_session,
                        (self._m, session), None, "C_CloseSession")
        if rv:
            raise _fail(rv, "C_CloseSession")

    def login(self, session: int, pin: bytes, user_type: int = CKU_USER) -> None:
        with token_files():  # a login rewrites SoftHSM2's token file (hsmpool._hostlock)
            rv = self._call(lib.hp11_login, lib.hp11_submit_login,
                            (self._m, session, user_type, pin, len(pin)), pin, "C_Login")
        if rv and rv != CKR_USER_ALREADY_LOGGED_IN:
            raise _fail(rv, "C_Login")

    def logout(self, session: int) -> None:
        rv = lib.hp11_logout(self._m, session)
        if rv:
            raise _fail(rv, "C_Logout")

    # objects

    def generate_key(self, session: int, mechanism: int, tpl: Template) -> int:
        out = ffi.new("unsigned long*")
        rv = self._call(lib.hp11_generate_key, lib.hp11_submit_generate_key,
                        (self._m, session, mechanism, tpl.array, tpl.count, out), (tpl, out),
                        "C_GenerateKey")
        if rv:
            raise _fail(rv, "C_GenerateKey")
        return int(out[0])

    def generate_key_pair(
        self, session: int, mechanism: int, pub: Template, priv: Template
    ) -> tuple[int, int]:
        hpub = ffi.new("unsigned long*")
        hpriv = ffi.new("unsigned long*")
        rv = self._call(lib.hp11_generate_key_pair, lib.hp11_submit_generate_key_pair,
                        (self._m, session, mechanism, pub.array, pub.count, priv.array,
                         priv.count, hpub, hpriv), (pub, priv, hpub, hpriv),
                        "C_GenerateKeyPair")
        if rv:
            raise _fail(rv, "C_GenerateKeyPair")
        return int(hpub[0]), int(hpriv[0])

    def create_object(self, session: int, tpl: Template) -> int:
        out = ffi.new("unsigned long*")
        rv = self._call(lib.hp11_create_object, lib.hp11_submit_create_object,
                        (self._m, session, tpl.array, tpl.count, out), (tpl, out),
                        "C_CreateObject")
        if rv:
            raise _fail(rv, "C_CreateObject")
        return int(out[0])

    def destroy_object(self, session: int, obj: int) -> None:
        rv = self._call(lib.hp11_destroy_object, lib.hp11_submit_destroy_object,
                        (self._m, session, obj), None, "C_DestroyObject")
        if rv:
            raise _fail(rv, "C_DestroyObject")

    def get_attribute(self, session: int, obj: int, attr: int) -> bytes:
        tpl = ffi.new("CK_ATTRIBUTE[1]")
        tpl[0].type = attr
        tpl[0].pValue = ffi.NULL
        tpl[0].ulValueLen = 0
        rv = self._call(lib.hp11_get_attributes, lib.hp11_submit_get_attributes,
                        (self._m, session, obj, tpl, 1), tpl, "C_GetAttributeValue")
        if rv:
            raise _fail(rv, "C_GetAttributeValue")
        size = int(tpl[0].ulValueLen)
        buf = ffi.new("unsigned char[]", max(size, 1))
        tpl[0].pValue = buf
        rv = self._call(lib.hp11_get_attributes, lib.hp11_submit_get_attributes,
                        (self._m, session, obj, tpl, 1), (tpl, buf), "C_GetAttributeValue")
        if rv:
            raise _fail(rv, "C_GetAttributeValue")
        value = bytes(ffi.buffer(buf, int(tpl[0].ulValueLen)))
        ffi.memmove(buf, b"\0" * size, size)
        return value

    def get_attribute_array(self, session: int, obj: int, attr: int) -> dict[int, bytes]:
        """An attribute-array attribute (``CKA_UNWRAP_TEMPLATE``...) as {type: value}: its
        size, then the types and lengths of its entries, then their values (PKCS#11 v2.40,
        C_GetAttributeValue on arrays)."""
        outer = ffi.new("CK_ATTRIBUTE[1]")
        outer[0].type = attr
        outer[0].pValue = ffi.NULL
        outer[0].ulValueLen = 0
        keep: list[Any] = [outer]

        def fetch() -> None:
            rv = self._call(lib.hp11_get_attributes, lib.hp11_submit_get_attributes,
                            (self._m, session, obj, outer, 1), tuple(keep),
                            "C_GetAttributeValue")
            if rv:
                raise _fail(rv, "C_GetAttributeValue")

        fetch()
        n = int(outer[0].ulValueLen) // ffi.sizeof("CK_ATTRIBUTE")
        if n == 0:
            return {}
        inner = ffi.new("CK_ATTRIBUTE[]", n)
        for i in range(n):
            inner[i].type = 0
            inner[i].pValue = ffi.NULL
            inner[i].ulValueLen = 0
        keep.append(inner)
        outer[0].pValue = inner
        outer[0].ulValueLen = n * ffi.sizeof("CK_ATTRIBUTE")
        fetch()
        bufs = [ffi.new("unsigned char[]", max(int(inner[i].ulValueLen), 1)) for i in range(n)]
        for i in range(n):
            inner[i].pValue = bufs[i]
        keep.extend(bufs)
        fetch()
        return {int(inner[i].type): bytes(ffi.buffer(bufs[i], int(inner[i].ulValueLen)))
                for i in range(n)}

    def find(self, session: int, tpl: Template, limit: int = 64) -> list[int]:
        arr = ffi.new("unsigned long[]", limit)
        found = ffi.new("unsigned long*")
        rv = self._call(lib.hp11_find, lib.hp11_submit_find,
                        (self._m, session, tpl.array, tpl.count, arr, limit, found),
                        (tpl, arr, found), "C_FindObjects")
        if rv:
            raise _fail(rv, "C_FindObjects")
        return [int(arr[i]) for i in range(found[0])]

    def wrap(self, session: int, mech: Mechanism, wrapping_key: int, key: int) -> bytes:
        size = ffi.new("unsigned long*", 0)
        rv = self._call(lib.hp11_wrap, lib.hp11_submit_wrap,
                        (self._m, session, mech.ptr, wrapping_key, key, ffi.NULL, size),
                        (mech, size), "C_WrapKey")
        if rv:
            raise _fail(rv, "C_WrapKey")
        out = ffi.new("unsigned char[]", max(size[0], 1))
        rv = self._call(lib.hp11_wrap, lib.hp11_submit_wrap,
                        (self._m, session, mech.ptr, wrapping_key, key, out, size),
                        (mech, size, out), "C_WrapKey")
        if rv:
            raise _fail(rv, "C_WrapKey")
        return bytes(ffi.buffer(out, size[0]))

    def unwrap(
        self, session: int, mech: Mechanism, unwrapping_key: int, wrapped: bytes, tpl: Template
    ) -> int:
        out = ffi.new("unsigned long*")
        rv = self._call(lib.hp11_unwrap, lib.hp11_submit_unwrap,
                        (self._m, session, mech.ptr, unwrapping_key, wrapped, len(wrapped),
                         tpl.array, tpl.count, out), (mech, wrapped, tpl, out), "C_UnwrapKey")
        if rv:
            raise _fail(rv, "C_UnwrapKey")
        return int(out[0])

    def random(self, session: int, n: int) -> bytes:
        out = ffi.new("unsigned char[]", max(n, 1))
        rv = self._call(lib.hp11_random, lib.hp11_submit_random, (self._m, session, out, n),
                        out, "C_GenerateRandom")
        if rv:
            raise _fail(rv, "C_GenerateRandom")
        return bytes(ffi.buffer(out, n))

    # single-part operations (the hot paths)

    def crypt(
        self, op: int, session: int, mech: Mechanism, key: int, data: bytes, out_size: int
    ) -> bytes:
        out = ffi.new("unsigned char[]", max(out_size, 1))
        n = ffi.new("unsigned long*", out_size)
        rv = self._call(lib.hp11_crypt, lib.hp11_submit_crypt,
                        (self._m, op, session, mech.ptr, key, data, len(data), out, n),
                        (mech, data, out, n), _CRYPT_NAMES[op])
        if rv == CKR_BUFFER_TOO_SMALL:
            return self.crypt(op, session, mech, key, data, int(n[0]))
        if rv:
            raise _fail(rv, _CRYPT_NAMES[op])
        return cast(bytes, ffi.buffer(out, n[0])[:])

    def gcm(
        self, op: int, session: int, key: int, iv: bytes, aad: bytes, data: bytes
    ) -> bytes:
        size = len(data) + 16 if op == ENCRYPT else len(data)
        out = ffi.new("unsigned char[]", size or 1)
        n = ffi.new("unsigned long*", size)
        rv = self._call(lib.hp11_gcm, lib.hp11_submit_gcm,
                        (self._m, op, session, key, iv, len(iv), aad, len(aad), data,
                         len(data), out, n), (iv, aad, data, out, n), _CRYPT_NAMES[op])
        if rv:
            raise _fail(rv, _CRYPT_NAMES[op])
        return cast(bytes, ffi.buffer(out, n[0])[:])


_CRYPT_NAMES: Final = ("C_Encrypt", "C_Decrypt", "C_Sign")


class _RoutedModule(Module):
    """A :class:`Module` view whose token calls go through a router (see Module.bind)."""

    _router: Router
    _parent: Module

    def _call(self, direct: Any, submit: Any, args: tuple[Any, ...], keep: Any,  # type: ignore[override]
              function: str) -> int:
        return int(self._router(direct, submit, args, keep, function))

    def close(self) -> None:  # the library belongs to the parent
        pass
