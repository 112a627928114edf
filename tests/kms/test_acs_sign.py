"""The Alibaba front end's fast paths against their definitions: the percent-encoding of
the canonical query (kms.api.acs_sign) is urllib's ``quote(..., safe="~")``, a timestamp
parses (or fails) the same however often it is seen, and the query or form parser
(kms.api.alibaba) is urllib's ``parse_qsl``."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.api.acs_sign import _enc, _parse_time
from kms.api.alibaba import parse_query
from kms.api.sigv4 import AuthError


@given(st.text())
def test_percent_encoding_is_quotes(text: str) -> None:
    assert _enc(text) == quote(text, safe="~", encoding="utf-8")


@pytest.mark.parametrize("text", ["", "abc-XYZ_0.9~", "a+b/c==", "a b&c=d%", "é中", "\x00\x7f"])
def test_percent_encoding_examples(text: str) -> None:
    assert _enc(text) == quote(text, safe="~", encoding="utf-8")


def test_timestamps_parse_alike_when_seen_again() -> None:
    assert _parse_time("2026-12-07T00:53:27Z") == 1796604807.0
    assert _parse_time("2026-12-07T00:53:27Z") == 1796604807.0  # cached
    for bad in ("2026-12-07 00:53:27", "2026-13-07T00:53:27Z", "yesterday"):
        for _ in range(2):  # a refusal is not remembered as a time
            with pytest.raises(AuthError):
                _parse_time(bad)


_QUERY_CHARS = st.sampled_from(list("aZ09-_.~=&+%/ é中") + ["%2B", "%3D", "%26", "%E4%B8%AD",
                                                          "%FF", "%G1", "%2", "%%"])


@given(st.lists(_QUERY_CHARS, max_size=40).map("".join))
def test_query_parsing_is_parse_qsls(text: str) -> None:
    assert parse_query(text) == dict(parse_qsl(text, keep_blank_values=True))
