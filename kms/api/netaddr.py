"""The source address of a request: the TCP peer, or what trusted proxies say it was.

Policies grant and deny by ``aws:SourceIp``, so the address must be one the caller cannot
choose. ``X-Forwarded-For`` is written by the client as much as by any proxy, so it counts
only when the TCP peer is one of the configured trusted proxies (``[server]
trusted_proxies``), and then only the part those proxies appended: the entries are read from
the right, skipping trusted proxies, and the first one that is not a trusted proxy is the
source. What a client put further left is never believed. If every entry is a trusted proxy,
the left-most one is the source.

An entry that is not a bare IPv4 or IPv6 address (a port, brackets, ``unknown``, an empty
entry) makes the source unknown (``None``), which policies treat fail-closed: an ``Allow``
with an IP condition does not grant, a ``Deny`` with one applies. The ``Forwarded`` header
(RFC 7239) is not read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: Address, trusted: Sequence[Network]) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


def source_address(peer: str | None, forwarded_for: str | None,
                   trusted: Sequence[Network]) -> str | None:
    """The source address of a request (module docstring).

    ``peer`` is the TCP peer's address (None if unknown), ``forwarded_for`` the request's
    ``X-Forwarded-For`` value (repeated headers joined by ","), ``trusted`` the trusted
    proxies.
    """
    if not peer:
        return None
    if not trusted or forwarded_for is None:
        return peer
    peer_addr = _address(peer)
    if peer_addr is None or not _trusted(peer_addr, trusted):
        return peer
    entries = [item.strip() for item in forwarded_for.split(",")]
    addr = peer_addr
    for text in reversed(entries):
        hop = _address(text)
        if hop is None:
            return None
        addr = hop
        if not _trusted(addr, trusted):
            break
    return str(addr)
