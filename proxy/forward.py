"""The proxying handler: route, then pass the request upstream and the answer back, both streamed.

What goes upstream is the client's request minus hop-by-hop headers, re-framed by aiohttp, with
X-Forwarded-* set by us. What comes back is upstream's answer, minus hop-by-hop headers; the header
policy is applied by the request type when the response is prepared (see `protocol`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from . import redact
from .config import Config, Network, Site
from .observe import routed, websocket_open
from .policy import ResponseContext
from .protocol import ProxyRequest, own_response
from .routing import Router, Target, parse_target
from .upstream import OutboundRequest, Transport, UpstreamError
from .websocket import UPGRADE_HEADERS, Tunnels, asks_upgrade, is_upgrade, origin_allowed, tunnel

log = logging.getLogger("crm_proxy")

#: RFC 9110 §7.6.1 plus the non-standard ones still seen in the wild.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "proxy-authenticate", "proxy-authorization"}
)  # fmt: skip
#: Client-supplied forwarding claims; replaced unless the peer is a trusted proxy.
FORWARDING = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-server",
     "x-forwarded-prefix", "x-real-ip", "forwarded"}
)  # fmt: skip
_CONNECTION_AUTH = re.compile(r"\s*(ntlm|negotiate)(\s|$)", re.I)
_SURROGATE = re.compile("[\udc80-\udcff]")
_URL_HEADERS = frozenset({"location", "content-location", "refresh"})
#: Framing the proxy redoes itself on each side.
REFRAMED = frozenset({"content-length", "expect"})


@dataclass(frozen=True)
class Snapshot:
    """One loaded configuration, as the handler uses it; swapped whole on reload."""

    config: Config
    router: Router
    trusted: tuple[Network, ...]
    transport: Transport  # shared by every snapshot, so reloads keep the upstream pool warm
    tunnels: Tunnels = field(default_factory=Tunnels)  # shared too: open WebSockets outlive a reload

    @classmethod
    def of(cls, config: Config, transport: Transport, tunnels: Tunnels | None = None) -> Snapshot:
        return cls(
            config,
            Router(config.sites),
            config.proxy.trusted_proxies,
            transport,
            Tunnels() if tunnels is None else tunnels,
        )

    def is_trusted(self, remote: str | None) -> bool:
        if not self.trusted or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)


def dropped_names(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Hop-by-hop names, including every one the `Connection` header lists."""
    listed = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    return HOP_BY_HOP | listed if listed else HOP_BY_HOP


def copy_end_to_end(headers: CIMultiDictProxy[str], also_drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Every end-to-end field line, in order, duplicates kept.

    Repeats take the first line's spelling of the name: aiohttp's client merges request headers
    by exact-case name and would drop `x-custom` after `X-Custom` otherwise.
    """
    drop = dropped_names(headers) | frozenset(also_drop)
    spelling: dict[str, str] = {}
    return CIMultiDict(
        (spelling.setdefault(k.lower(), k), v if v.isascii() else writable(k, v))
        for k, v in headers.items()
        if k.lower() not in drop
    )


def writable(name: str, value: str) -> str:
    """A value whose bytes were not UTF-8 (aiohttp keeps them as surrogates, and its writer drops those).

    ISAPI pages may send Windows-1252 (`filename="caf\xe9.pdf"`): the characters are kept, read as
    Latin-1. In URL headers the bytes are percent-encoded instead, which is what a browser sends for them.
    """
    if not _SURROGATE.search(value):
        return value
    raw = value.encode("utf-8", "surrogateescape")
    if name.lower() in _URL_HEADERS:
        return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)
    return raw.decode("latin-1")


def upstream_headers(request: ProxyRequest, site: Site, target: Target, trusted: bool, scheme: str) -> CIMultiDict[str]:
    headers = copy_end_to_end(request.headers, REFRAMED | ({"host"} | (set() if trusted else FORWARDING)))
    for name in [n for n in headers if "_" in n and n.lower().replace("_", "-") in FORWARDING]:
        del headers[name]  # IIS reads X_Forwarded_For as X-Forwarded-For (both are HTTP_X_FORWARDED_FOR)
    if request.content_length is not None and request.headers.get("Transfer-Encoding") is None:
        headers["Content-Length"] = str(request.content_length)
    if site.preserve_host and target.authority:
        headers["Host"] = target.authority
    remote = request.remote or ""
    prior = headers.popall("X-Forwarded-For", []) if trusted else []
    headers["X-Forwarded-For"] = ", ".join([*prior, remote]) if prior else remote
    headers.setdefault("X-Forwarded-Proto", scheme)
    if target.authority:
        headers.setdefault("X-Forwarded-Host", target.authority)
    return headers


def effective_scheme(request: ProxyRequest, trusted: bool) -> str:
    if request.secure:
        return "https"
    claimed = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() if trusted else ""
    return "https" if claimed == "https" else "http"


def refuse(request: ProxyRequest, status: int, detail: str) -> web.Response:
    target = redact.target(request.raw_path, 200)
    log.info("refused %s %s from %s: %d %s", redact.escape(request.method), target, request.remote, status, detail)
    response = own_response(status, detail)
    response.force_close()  # a refused connection is not reused: 421 means "not on this connection"
    return response


class ClientBody:
    """The client's request body, passed upstream as it arrives, within two limits.

    `limits.max_body_bytes`: a declared length is checked before the upstream is contacted, but a
    chunked one can only be counted on the way. `timeouts.client_body`: a client that stops sending
    mid-body (slow-POST) would otherwise hold an upstream connection open indefinitely. Either
    way the upload is aborted mid-body, so the upstream sees a broken request and never a complete
    one, and the client gets 413 or 408 if nothing was answered yet.
    """

    def __init__(self, content: web.StreamReader, limit: int, idle: float) -> None:
        self.content, self.limit, self.idle = content, limit, idle
        self.seen, self.exceeded, self.stalled, self.broken = 0, False, False, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self.idle or None):
                    chunk = await self.content.readany()
            except TimeoutError:
                self.stalled = True
                raise BodyRefused("client stopped sending the request body") from None
            except (BadHttpMessage, ConnectionError) as exc:  # a malformed chunk, or the client went away
                self.broken = True
                raise BodyRefused(f"request body unusable: {exc}") from None
            if not chunk:
                return
            self.seen += len(chunk)
            if self.limit and self.seen > self.limit:
                self.exceeded = True
                raise BodyRefused(f"request body over {self.limit} bytes")
            yield chunk


class BodyRefused(Exception):
    """Raised inside the upload to the upstream to abort it."""


def body_of(request: ProxyRequest, limit: int = 0, idle: float = 0) -> ClientBody | None:
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if chunked or (request.content_length or 0) > 0:
        return ClientBody(request.content, limit if chunked else 0, idle)
    return None


def transport_for(request: ProxyRequest, shared: Transport) -> Transport:
    """The shared pool, or this client connection's own upstream connection once it uses Windows auth.

    IIS's NTLM and Negotiate authentication (Sage CRM's auto logon) authenticates the TCP connection,
    not the request: a pooled upstream connection that one user logged in on would serve the next
    client as that user. From the first such `Authorization` on, the client connection keeps an
    upstream connection of its own, closed with it (as HAProxy does).
    """
    protocol = request.protocol
    pinned: Transport | None = getattr(protocol, "pinned_upstream", None)
    if pinned is None and _CONNECTION_AUTH.match(request.headers.get("Authorization", "")):
        pinned = protocol.pinned_upstream = shared.dedicated()  # type: ignore[attr-defined]
    return pinned or shared


def checked_target(request: ProxyRequest) -> Target | web.Response:
    """What every listener checks before it looks for a site: the refusal, or a target naming a host."""
    if request.method == "CONNECT":
        return refuse(request, 405, "CONNECT is not supported: this is a reverse proxy, not a forward proxy.")
    target = parse_target(request.raw_path, request.headers.get("Host"))
    if target.host is None:
        if request.version >= (1, 1) or target.authority:
            return refuse(request, 400, "The request names no valid host.")
        return refuse(request, 421, "This proxy serves no site for this host.")
    if not target.path_qs.startswith("/"):
        return refuse(request, 400, "The request target must be a path.")
    return target


async def handle(request: ProxyRequest) -> web.StreamResponse:
    """Route and forward one request; every early return is a refusal the policy still decorates."""
    snapshot: Snapshot = request.context
    target = checked_target(request)
    if isinstance(target, web.Response):
        return target
    site = snapshot.router.match(target.host, target.path_qs)
    if site is None:
        return refuse(request, 421, "This proxy serves no site for this host.")
    routed(site)  # labels this request's metrics and access-log line
    trusted = snapshot.is_trusted(request.remote)
    scheme = effective_scheme(request, trusted)
    request.policy = site.policy
    request.policy_context = ResponseContext(
        https=scheme == "https",
        public_origin=f"{scheme}://{target.authority}" if target.authority else None,
        upstream_hosts=frozenset((site.upstream_host, target.host)),
    )
    upgrade = is_upgrade(request)
    if upgrade and not origin_allowed(site.websocket_origins, request.headers):
        return refuse(request, 403, "This site does not accept WebSocket connections from this page's origin.")
    limit = snapshot.config.proxy.limits.max_body_bytes
    if limit and (request.content_length or 0) > limit:
        return refuse(request, 413, f"The request body is larger than the {limit} bytes this site accepts.")
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = body_of(request, limit, snapshot.config.proxy.timeouts.client_body)
    headers = upstream_headers(request, site, target, trusted, scheme)
    if upgrade:
        headers.extend(UPGRADE_HEADERS)
    outbound = OutboundRequest(
        method=request.method,
        url=URL(site.upstream_origin + target.path_qs, encoded=True),
        headers=headers,
        body=body,  # type: ignore[arg-type]
        ssl=site.upstream_ssl,
        server_hostname=site.upstream_tls.server_name or None,
    )
    try:
        async with transport_for(request, snapshot.transport).send(outbound) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            response.headers.extend(copy_end_to_end(answer.headers, ("content-length",)))
            length = answer.headers.get("Content-Length")
            bodiless = answer.status < 200 or answer.status in (204, 304)
            if length is not None and length.isdigit() and "Transfer-Encoding" not in answer.headers and not bodiless:
                response.content_length = int(length)
            request.keep_content_type = "Content-Type" in answer.headers  # aiohttp would invent one otherwise
            if answer.status == 101:
                if upgrade:
                    with websocket_open(site.name):
                        return await tunnel(request, response, answer, snapshot.tunnels)
                return own_response(502, "The upstream server switched protocols without being asked to.")
            if asks_upgrade(request):
                response.force_close()  # the parser stopped at the upgrade: this connection cannot go on
            await response.prepare(request)
            try:
                async for chunk in answer.chunks():
                    await response.write(chunk)
            except UpstreamError as exc:
                log.warning("%s %s: %s; response cut short", site.name, exc.kind, redact.text(exc.detail))
                request.protocol.force_close()  # the client must see a truncated body, not a clean end
                return response
            except ConnectionError:
                return response  # client went away; leaving the block drops the upstream connection
            await response.write_eof()
            return response
    except UpstreamError as exc:
        if body is not None and body.broken:
            return refuse(request, 400, "The request body was malformed or cut short.")
        if body is not None and body.exceeded:
            return refuse(request, 413, f"The request body is larger than the {limit} bytes this site accepts.")
        if body is not None and body.stalled:
            request.content.feed_eof()  # no lingering read of a body that has stopped coming
            return refuse(request, 408, "The request body did not arrive in time.")
        log.warning(
            "%s: %s %s -> %d (%s: %s)",
            site.name,
            redact.escape(request.method),
            redact.target(target.path_qs, 200),
            exc.status,
            exc.kind,
            redact.text(exc.detail),
        )
        detail = (
            "The upstream server did not answer in time."
            if exc.status == 504
            else "The upstream server could not be reached."
        )
        return own_response(exc.status, detail)
