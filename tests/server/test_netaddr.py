"""kms.api.netaddr.source_address: the source address of a request, and [server]
trusted_proxies parsing (pure functions: no server, no tokens)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from hsmpool.errors import ConfigError
from kms.api.netaddr import Network, source_address
from kms.config import ServerSettings

PROXY = ("10.0.0.5", 443)
TRUSTED: tuple[Network, ...] = (ipaddress.ip_network("10.0.0.5"),
                                ipaddress.ip_network("10.9.0.0/16"),
                                ipaddress.ip_network("fd00::/8"))


def xff(*values: str) -> str | None:
    """The header value as the server hands it over: repeated headers joined by ","."""
    return ",".join(values) if values else None


def src(peer: Sequence[object] | None, forwarded_for: str | None,
        trusted: tuple[Network, ...] = TRUSTED) -> str | None:
    return source_address(str(peer[0]) if peer else None, forwarded_for, trusted)


def test_no_trusted_proxies_means_the_peer() -> None:
    assert src(("127.0.0.1", 5000), xff("10.1.2.3"), ()) == "127.0.0.1"
    assert src(("192.0.2.7", 5000), xff("10.1.2.3", "10.0.0.1"), ()) == "192.0.2.7"
    assert src(None, xff("10.1.2.3"), ()) is None


def test_an_untrusted_peer_is_the_source_whatever_it_sends() -> None:
    assert src(("192.0.2.7", 1), xff("10.1.2.3")) == "192.0.2.7"
    assert src(("10.0.0.6", 1), xff("10.0.0.5")) == "10.0.0.6"  # next to a proxy: not one
    assert src(("192.0.2.7", 1), xff("garbage")) == "192.0.2.7"


def test_a_trusted_peer_forwards_the_rightmost_untrusted_entry() -> None:
    assert src(PROXY, xff("198.51.100.4")) == "198.51.100.4"
    # A client's own X-Forwarded-For is to the left of what the proxy appended.
    assert src(PROXY, xff("10.1.2.3, 198.51.100.4")) == "198.51.100.4"
    # Several trusted hops are skipped.
    assert src(PROXY, xff("10.1.2.3, 198.51.100.4, 10.9.3.3, 10.0.0.5")) == "198.51.100.4"
    # Repeated headers are one list, in order.
    assert src(PROXY, xff("10.1.2.3", "198.51.100.4", "10.9.3.3")) == "198.51.100.4"
    assert src(PROXY, xff(" 198.51.100.4 ,10.9.1.1 ")) == "198.51.100.4"


def test_only_trusted_entries_give_the_leftmost() -> None:
    assert src(PROXY, xff("10.9.1.1, 10.0.0.5")) == "10.9.1.1"


def test_a_trusted_peer_without_the_header_is_the_source() -> None:
    assert src(PROXY, None) == "10.0.0.5"


def test_ipv6_and_mapped_addresses() -> None:
    assert src(("fd00::1", 1), xff("2001:db8::9")) == "2001:db8::9"
    assert src(("::ffff:10.0.0.5", 1), xff("198.51.100.4")) == "198.51.100.4"
    assert src(PROXY, xff("198.51.100.4, ::ffff:10.9.0.1")) == "198.51.100.4"
    assert src(PROXY, xff("::ffff:198.51.100.4")) == "198.51.100.4"


@pytest.mark.parametrize("entry", ["unknown", "", "198.51.100.4:5000", "[2001:db8::1]",
                                   "10.1.2.3/8", "1.2.3", "x" * 100])
def test_a_malformed_forwarded_entry_makes_the_source_unknown(entry: str) -> None:
    assert src(PROXY, xff(f"10.1.2.3, {entry}")) is None
    assert src(PROXY, xff(f"{entry}, 10.9.1.1")) is None


def test_a_malformed_entry_left_of_the_source_is_not_read() -> None:
    assert src(PROXY, xff("garbage, 198.51.100.4, 10.9.1.1")) == "198.51.100.4"


def test_settings_parse_trusted_proxies() -> None:
    s = ServerSettings(trusted_proxies=("10.0.0.5", "10.9.0.0/16", "::1"))
    assert s.proxy_networks == (ipaddress.ip_network("10.0.0.5/32"),
                                ipaddress.ip_network("10.9.0.0/16"),
                                ipaddress.ip_network("::1/128"))
    assert ServerSettings().proxy_networks == ()
    for bad in (["10.0.0.1/8"], ["nope"], [5], "10.0.0.5"):
        with pytest.raises(ConfigError, match="trusted_proxies"):
            ServerSettings(trusted_proxies=bad)  # type: ignore[arg-type]
