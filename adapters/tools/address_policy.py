"""Which addresses ``fetch_url`` may connect to: public unicast ones only.

A model steered by a web page must not reach the service's own machine, its
network or a cloud metadata endpoint. Every address a name resolves to is
checked, and IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4)
are judged by the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address

Address = IPv4Address | IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


def refusal(address: Address) -> str:
    """Why ``address`` is refused ("" when it is a public unicast address)."""
    if isinstance(address, IPv6Address) and (carried := _carried_ipv4(address)) is not None:
        reason = refusal(carried)
        return f"{reason} (carried in {address})" if reason else ""
    if address in _METADATA:
        return "a cloud metadata address"
    for test, what in (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
    ):
        if test:
            return what
    if not address.is_global:  # e.g. 100.64.0.0/10, carrier-grade NAT
        return "not a public address"
    return ""


def _carried_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None
