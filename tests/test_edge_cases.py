"""Edge cases found in review, each against a real listener: raw upstreams where the stand-in is too polite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from tests.conftest import PUBLIC_HOST, Proxy, StartProxy, Upstream, parse_raw, raw_request, site_toml

WS_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: crm.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


class RawUpstream:
    """A loopback server whose every answer is written by hand; `reply(head, state)` sees one request head."""

    def __init__(self, reply: Callable[[bytes, dict[str, str]], bytes]) -> None:
        self.reply = reply
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        state: dict[str, str] = {}  # per connection, as IIS keeps a Windows logon
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self.reply(head, state))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., asyncio.Future[tuple[RawUpstream, int]]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Callable[[bytes, dict[str, str]], bytes]) -> tuple[RawUpstream, int]:
        upstream = RawUpstream(reply)
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        servers.append(server)
        return upstream, server.sockets[0].getsockname()[1]

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def raw_site(port: int) -> dict[str, str]:
    return {"crm": f'hosts = ["{PUBLIC_HOST}"]\nupstream = "http://127.0.0.1:{port}"\n'}


def windows_auth(head: bytes, state: dict[str, str]) -> bytes:
    """IIS with NTLM: an `Authorization: NTLM` logs the *connection* on, later requests on it need none."""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"authorization: ntlm "):
            state["user"] = line[20:].decode()
    body = f"hello {state.get('user', 'anonymous')}".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def keep_alive_get(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, extra: bytes = b"") -> bytes:
    writer.write(b"GET /crm/ HTTP/1.1\r\nHost: crm.example.com\r\n" + extra + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(parse_raw(head).get_all("Content-Length")[0])
    return await reader.readexactly(length)


async def test_windows_logon_stays_with_its_client_connection(raw_upstream, start_proxy: StartProxy) -> None:  # type: ignore[no-untyped-def]
    iis, port = await raw_upstream(windows_auth)
    proxy = await start_proxy(raw_site(port))
    alice_reader, alice = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await keep_alive_get(alice, alice_reader, b"Authorization: NTLM alice\r\n") == b"hello alice"
    assert await keep_alive_get(alice, alice_reader) == b"hello alice"  # her connection stays logged on
    for _ in range(3):  # nobody else is ever served on her upstream connection
        bob_reader, bob = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await keep_alive_get(bob, bob_reader) == b"hello anonymous"
        bob.close()
    alice.close()


async def test_101_with_content_length_still_tunnels(raw_upstream, start_proxy: StartProxy) -> None:  # type: ignore[no-untyped-def]
    def switch(head: bytes, state: dict[str, str]) -> bytes:
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nContent-Length: 0\r\n\r\n\x81\x05hello"
        )

    _, port = await raw_upstream(switch)
    proxy = await start_proxy(raw_site(port))
    response = await raw_request(proxy.port, WS_UPGRADE, timeout=2)
    assert response.status_line == "HTTP/1.1 101 Switching Protocols"
    assert response.get_all("Content-Length") == []
    assert response.body == b"\x81\x05hello"


async def test_no_content_type_is_invented(raw_upstream, start_proxy: StartProxy) -> None:  # type: ignore[no-untyped-def]
    _, port = await raw_upstream(lambda head, state: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    proxy = await start_proxy(raw_site(port))
    response = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    assert response.body == b"hello"
    assert response.get_all("Content-Type") == []
    assert response.get_all("X-Content-Type-Options") == ["nosniff"]


async def test_header_bytes_that_are_not_utf8_are_kept_as_characters(raw_upstream, start_proxy: StartProxy) -> None:  # type: ignore[no-untyped-def]
    _, port = await raw_upstream(
        lambda head, state: (
            b'HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename="caf\xe9.pdf"\r\n'
            b"Location: /docs/caf\xe9.pdf\r\nContent-Length: 0\r\n\r\n"
        )
    )
    proxy = await start_proxy(raw_site(port))
    response = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    assert 'attachment; filename="caf\xc3\xa9.pdf"' in response.get_all("Content-Disposition")  # é, as UTF-8
    assert response.get_all("Location") == ["/docs/caf%E9.pdf"]


async def test_malformed_chunk_mid_upload_is_refused_at_once(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: crm.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(b"zz\r\nbroken\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)  # not client_body's 60 s
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"X-Content-Type-Options: nosniff" in answer
    assert all(r.raw_path != "/upload" for r in upstream.recorded)  # no complete upload reached IIS


async def test_pipelined_head_split_across_reads(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /echo/1 HTTP/1.1\r\nHost: crm.example.com\r\n\r\nGET /echo/2 HTTP/1.1\r\nHo")
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.write(b"st: crm.example.com\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2, answer
    assert [r.raw_path for r in upstream.recorded[-2:]] == ["/echo/1", "/echo/2"]


@pytest.mark.parametrize("host", ["evil?.example.com", "evil#.example.com", 'a"<b.example.com', ".example.com"])
async def test_wildcard_hosts_take_only_host_names(upstream: Upstream, start_proxy: StartProxy, host: str) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, hosts='["*.example.com"]')})
    request = f"GET /crm/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    response = await raw_request(proxy.port, request)
    assert response.status == 400
    assert response.get_all("Location") == []


async def test_every_refresh_header_is_rewritten(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, "preserve_host = false\n")})
    url = f"http://127.0.0.1:{upstream.port}/crm/x"
    path = f"/headers?h=Refresh:5&h=Refresh:0;%20url={url}"
    request = f"GET {path} HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n".encode()
    response = await raw_request(proxy.port, request)
    assert response.get_all("Refresh") == ["5", "0; url=http://crm.example.com/crm/x"]


async def test_underscored_forwarding_headers_never_reach_iis(proxy: Proxy, upstream: Upstream) -> None:
    request = (
        b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\nX_Forwarded_For: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\n"
        b"X_Custom: kept\r\nConnection: close\r\n\r\n"
    )
    await raw_request(proxy.port, request)
    seen = upstream.recorded[-1]
    assert seen.header("X_Forwarded_For") == [] and seen.header("x_real_ip") == []
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X_Custom") == ["kept"]


async def test_open_websockets_are_counted(proxy: Proxy) -> None:
    gauge = proxy.service.metrics.websockets
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{proxy.url}/ws/echo", headers={"Host": PUBLIC_HOST}) as ws,
    ):
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
        assert gauge.get("crm") == 1
    for _ in range(50):
        if gauge.get("crm") == 0:
            break
        await asyncio.sleep(0.05)
    assert gauge.get("crm") == 0
