"""The image URL guard (gateway/schemas/url_fetch.py) against IANA's Special-Purpose Address
Registries.

Every block of the IPv4 and IPv6 registries whose "Globally Reachable" is False (or N/A: not
reachable at all) is refused at its first, a middle and its last address, whatever Python's
`ipaddress` says about it; IPv4 blocks also as IPv4-mapped IPv6. The table here is copied from
the registries (iana.org/assignments/iana-ipv4-special-registry, -ipv6-special-registry, as of
2025), not from the code under test. Public addresses pass.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from gateway.http.errors import ApiError
from gateway.schemas.url_fetch import _is_allowed, fetch_image_url
from settings import Settings

IPV4_NOT_GLOBAL = [
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private use"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link local"),
    ("172.16.0.0/12", "private use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.0.0/29", "IPv4 service continuity prefix"),
    ("192.0.0.8/32", "IPv4 dummy address"),
    ("192.0.0.170/32", "NAT64/DNS64 discovery"),
    ("192.0.0.171/32", "NAT64/DNS64 discovery"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private use"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "limited broadcast"),
]
IPV6_NOT_GLOBAL = [
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("::ffff:0:0/96", "IPv4-mapped (N/A: judged as the IPv4 address it maps)"),
    ("64:ff9b:1::/48", "IPv4-IPv6 translation, local use"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy IPv6 prefix"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001::/32", "TEREDO"),
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "deprecated ORCHID"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 (N/A: judged by the IPv4 address it embeds)"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local unicast"),
]
# What the issue found allowed: a cloud metadata address inside 192.0.0.0/24.
METADATA_IN_IETF_BLOCK = "192.0.0.192"
PUBLIC = ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "2a00:1450:4001::200e"]


def three_addresses(block: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    network = ipaddress.ip_network(block)
    first, last = network.network_address, network.broadcast_address
    middle = first + (network.num_addresses // 2)
    return [first, middle, last]


def refused(address) -> bool:
    return not _is_allowed(address, Settings())


@pytest.mark.parametrize(("block", "name"), IPV4_NOT_GLOBAL)
def test_every_ipv4_special_purpose_block_is_refused(block, name):
    for address in three_addresses(block):
        assert refused(address), (block, name, address)
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        assert refused(mapped), (block, name, mapped)


@pytest.mark.parametrize(("block", "name"), IPV6_NOT_GLOBAL)
def test_every_ipv6_special_purpose_block_is_refused(block, name):
    for address in three_addresses(block):
        embedded = address.sixtofour or address.ipv4_mapped
        if embedded is not None and not refused(embedded):
            continue  # 6to4 or IPv4-mapped of a public IPv4 address reaches that address
        assert refused(address), (block, name, address)


def test_the_metadata_address_in_the_ietf_block_is_refused():
    assert refused(ipaddress.ip_address(METADATA_IN_IETF_BLOCK))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert not refused(ipaddress.ip_address(address))


def test_an_allowed_network_still_overrides_the_guard():
    settings = Settings(url_allowed_networks="192.0.0.0/24")
    assert _is_allowed(ipaddress.ip_address(METADATA_IN_IETF_BLOCK), settings)


def test_a_host_that_resolves_into_the_ietf_block_is_refused(monkeypatch):
    async def resolve(self, host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (METADATA_IN_IETF_BLOCK, port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolve)
    with pytest.raises(ApiError) as error:
        asyncio.run(
            fetch_image_url("http://images.example/a.png", field="image", settings=Settings())
        )
    assert error.value.status == 400 and "not allowed" in error.value.message
