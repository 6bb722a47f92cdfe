"""Which addresses the scraper may connect to: public ones, the configured servers, allow_hosts.

A status names its media by URL, and a server answers with redirects: either could point the
scraper at 127.0.0.1:6379, 10.0.0.1 or 169.254.169.254. The check is made on the address the
socket actually connected to (after DNS resolution, for every connection, so for every redirect
too): an address that is not public is refused unless the URL's host:port is one of the
configured servers (the tests' and the demo's servers are on 127.0.0.1) or is named in
``scrape.allow_hosts`` (``host`` for any port, or ``host:port``).
"""
from __future__ import annotations

import ipaddress
import urllib.parse

DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressRefused(Exception):
    """Connecting there is not allowed; str() says why. (Not an OSError, so that neither
    urllib3 nor requests takes it for a network failure worth a retry.)"""


def host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)


def _entry(text: str) -> tuple[str, int | None]:
    """'cdn.example' -> ('cdn.example', None); 'cdn.example:8080' or '[::1]:8080' -> with port."""
    parts = urllib.parse.urlsplit("//" + text.strip())
    return (parts.hostname or "").lower(), parts.port


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class AddressPolicy:
    def __init__(self, servers=(), allow_hosts=()):
        self.origins = {host_port(s) for s in servers}
        self.allowed = {_entry(h) for h in allow_hosts}

    def check(self, host: str, port: int, address: str) -> None:
        """Raise AddressRefused unless a connection to ``host:port`` that reached ``address``
        is allowed."""
        host = host.lower().strip("[]")
        if (host, port) in self.origins or (host, None) in self.allowed or (
                (host, port) in self.allowed):
            return
        if not is_public(address):
            raise AddressRefused(f"{host}:{port} is at {address}, not a public address "
                                 "(only the configured servers and scrape.allow_hosts may be)")
