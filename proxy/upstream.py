"""The transport to the upstream: send one request, stream its answer back.

Everything the forwarding handler needs from a transport is `Transport.send`; the aiohttp client
below is one implementation, configured so that it adds, decodes and follows nothing on its own.
A faster transport can replace it without touching routing, policy or configuration.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.http import StreamWriter
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

#: Headers aiohttp's client would add by itself; a proxy sends only what the client sent.
SKIPPED_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
CHUNK = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be used; `status` is what the client gets (502 or 504)."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


@dataclass(frozen=True)
class OutboundRequest:
    method: str
    url: URL  # already encoded, byte-for-byte the client's path and query
    headers: CIMultiDict[str]
    body: aiohttp.StreamReader | None
    ssl: ssl.SSLContext | bool = True
    server_hostname: str | None = None


class Tunnel(Protocol):
    """The raw byte stream of an upgraded (101) connection, both ways, with flow control."""

    async def read(self) -> bytes: ...  # b"" at the end

    async def write(self, data: bytes) -> None: ...  # waits while the peer is not reading

    def write_eof(self) -> None: ...  # half-close where the transport can

    def close(self) -> None: ...


class InboundResponse(Protocol):
    status: int
    reason: str | None
    headers: CIMultiDictProxy[str]

    def chunks(self) -> AsyncIterator[bytes]: ...

    def tunnel(self) -> Tunnel: ...  # only after a 101 to an upgrade request


class Transport(Protocol):
    def send(self, request: OutboundRequest) -> AbstractAsyncContextManager[InboundResponse]: ...

    def dedicated(self) -> Transport:
        """A transport of its own for one client connection (connection-bound upstream authentication)."""
        ...

    async def close(self) -> None: ...


class RawFeed:
    """The parser aiohttp's protocols hand bytes to after an upgrade: passes them on untouched.

    Feeding an aiohttp `StreamReader` gives flow control for free: past twice its limit it
    pauses the transport, and reading it below the limit resumes it.
    """

    __slots__ = ("_reader",)

    def __init__(self, reader: aiohttp.StreamReader) -> None:
        self._reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._reader.feed_data(data)
        return False, b""  # never "protocol error", never a tail

    def feed_eof(self) -> None:
        self._reader.feed_eof()


async def read_raw(reader: aiohttp.StreamReader) -> bytes:
    """The next bytes of an upgraded stream; b"" once the peer has gone, however it went."""
    try:
        return await reader.readany()
    except (aiohttp.ClientError, OSError):
        return b""


class _AiohttpTunnel:
    __slots__ = ("_response", "_reader", "_writer", "_transport")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        connection = response.connection
        assert connection is not None and connection.protocol is not None and connection.transport is not None
        protocol, loop = connection.protocol, asyncio.get_running_loop()
        protocol.read_timeout = None  # an idle WebSocket is normal; sock_read would cut it
        self._response, self._transport = response, connection.transport
        self._reader = aiohttp.StreamReader(protocol, CHUNK, loop=loop)
        self._writer = StreamWriter(protocol, loop)
        protocol.set_parser(RawFeed(self._reader), self._reader)

    async def read(self) -> bytes:
        return await read_raw(self._reader)

    async def write(self, data: bytes) -> None:
        await self._writer.write(data)

    def write_eof(self) -> None:
        if not self._transport.is_closing() and self._transport.can_write_eof():
            self._transport.write_eof()

    def close(self) -> None:
        self._response.close()


class _AiohttpResponse:
    __slots__ = ("_response", "status", "reason", "headers")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status, self.reason, self.headers = response.status, response.reason, response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except TimeoutError as exc:
                raise UpstreamError(504, "timeout", "upstream stopped sending the body") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(502, "protocol", f"upstream body failed: {exc!r}") from exc
            if not chunk:  # a body cut short raises ClientPayloadError above, so this is the real end
                return
            yield chunk

    def tunnel(self) -> Tunnel:
        assert self.status == 101, "only an upgraded connection is a tunnel"
        return _AiohttpTunnel(self._response)


def classify(exc: BaseException) -> UpstreamError:
    """Name what went wrong in the words an operator searches the log for."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return UpstreamError(502, "tls", f"TLS to upstream failed: {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamError(504, "timeout", "no connection to upstream within timeouts.upstream_connect")
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(504, "timeout", "no answer from upstream within timeouts.upstream_read")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "refused", f"cannot connect to upstream: {exc.os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(502, "protocol", "upstream closed the connection without answering")
    return UpstreamError(502, "protocol", f"upstream failed: {exc!r}")


class AiohttpTransport:
    """One pooled, keep-alive `ClientSession` for all sites; create it inside the running loop."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, per_host: int = 0) -> None:
        self._timeouts = (connect_timeout, read_timeout)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=per_host, ttl_dns_cache=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=SKIPPED_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            read_bufsize=CHUNK,
        )

    @asynccontextmanager
    async def send(self, request: OutboundRequest) -> AsyncIterator[InboundResponse]:
        try:
            response = await self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                ssl=request.ssl,
                server_hostname=request.server_hostname,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise classify(exc) from exc
        try:
            yield _AiohttpResponse(response)
        finally:
            if response.status == 101:
                response.close()  # an upgraded connection never goes back to the pool
            elif response.content.is_eof():
                response.release()  # body read to the end: the connection goes back to the pool
            else:
                response.close()  # abandoned mid-body: never reuse a connection in an unknown state

    def dedicated(self) -> AiohttpTransport:
        """One upstream connection per upstream host, never shared with another client connection."""
        connect, read = self._timeouts
        return AiohttpTransport(connect_timeout=connect, read_timeout=read, per_host=1)

    async def close(self) -> None:
        await self._session.close()
