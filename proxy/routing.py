"""Which site serves a request: by Host (or an absolute-form target's authority), then longest path prefix."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Site

#: A DNS name (letters, digits, '-', '_' in non-empty labels) or a bracketed IPv6 literal: nothing else may
#: reach the `Location` and public origin the proxy writes.
_HOST = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*|\[[0-9a-f:.]+\]")


@dataclass(frozen=True)
class Target:
    """The parts of a request-target that routing and forwarding need, taken from the raw bytes."""

    host: str | None  # lower case, port and trailing dot removed; None when the client named none
    authority: str | None  # as the client wrote it (Host header or absolute-form), for public URLs
    path_qs: str  # origin-form, byte-for-byte as received


def split_authority(authority: str) -> str:
    """`Crm.Example.com:8443` -> `crm.example.com`; `[::1]:80` -> `[::1]`; "" when it is no authority.

    The authority ends up in the public URLs the proxy writes (Location), so a port must be digits.
    """
    host = authority.strip().lower()
    port = ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return ""
        host, port = host[: end + 1], host[end + 1 :]
        if port and not port.startswith(":"):
            return ""
        port = port[1:]
    elif ":" in host:
        host, port = host.rsplit(":", 1)
        if ":" in host:
            return ""
    host = host.rstrip(".")
    if (port and not port.isdigit()) or not _HOST.fullmatch(host):
        return ""
    return host


def parse_target(raw_target: str, host_header: str | None) -> Target:
    """Absolute-form names its own authority (RFC 9112 §3.2.2), which then overrides Host."""
    if raw_target[:7].lower() == "http://" or raw_target[:8].lower() == "https://":
        rest = raw_target.split("://", 1)[1]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, path_qs = rest[:cut], rest[cut:]
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        authority = authority.rsplit("@", 1)[-1]
        return Target(split_authority(authority) or None, authority or None, path_qs)
    if host_header is None or not host_header.strip():
        return Target(None, None, raw_target)
    return Target(split_authority(host_header) or None, host_header.strip(), raw_target)


class Router:
    """Host -> [(prefix, site)], longest prefix first; built once per configuration."""

    def __init__(self, sites: Iterable[Site]) -> None:
        self._table: dict[str, list[tuple[str, Site]]] = {}
        for site in sites:
            for host in site.hosts:
                self._table.setdefault(host, []).extend((p.lower(), site) for p in site.paths)
        for routes in self._table.values():
            routes.sort(key=lambda route: len(route[0]), reverse=True)

    def hosts(self) -> frozenset[str]:
        return frozenset(self._table)

    def _routes(self, host: str | None) -> list[tuple[str, Site]]:
        if not host:
            return []
        routes = self._table.get(host)
        if routes is None and "." in host:
            routes = self._table.get("*." + host.split(".", 1)[1])
        return routes or []

    def any_site(self, host: str | None) -> Site | None:
        """A site that serves `host` on some path: whose policy an answer about the host as a whole gets."""
        routes = self._routes(host)
        return routes[-1][1] if routes else None

    def match(self, host: str | None, path_qs: str) -> Site | None:
        routes = self._routes(host)
        path = path_qs.split("?", 1)[0].lower()
        for prefix, site in routes:
            # "/sdata/" also takes "/sdata", as IIS would for the application root
            if path.startswith(prefix) or (prefix.endswith("/") and path == prefix[:-1]):
                return site
        return None
