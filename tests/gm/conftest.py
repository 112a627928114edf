"""Every test in tests/gm/ runs once per SM4 implementation this CPU offers (portable always,
plus AVX2 and AVX-512 where available), by way of the autouse fixture below."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import hsmpool.gm as gm


@pytest.fixture(scope="module", params=gm.available_implementations(), autouse=True)
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    before = gm.implementation()
    gm.set_implementation(request.param)
    assert gm.implementation() == request.param
    yield request.param
    gm.set_implementation(before)


def wrap(data: bytes, kind: str, offset: int = 0) -> bytes | bytearray | memoryview:
    """data as bytes, a bytearray, or a memoryview slice of a larger bytearray starting at
    `offset` (so the C code sees an unaligned pointer)."""
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    backing = bytearray(b"\xa5" * offset) + bytearray(data) + bytearray(b"\x5a" * 7)
    return memoryview(backing)[offset : offset + len(data)]


BUFFER_KINDS = ["bytes", "bytearray", "memoryview"]
