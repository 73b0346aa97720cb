"""Fetch an image from a caller's http(s) URL without letting the caller reach internal hosts.

Each hop's host is resolved once and every address it resolves to is vetted; the request then
goes to the vetted IP itself, so DNS rebinding cannot swap in another address between the check
and the connect. Redirects are followed by hand so that every hop is vetted the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from functools import cache

import httpx

from gateway.http.errors import ApiError
from settings import Settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud instance metadata services (AWS, GCP, Azure; AWS over IPv6): credentials live there.
CLOUD_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
# Every block of IANA's IPv4 and IPv6 Special-Purpose Address Registries that is not globally
# reachable (or not reachable at all: documentation, benchmarking, deprecated relays), refused
# whatever the Python in use says: `is_global` of Python 3.11.7 misses 192.0.0.0/24 beyond its
# first /29 (192.0.0.192 is a cloud metadata address), 192.88.99.0/24 and 3fff::/20. The few
# globally reachable anycast addresses inside 192.0.0.0/24 (PCP, TURN) are no image server.
SPECIAL_PURPOSE_NETWORKS = tuple(
    ipaddress.ip_network(block)
    for block in (
        # IPv4 (iana.org/assignments/iana-ipv4-special-registry)
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private use
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link local
        "172.16.0.0/12",  # private use
        "192.0.0.0/24",  # IETF protocol assignments (incl. 192.0.0.0/29, .8, .170/31)
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private use
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",  # limited broadcast
        # IPv6 (iana.org/assignments/iana-ipv6-special-registry)
        "::1/128",  # loopback
        "::/128",  # unspecified
        "::ffff:0:0/96",  # IPv4-mapped (judged as its IPv4 address first, see _is_allowed)
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
        "100::/64",  # discard-only
        "100:0:0:1::/64",  # dummy IPv6 prefix
        "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing (SRv6) SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link local
    )
)
REQUEST_HEADERS = {
    "Accept": "image/jpeg, image/png, image/webp",
    # The bytes as stored: a compressed transfer would be inflated before the size limit saw it.
    "Accept-Encoding": "identity",
}


async def fetch_image_url(url: str, *, field: str, settings: Settings) -> bytes:
    """GET an http(s) URL and return its body, following up to `url_max_redirects` redirects.

    Raises ApiError: 400 (naming `field`) for a bad URL, a refused address, a timeout, a failed
    connection or a non-2xx answer; 413 when the body exceeds `max_image_bytes`.
    """
    try:
        # One deadline for everything: DNS, every hop, and the whole body.
        async with asyncio.timeout(settings.url_fetch_timeout_s):
            return await _fetch(url, field, settings)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ApiError.bad_field(field, f"could not fetch {field}: timed out") from exc
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        # Connection refused, TLS failure, broken response...: the details stay in the log.
        logger.info("fetching %s failed: %r", field, exc)
        message = f"could not fetch {field}: the connection to the server failed"
        raise ApiError.bad_field(field, message) from exc


async def vet_url(url: str, *, field: str, settings: Settings, action: str = "fetch") -> None:
    """Raise the guard's ApiError (400 naming `field`) unless `url` is an http(s) URL whose host
    resolves only to allowed addresses: a URL taken now and used later (a webhook)."""
    await _vetted_address(_parse_url(url, field), field, settings, action)


async def post_vetted(
    url: str, *, field: str, content: bytes, headers: dict[str, str], settings: Settings
) -> int:
    """POST `content` to an http(s) URL through the same guard as image URLs (every hop vetted
    and pinned to the vetted address; a redirect is followed with the same POST), and return
    the final answer's status code. Raises the guard's ApiError for a refused address or URL,
    and httpx's errors for a failed connection or a timeout (the caller bounds the time)."""
    target = _parse_url(url, field)
    for _hop in range(settings.url_max_redirects + 1):
        address = await _vetted_address(target, field, settings, "deliver to")
        async with _client(settings) as client:
            request = _pinned_request(client, target, address, "POST", content, headers)
            response = await client.send(request)
            if not response.has_redirect_location:
                return response.status_code
            target = _redirect_target(target, response, field, "deliver to")
    message = f"could not deliver to {field}: more than {settings.url_max_redirects} redirects"
    raise ApiError.bad_field(field, message)


async def _fetch(url: str, field: str, settings: Settings) -> bytes:
    target = _parse_url(url, field)
    for _hop in range(settings.url_max_redirects + 1):
        address = await _vetted_address(target, field, settings)
        # A fresh client per hop: a pooled connection to the same IP must never be reused
        # for a different host name (its TLS session was verified for the first one).
        async with _client(settings) as client:
            request = _pinned_request(client, target, address, "GET", None, REQUEST_HEADERS)
            response = await client.send(request, stream=True)
            try:
                if not response.has_redirect_location:
                    return await _read_body(response, field, settings)
                target = _redirect_target(target, response, field)
            finally:
                await response.aclose()
    message = f"could not fetch {field}: more than {settings.url_max_redirects} redirects"
    raise ApiError.bad_field(field, message)


def _parse_url(url: str, field: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        _check_readable(parsed)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        # InvalidURL, and what the parser lets through: IDNA errors of a host like "xn--zz",
        # a lone surrogate that cannot be encoded, a port out of range.
        raise ApiError.bad_field(field, f"{field} is not a valid URL") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise ApiError.bad_field(field, f"{field} must be an http or https URL")
    if not parsed.host:
        raise ApiError.bad_field(field, f"{field} is not a valid URL")
    return parsed


def _check_readable(url: httpx.URL) -> None:
    """Read every part of `url` the fetch uses, so that a part the parser took but cannot
    decode (an IDNA host like "xn--zz": the host is decoded lazily) fails here, not later."""
    url.host, url.raw_host.decode("ascii"), url.netloc.decode("ascii")


def _redirect_target(
    current: httpx.URL, response: httpx.Response, field: str, action: str = "fetch"
) -> httpx.URL:
    try:
        target = current.join(response.headers["Location"])
        _check_readable(target)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        target = None
    if target is None or target.scheme not in ALLOWED_SCHEMES or not target.host:
        message = f"could not {action} {field}: it redirects to an invalid or non-http(s) URL"
        raise ApiError.bad_field(field, message)
    return target


async def _vetted_address(
    url: httpx.URL, field: str, settings: Settings, action: str = "fetch"
) -> str:
    """Resolve the URL's host and return an address to connect to, once all are allowed."""
    host = url.raw_host.decode("ascii")
    port = url.port or DEFAULT_PORTS[url.scheme]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    # sockaddr[0] is the address, for IPv4 and IPv6 alike.
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        message = f"could not {action} {field}: the host name does not resolve"
        raise ApiError.bad_field(field, message)
    # Every address must pass, not just the first: the host may be tried on any of them.
    if not all(_is_allowed(address, settings) for address in addresses):
        message = f"could not {action} {field}: the address is not allowed"
        raise ApiError.bad_field(field, message)
    return str(addresses[0])


def _is_allowed(address: IPAddress, settings: Settings) -> bool:
    # ::ffff:a.b.c.d reaches the IPv4 host a.b.c.d, so judge it (and allow it) as that host.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in settings.url_allowed_networks):
        return True
    return not _is_internal(address)


def _is_internal(address: IPAddress) -> bool:
    if address in CLOUD_METADATA_ADDRESSES:
        return True
    if any(address in network for network in SPECIAL_PURPOSE_NETWORKS):
        return True
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        # Also the ranges above do not cover, e.g. carrier-grade NAT (100.64.0.0/10).
        or not address.is_global
    ):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:  # deprecated, but still routed inside some networks
            return True
        if address.sixtofour is not None:  # 6to4 tunnels to the IPv4 address it embeds
            return _is_internal(address.sixtofour)
    return False


def _client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=settings.url_fetch_timeout_s,
        follow_redirects=False,  # each hop is vetted by _fetch
        trust_env=False,  # an environment proxy would resolve the host name again itself
        verify=_tls_context(),
    )


@cache
def _tls_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle for every hop costs more than the fetch of a small image.
    return httpx.create_ssl_context()


def _pinned_request(
    client: httpx.AsyncClient,
    url: httpx.URL,
    address: str,
    method: str,
    content: bytes | None,
    headers: dict[str, str],
) -> httpx.Request:
    """A request to `address` that the server still sees as a request for `url`.

    The URL's host is replaced by the vetted IP, so httpx connects there without resolving
    anything; the Host header keeps the original name (and port). For https, httpcore's
    `sni_hostname` request extension makes TLS send the original name as SNI and verify the
    certificate against it, exactly as if the name had been in the URL.
    """
    headers = {**headers, "Host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    return client.build_request(
        method,
        url.copy_with(host=address),
        headers=headers,
        content=content,
        extensions=extensions,
    )


async def _read_body(response: httpx.Response, field: str, settings: Settings) -> bytes:
    if not response.is_success:
        message = f"could not fetch {field}: the server answered HTTP {response.status_code}"
        raise ApiError.bad_field(field, message)
    limit = settings.max_image_bytes
    too_large = ApiError.too_large(field, f"{field} is larger than the limit of {limit} bytes")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    # Raw bytes, counted as they arrive: a missing or false Content-Length cannot bypass this.
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
