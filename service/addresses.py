"""The client's address as the download event records it (``download_events.client_ip``, VARCHAR(45)).

Decision: only what the column can hold faithfully is stored -- an IPv4 or IPv6 address in its canonical text
(at most 45 characters), without an IPv6 zone id (``%eth0`` names an interface of the sender's host: meaningless
here, and it made the text overflow the column). Anything else is stored as NULL; a download is never refused
for an address, because the address is not the client's input to the API.

``X-Real-Ip`` and ``X-Forwarded-For`` are read only when the peer is a configured trusted proxy
(``server.trusted_proxies``, CIDRs, default none): then ``X-Real-Ip`` if present, else the right-most
``X-Forwarded-For`` hop that is not itself a trusted proxy (hops to its left are whatever the client wrote).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from tornado import httputil

__all__ = ["MAX_ADDRESS", "TrustedProxies", "canonical_ip"]

MAX_ADDRESS: Final = 45
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str | None) -> _Address | None:
    if not text or len(text) > MAX_ADDRESS or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical_ip(text: str | None) -> str | None:
    """``text`` as a storable address (canonical form), or None."""
    address = _parse(text)
    return None if address is None else str(address)


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[_Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def trusts(self, address: _Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client_ip(self, request: httputil.HTTPServerRequest) -> str | None:
        """The client's address for ``request`` (canonical text), or None when it cannot be stored."""
        peer = _parse(request.remote_ip)
        if not self.networks or not self.trusts(peer):
            return None if peer is None else str(peer)
        real = request.headers.get("X-Real-Ip")
        if real is not None:
            return canonical_ip(real)
        forwarded = request.headers.get_list("X-Forwarded-For")
        hops = [hop.strip() for value in forwarded for hop in value.split(",")]
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                return None  # a malformed hop set by (or passed on by) our proxy: nothing trustworthy to store
            if not self.trusts(address):
                return str(address)
        # Every hop is one of our proxies: the left-most is where the request entered.
        first = _parse(hops[0]) if hops else peer
        return None if first is None else str(first)
