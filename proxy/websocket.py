"""WebSocket upgrades: checked against the site's origin allow-list, then tunnelled as raw bytes.

After upstream's `101 Switching Protocols` the proxy relays the bytes of both directions
untouched, so every frame type, extension (permessage-deflate), subprotocol, ping/pong and close
code passes exactly as the two ends negotiated it; nothing is decoded or re-framed. The 101 itself
is an ordinary `StreamResponse` prepared on the request, so the header policy is applied to it at
the same single place as to every other response.

Flow control both ways: each direction reads from an aiohttp `StreamReader` (which pauses its
socket past 2 x 64 KiB) and writes through a writer that waits while the other side is not
reading, so a stalled peer stops the proxy reading from the other one.

A tunnel lives in its request handler: a client that goes away cancels it (handler_cancellation),
which closes the upstream connection; a configuration reload swaps snapshots and does not touch it;
shutdown waits `shutdown_grace` for it, then cancels it like any request still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from .protocol import ProxyRequest
from .upstream import CHUNK, InboundResponse, RawFeed, Tunnel, read_raw

#: Request headers that make the upgrade; hop-by-hop, so the forwarder drops and we re-add them.
UPGRADE_HEADERS = (("Connection", "Upgrade"), ("Upgrade", "websocket"))
#: How long one direction may go on after the other has ended (a close reply on its way).
LINGER = 5.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


def asks_upgrade(request: web.BaseRequest) -> bool:
    """Any upgrade request: aiohttp's parser stops parsing the connection after one."""
    tokens = {t.strip().lower() for v in request.headers.getall("Connection", ()) for t in v.split(",")}
    return "upgrade" in tokens and "Upgrade" in request.headers


def is_upgrade(request: web.BaseRequest) -> bool:
    """A WebSocket opening handshake (RFC 6455 §4.1), the only upgrade this proxy passes."""
    return (
        request.method == "GET"
        and request.version >= (1, 1)
        and asks_upgrade(request)
        and request.headers.get("Upgrade", "").strip().lower() == "websocket"
    )


def normal_origin(origin: str) -> str | None:
    """`HTTPS://CRM.example.com:443` -> `https://crm.example.com`; None for anything else ("null")."""
    try:
        url = URL(origin.strip())
    except ValueError:
        return None
    if url.scheme not in _DEFAULT_PORTS or not url.host or url.path not in ("", "/") or url.query_string:
        return None
    port = "" if url.explicit_port in (None, _DEFAULT_PORTS[url.scheme]) else f":{url.explicit_port}"
    return f"{url.scheme}://{url.host.lower()}{port}"


def origin_allowed(allowed: tuple[str, ...], headers: CIMultiDictProxy[str]) -> bool:
    """No allow-list: any origin. Otherwise exactly one Origin header, and it is on the list.

    A missing Origin is refused too: browsers always send one on a WebSocket handshake, and the
    allow-list is there to say which pages may open one.
    """
    if not allowed:
        return True
    origins = headers.getall("Origin", [])
    if len(origins) != 1:
        return False
    origin = normal_origin(origins[0])
    return origin is not None and origin in {normal_origin(a) for a in allowed}


class _ClientSide:
    """The client's connection after our 101: raw bytes in through the protocol, out through the response."""

    def __init__(self, request: ProxyRequest, response: web.StreamResponse) -> None:
        self._request, self._response = request, response
        self._reader = aiohttp.StreamReader(request.protocol, CHUNK, loop=asyncio.get_running_loop())
        request.protocol.set_parser(RawFeed(self._reader))  # type: ignore[arg-type]

    async def read(self) -> bytes:
        return await read_raw(self._reader)

    async def write(self, data: bytes) -> None:
        await self._response.write(data)

    def write_eof(self) -> None:
        transport = self._request.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.close()


async def _pump(source: Tunnel | _ClientSide, sink: Tunnel | _ClientSide) -> None:
    """Copy until the source ends or the sink is gone; then pass the end on as a half-close."""
    try:
        while data := await source.read():
            await sink.write(data)
    except (ConnectionError, aiohttp.ClientConnectionError):
        return
    sink.write_eof()


async def tunnel(request: ProxyRequest, response: web.StreamResponse, answer: InboundResponse) -> web.StreamResponse:
    """Send upstream's 101 (through the policy hook), then relay bytes until either side is done."""
    response.headers["Connection"] = "Upgrade"
    response.headers["Upgrade"] = answer.headers.get("Upgrade", "websocket")
    response.force_close()  # the connection is the WebSocket's now; never back to keep-alive
    upstream = answer.tunnel()
    await response.prepare(request)
    client = _ClientSide(request, response)
    down = asyncio.ensure_future(_pump(upstream, client))
    up = asyncio.ensure_future(_pump(client, upstream))
    try:
        await asyncio.wait((down, up), return_when=asyncio.FIRST_COMPLETED)
        if not down.done():  # the client finished first: give upstream's close reply time to come back
            await asyncio.wait((down,), timeout=LINGER)
    finally:
        for task in (down, up):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(down, up, return_exceptions=True)
        upstream.close()
        client.close()
    return response
