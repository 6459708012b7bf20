"""Outbound HTTP to URLs that clients name (webhook receivers, JWKS of token issuers and clients).

Such a URL must not reach inside the network (SSRF). Checking the name's addresses and then letting
the HTTP client resolve the name again would leave a window in which DNS answers differently (DNS
rebinding), so a request through `pinned_client` resolves its host once, refuses it if any address
is internal, and connects to those checked addresses only. The URL keeps its host name, so the
`Host` header, TLS SNI and certificate verification are for that name, as with any request.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from service.errors import ApiError

MAX_URL_LENGTH = 2000  # webhook_subscription.url


def resolve_host(host: str) -> list[str]:
    """The addresses a host name resolves to, in the resolver's order (a seam: tests stand in
    for DNS here)."""
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, None)))


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 one reaches: mapped, NAT64, 6to4, Teredo, IPv4-compatible."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64 or (ip.packed[:12] == bytes(12) and int(ip) > 0xFFFF):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _internal(address: str) -> bool:
    """Not a public address, or an IPv6 one that carries a non-public IPv4 inside it."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global:
        return True
    return isinstance(ip, ipaddress.IPv6Address) and any(
        not v4.is_global for v4 in _embedded_ipv4(ip)
    )


def check_form(url: str) -> httpx.URL:
    """Refuse URLs that are too long, not absolute http(s), carry credentials or are malformed."""
    if len(url) > MAX_URL_LENGTH:  # the column's size: longer would be a database error
        raise ApiError(400, "invalid_url", f"the webhook url is longer than {MAX_URL_LENGTH}")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ApiError(400, "invalid_url", "the webhook url must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ApiError(400, "invalid_url", "the webhook url must not carry credentials")
    try:  # what the HTTP client would refuse at every delivery must be refused now
        _ = parts.port
        return httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ApiError(400, "invalid_url", f"the webhook url is malformed: {exc}") from None


@dataclass(frozen=True)
class Destination:
    """A URL's host and the addresses it resolved to, once: the only addresses to connect to."""

    host: str
    addresses: tuple[str, ...]


def destination(url: httpx.URL, *, allow_private: bool) -> Destination:
    """Resolve the URL's host once; refuse it if any address is internal, unless allowed."""
    # The name as the HTTP client dials it: IDNA-encoded, an IPv6 address without brackets.
    host = url.raw_host.decode("ascii")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        name = host.lower().rstrip(".")
        if not allow_private and (
            name == "localhost" or name.endswith((".localhost", ".local", ".internal"))
        ):
            raise ApiError(400, "url_not_allowed", f"{host} is an internal host") from None
        try:
            addresses = resolve_host(host)
        except (OSError, UnicodeError) as exc:  # IDNA refuses empty or over-long labels
            raise ApiError(400, "invalid_url", f"{host} does not resolve") from exc
    if not addresses:
        raise ApiError(400, "invalid_url", f"{host} does not resolve")
    bad = [] if allow_private else [a for a in addresses if _internal(a)]
    if bad:
        raise ApiError(
            400,
            "url_not_allowed",
            f"{host} resolves to an internal address ({bad[0]}); "
            "set TRIALBRIDGE_WEBHOOK_ALLOW_PRIVATE=true to allow it",
        )
    return Destination(host, tuple(addresses))


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse URLs that are not http(s), carry credentials, or reach internal addresses."""
    parsed = check_form(url)
    if not allow_private:
        destination(parsed, allow_private=False)


class _PinnedBackend(httpcore.NetworkBackend):
    """Dials the checked addresses of a host, never the name itself (which would resolve again)."""

    def __init__(self) -> None:
        self._network = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._pins: dict[str, tuple[str, ...]] = {}

    def pin(self, target: Destination) -> None:
        """Connections to this host go to these (checked) addresses from now on."""
        with self._lock:
            self._pins[target.host] = target.addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """The first of the host's checked addresses that answers within the connect timeout."""
        with self._lock:
            addresses = self._pins.get(host, ())
        if not addresses:
            raise httpcore.ConnectError(f"{host} was not checked before connecting")
        deadline = None if timeout is None else time.monotonic() + timeout
        failure: Exception = httpcore.ConnectTimeout(f"no address of {host} answered in time")
        for address in addresses:  # one timeout for all: the delivery's lease counts on it
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                return self._network.connect_tcp(address, port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    def sleep(self, seconds: float) -> None:
        """As the standard backend (httpcore's retries wait with it)."""
        self._network.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport, resolving and checking each request's host itself and dialing the
    addresses it checked. A connection kept alive from an earlier request of the same client
    goes to an address checked then. Environment proxies are not used: a proxy would resolve
    the name again."""

    def __init__(self, *, allow_private: bool, verify: ssl.SSLContext | bool = True) -> None:
        context = httpx.create_ssl_context(verify=verify)  # SSL_CERT_FILE / _DIR are honoured
        super().__init__(verify=context)
        self.allow_private = allow_private
        self._backend = _PinnedBackend()
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=self._backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Resolve once, refuse internal addresses (an ApiError), then send to what was checked."""
        self._backend.pin(destination(request.url, allow_private=self.allow_private))
        return super().handle_request(request)


def pinned_client(
    *, allow_private: bool, timeout: float, verify: ssl.SSLContext | bool = True
) -> httpx.Client:
    """An HTTP client whose every request goes only to the checked addresses of its host."""
    transport = PinnedTransport(allow_private=allow_private, verify=verify)
    return httpx.Client(transport=transport, timeout=timeout, trust_env=False)
