"""The protobuf wire codec of the KMS-instance API (kms/api/protowire.py): round trips,
protobuf's rules (unknown fields skipped, last value wins, proto3 defaults left out) and
malformed input, which is always ProtoError, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.api import protowire as pw

SCHEMA: pw.Schema = {1: ("KeyId", "string"), 2: ("Plaintext", "bytes"), 3: ("Length", "int32"),
                     4: ("Value", "bool"), 5: ("Stages", "repeated string")}


@given(st.fixed_dictionaries({}, optional={
    "KeyId": st.text(min_size=1), "Plaintext": st.binary(min_size=1),
    "Length": st.integers(-(2 ** 31), 2 ** 31 - 1).filter(bool), "Value": st.just(True),
    "Stages": st.lists(st.text(), min_size=1)}))
def test_round_trip(fields: dict[str, object]) -> None:
    assert pw.decode(pw.encode(fields, SCHEMA), SCHEMA) == fields


def test_known_bytes_unknown_fields_and_defaults() -> None:
    # KeyId="k" (field 1), an unknown varint field 9, an unknown fixed64 field 10, Length=300
    data = b"\x0a\x01k" + b"\x48\x05" + b"\x51" + b"\x00" * 8 + b"\x18\xac\x02"
    assert pw.decode(data, SCHEMA) == {"KeyId": "k", "Length": 300}
    assert pw.decode(b"\x0a\x01a\x0a\x01b", SCHEMA) == {"KeyId": "b"}  # the last one wins
    assert pw.encode({"KeyId": "", "Plaintext": b"", "Length": 0, "Value": False}, SCHEMA) == b""
    assert pw.decode(b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", SCHEMA) == {"Length": -1}


@pytest.mark.parametrize("data", [
    b"\x0a\x05abc",           # truncated length-delimited field
    b"\x0a",                   # truncated length
    b"\x18" + b"\xff" * 11,    # varint too long
    b"\x08\x01",               # KeyId (a string) sent as a varint
    b"\x1a\x01x",              # Length (an int32) sent length-delimited
    b"\x0a\x02\xff\xfe",       # a string that is not UTF-8
    b"\x00\x01",               # field number 0
    b"\x0b",                   # wire type 3 (groups) is not supported
    b"\x51\x00\x00",           # truncated fixed64
])
def test_malformed_input_is_a_proto_error(data: bytes) -> None:
    with pytest.raises(pw.ProtoError):
        pw.decode(data, SCHEMA)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_proto_error(data: bytes) -> None:
    try:
        pw.decode(data, SCHEMA)
    except pw.ProtoError:
        pass
