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
which tells upstream 1001 and closes that connection; a configuration reload swaps snapshots and
does not touch it; at shutdown it gets `shutdown_grace` like any request, then `Tunnels.going_away`
(from `ProxyService.stop`) ends it with close code 1001 both ways. Close frames of the proxy's own
are only sent at a frame boundary, which `FrameCursor` follows from the frame headers alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct

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
#: The close frame each side gets when the proxy ends a tunnel itself (shutdown, or the other side vanished).
GOING_AWAY = struct.pack("!H", 1001) + b"proxy closing the connection"
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


class FrameCursor:
    """Follows frame boundaries in one direction of a tunnel, reading headers only, never payloads.

    It lets the proxy add a close frame of its own without cutting a frame in two. A stream that
    is not well-formed WebSocket merely never looks like it is at a boundary.
    """

    __slots__ = ("_head", "_left")

    def __init__(self) -> None:
        self._head = bytearray()  # a frame header still arriving
        self._left = 0  # payload bytes of the current frame still to pass

    @property
    def at_boundary(self) -> bool:
        return not self._head and self._left == 0

    def _header_length(self) -> int | None:
        if len(self._head) < 2:
            return None
        size = self._head[1] & 0x7F
        return 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if self._head[1] & 0x80 else 0)

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._left:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                continue
            self._head.append(data[i])
            i += 1
            needed = self._header_length()
            if needed is None or len(self._head) < needed:
                continue
            size = self._head[1] & 0x7F
            if size == 126:
                size = struct.unpack_from("!H", self._head, 2)[0]
            elif size == 127:
                size = struct.unpack_from("!Q", self._head, 2)[0]
            self._head.clear()
            self._left = size


def close_frame(payload: bytes, *, masked: bool) -> bytes:
    """A final close frame; frames towards a server must be masked (RFC 6455 §5.3)."""
    if not masked:
        return bytes([0x88, len(payload)]) + payload
    key = os.urandom(4)
    return bytes([0x88, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


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


async def _pump(source: Tunnel | _ClientSide, sink: Tunnel | _ClientSide, cursor: FrameCursor) -> None:
    """Copy until the source ends or the sink is gone; then pass the end on as a half-close."""
    try:
        while data := await source.read():
            cursor.feed(data)
            await sink.write(data)
    except (ConnectionError, aiohttp.ClientConnectionError):
        return
    sink.write_eof()


class Tunnels:
    """The open tunnels of one running service: untouched by reloads, told to go away at shutdown."""

    def __init__(self) -> None:
        self._farewells: set[asyncio.Event] = set()

    def __len__(self) -> int:
        return len(self._farewells)

    def open(self) -> asyncio.Event:
        farewell = asyncio.Event()
        self._farewells.add(farewell)
        return farewell

    def closed(self, farewell: asyncio.Event) -> None:
        self._farewells.discard(farewell)

    def going_away(self) -> None:
        """Every open tunnel sends close code 1001 both ways and ends (ProxyService.stop, after the grace)."""
        for farewell in self._farewells:
            farewell.set()


async def tunnel(
    request: ProxyRequest, response: web.StreamResponse, answer: InboundResponse, tunnels: Tunnels
) -> web.StreamResponse:
    """Send upstream's 101 (through the policy hook), then relay bytes until either side is done."""
    response.headers["Connection"] = "Upgrade"
    response.headers["Upgrade"] = answer.headers.get("Upgrade", "websocket")
    response.force_close()  # the connection is the WebSocket's now; never back to keep-alive
    upstream = answer.tunnel()
    await response.prepare(request)
    client = _ClientSide(request, response)
    ends = _Ends(client, upstream)
    down = asyncio.ensure_future(_pump(upstream, client, ends.to_client))
    up = asyncio.ensure_future(_pump(client, upstream, ends.to_upstream))
    farewell = tunnels.open()
    told = asyncio.ensure_future(farewell.wait())
    try:
        await asyncio.wait((down, up, told), return_when=asyncio.FIRST_COMPLETED)
        if not down.done() and not told.done():  # the client finished first: upstream's close reply may follow
            await asyncio.wait((down, told), timeout=LINGER, return_when=asyncio.FIRST_COMPLETED)
        if told.done():
            await ends.going_away(down, up)
    except asyncio.CancelledError:  # the client vanished: upstream still hears 1001, not a bare reset
        await ends.going_away(down, up)
        raise
    finally:
        tunnels.closed(farewell)
        for task in (down, up, told):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(down, up, told, return_exceptions=True)
        upstream.close()
        client.close()
    return response


class _Ends:
    """Both sides of one tunnel, with where each direction's frames begin and end."""

    def __init__(self, client: _ClientSide, upstream: Tunnel) -> None:
        self.client, self.upstream = client, upstream
        self.to_client, self.to_upstream = FrameCursor(), FrameCursor()

    async def going_away(self, down: asyncio.Future[None], up: asyncio.Future[None]) -> None:
        """Stop relaying; end each side with close code 1001 where a frame boundary allows it."""
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
        for side, cursor, masked in ((self.client, self.to_client, False), (self.upstream, self.to_upstream, True)):
            if cursor.at_boundary:
                with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError, TimeoutError, RuntimeError):
                    await asyncio.wait_for(side.write(close_frame(GOING_AWAY, masked=masked)), 1)
