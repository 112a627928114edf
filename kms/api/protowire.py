"""Protocol Buffers' wire format, as far as the KMS-instance messages need it.

A message is described by a :data:`Schema`: field number -> (name, kind), kinds ``string``,
``bytes``, ``int32``, ``bool`` and ``repeated string``. :func:`decode` reads a message into
a dict (absent fields are absent; a field given twice keeps the last value, as protobuf
does; unknown fields of any wire type are skipped); every malformation is
:class:`ProtoError`. :func:`encode` writes the fields present and not empty/zero, as proto3
does. No code generation, no dependency.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

Schema = Mapping[int, tuple[str, str]]

_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_I32: Final = 5
_LENGTH_KINDS: Final = frozenset({"string", "bytes", "repeated string"})
MAX_VARINT_BYTES: Final = 10


class ProtoError(ValueError):
    """The bytes are not a valid message of the schema."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(MAX_VARINT_BYTES):
        if pos >= len(data):
            raise ProtoError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise ProtoError("varint too long")


def decode(data: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ProtoError("field number 0")
        field = schema.get(number)
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            if field is not None:
                name, kind = field
                if kind == "int32":
                    value &= 0xFFFFFFFF
                    out[name] = value - (1 << 32) if value >= 1 << 31 else value
                elif kind == "bool":
                    out[name] = value != 0
                else:
                    raise ProtoError(f"field {name} has the wrong wire type")
        elif wire == _LEN:
            size, pos = _varint(data, pos)
            if size > end - pos:
                raise ProtoError("truncated field")
            chunk = data[pos:pos + size]
            pos += size
            if field is not None:
                name, kind = field
                if kind not in _LENGTH_KINDS:
                    raise ProtoError(f"field {name} has the wrong wire type")
                if kind == "bytes":
                    out[name] = chunk
                else:
                    try:
                        text = chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtoError(f"field {name} is not UTF-8") from None
                    if kind == "string":
                        out[name] = text
                    else:
                        out.setdefault(name, []).append(text)
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if width > end - pos:
                raise ProtoError("truncated field")
            pos += width
            if field is not None:
                raise ProtoError(f"field {field[0]} has the wrong wire type")
        else:
            raise ProtoError(f"wire type {wire} is not supported")
    return out


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode(fields: Mapping[str, Any], schema: Schema) -> bytes:
    out = bytearray()
    for number, (name, kind) in schema.items():
        value = fields.get(name)
        if value is None or value == "" or value == b"" or value is False or (
                kind == "int32" and value == 0):
            continue
        if kind in ("int32", "bool"):
            _put_varint(out, number << 3 | _VARINT)
            _put_varint(out, int(value) & 0xFFFFFFFFFFFFFFFF)
            continue
        items = value if kind == "repeated string" else [value]
        for item in items:
            raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            _put_varint(out, number << 3 | _LEN)
            _put_varint(out, len(raw))
            out += raw
    return bytes(out)
