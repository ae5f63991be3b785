"""WebSocket upgrades through the proxy, in front of the stand-in's /ws/echo, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from proxy.standin import WS_CLOSED, make_app, pattern_bytes
from proxy.websocket import FrameCursor, close_frame, normal_origin
from tests.conftest import PUBLIC_HOST, Proxy, StartProxy, Upstream, parse_raw, raw_request, site_toml
from tests.test_streams import eventually, open_connections

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key; its accept value is known


def handshake(path: str = "/ws/echo", *extra: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {PUBLIC_HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final frame as a client must send it."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def test_101_carries_the_policy_and_frames_pass_byte_for_byte(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(handshake())
        head = parse_raw(await read_head(reader))
        assert head.status_line == "HTTP/1.1 101 Switching Protocols"
        accept = base64.b64encode(hashlib.sha1(KEY.encode() + WS_GUID).digest()).decode()
        assert head.get_all("Sec-WebSocket-Accept") == [accept]
        assert head.get_all("Upgrade") == ["websocket"]
        assert head.get_all("Connection") == ["Upgrade"]
        assert head.get_all("X-Frame-Options") == ["SAMEORIGIN"]
        assert head.get_all("X-Content-Type-Options") == ["nosniff"]
        assert head.get_all("X-XSS-Protection") == ["1; mode=block"]
        assert head.get_all("Server") == [] and head.get_all("X-Powered-By") == []
        assert head.get_all("Content-Length") == [] and head.get_all("Transfer-Encoding") == []
        writer.write(client_frame(0x1, b"hello CRM"))
        assert await asyncio.wait_for(reader.readexactly(11), 5) == b"\x81\x09hello CRM"  # server frames: unmasked
        writer.write(client_frame(0x9, b"are you there"))  # ping
        assert await asyncio.wait_for(reader.readexactly(15), 5) == b"\x8a\x0dare you there"  # pong
        writer.write(client_frame(0x8, struct.pack("!H", 1000)))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x88\x02\x03\xe8"  # close echoed
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the connection ends
    finally:
        writer.close()
    (seen,) = [r for r in upstream.recorded if r.raw_path == "/ws/echo"]
    assert seen.header("Sec-WebSocket-Key") == [KEY]
    assert seen.header("Upgrade") == ["websocket"] and seen.header("Connection") == ["Upgrade"]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]


async def test_text_and_one_mebibyte_binary_echo(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    big = pattern_bytes(7, 1024 * 1024)
    async with client.ws_connect(f"{proxy.url}/ws/echo", max_msg_size=0) as ws:
        await ws.send_str("Grüße from the dashboard")
        assert (await ws.receive(5)).data == "Grüße from the dashboard"
        await ws.send_bytes(big)
        message = await ws.receive(10)
        assert message.type == aiohttp.WSMsgType.BINARY and message.data == big
        for i in range(20):  # many small frames in a row keep their order
            await ws.send_str(f"n{i}")
        assert [(await ws.receive(5)).data for _ in range(20)] == [f"n{i}" for i in range(20)]


async def test_subprotocol_and_extension_are_negotiated_end_to_end(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(f"{proxy.url}/ws/echo", protocols=("crm.v1", "other"), compress=15) as ws:
        assert ws.protocol == "crm.v1"
        assert ws.compress == 15  # permessage-deflate, agreed by the two ends, compressed frames tunnelled
        text = "compressible " * 2000
        await ws.send_str(text)
        assert (await ws.receive(5)).data == text
    async with client.ws_connect(f"{proxy.url}/ws/echo", protocols=("unknown",), compress=0) as ws:
        assert ws.protocol is None and ws.compress == 0


@pytest.mark.parametrize(("code", "reason"), [(1000, "done"), (4001, "session expired"), (1008, "")])
async def test_close_codes_and_reasons_pass_through(
    proxy: Proxy, client: aiohttp.ClientSession, code: int, reason: str
) -> None:
    async with client.ws_connect(f"{proxy.url}/ws/echo") as ws:
        await ws.send_str(f"close:{code}:{reason}")
        message = await ws.receive(5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert (message.data, message.extra) == (code, reason)
    assert ws.close_code == code


async def test_ping_pong_with_payload(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(f"{proxy.url}/ws/echo", autoping=False) as ws:
        await ws.ping(b"keepalive 1")
        message = await ws.receive(5)
        assert message.type == aiohttp.WSMsgType.PONG and message.data == b"keepalive 1"


async def test_origin_allow_list(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        {"crm": site_toml(upstream, 'websocket_origins = ["https://crm.example.com", "http://localhost:8080"]\n')}
    )
    for origin in ("https://crm.example.com", "HTTPS://CRM.EXAMPLE.COM:443", "http://localhost:8080"):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(handshake("/ws/echo", f"Origin: {origin}"))
        assert (await read_head(reader)).startswith(b"HTTP/1.1 101 "), origin
        writer.close()
    before = len(upstream.recorded)
    for extra in (
        ("Origin: https://evil.example",),
        ("Origin: https://crm.example.com.evil.example",),
        ("Origin: http://crm.example.com",),  # another scheme is another origin
        ("Origin: null",),
        (),  # no Origin at all
        ("Origin: https://crm.example.com", "Origin: https://evil.example"),
    ):
        answer = await raw_request(proxy.port, handshake("/ws/echo", *extra))
        assert answer.status == 403, extra
        assert answer.get_all("X-Frame-Options") == ["SAMEORIGIN"]
        assert answer.get_all("X-Content-Type-Options") == ["nosniff"]
        assert answer.get_all("Connection") == ["close"]
        assert b"origin" in answer.body
    assert len(upstream.recorded) == before  # refused before the upstream is contacted


async def test_upgrade_refused_by_upstream_is_relayed_and_closes(proxy: Proxy) -> None:
    answer = await raw_request(proxy.port, handshake("/status/403"))
    assert answer.status == 403
    assert answer.get_all("Connection") == ["close"]
    assert answer.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    assert b"permission" in answer.body


async def test_websocket_survives_a_reload(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(f"{proxy.url}/ws/echo") as ws:
        await ws.send_str("before")
        assert (await ws.receive(5)).data == "before"
        assert proxy.service.reload()
        await ws.send_str("after")
        assert (await ws.receive(5)).data == "after"
        async with client.ws_connect(f"{proxy.url}/ws/echo") as second:  # new ones open under the new snapshot
            await second.send_str("new")
            assert (await second.receive(5)).data == "new"


async def test_shutdown_closes_open_websockets_after_the_grace(
    upstream: Upstream, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy_toml = "[listen]\nhttps = []\nhttp = []\nplain = ['127.0.0.1:0']\n[timeouts]\nshutdown_grace = 0.3\n"
    proxy = await start_proxy({"crm": site_toml(upstream)}, proxy_toml)
    async with client.ws_connect(f"{proxy.url}/ws/echo") as ws:
        await ws.send_str("hi")
        assert (await ws.receive(5)).data == "hi"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(proxy.service.stop(), 5)
        assert loop.time() - started >= 0.3  # the grace was given (a lower bound only: no timing upper bound)
        message = await ws.receive(5)
        assert (message.type, message.data, message.extra) == (
            aiohttp.WSMsgType.CLOSE,
            1001,
            "proxy closing the connection",
        )
    assert await eventually(lambda: upstream.runner.app[WS_CLOSED] == [1001])  # upstream heard it too
    assert await eventually(lambda: not open_connections(upstream.runner))


async def test_client_vanishing_releases_the_upstream_connection(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(handshake())
    await read_head(reader)
    writer.write(client_frame(0x1, b"x"))
    await asyncio.wait_for(reader.readexactly(3), 5)
    assert open_connections(upstream.runner) == 1
    writer.transport.abort()  # no close frame, no FIN handshake: just gone
    assert await eventually(lambda: upstream.runner.app[WS_CLOSED] == [1001])  # the proxy said "going away"
    assert await eventually(lambda: not open_connections(upstream.runner))
    assert await eventually(lambda: not open_connections(proxy.service._runners[0]))


async def test_upstream_closing_ends_the_client_connection(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(f"{proxy.url}/ws/echo") as ws:
        await ws.send_str("close:1001:going away")
        message = await ws.receive(5)
        assert (message.type, message.data, message.extra) == (aiohttp.WSMsgType.CLOSE, 1001, "going away")
    assert ws.closed


async def test_wss_through_tls_on_both_hops(start_proxy: StartProxy, tmp_path: Path) -> None:
    """TLS to the client (a trustme-wrapped listener of the proxy's own server) and to the upstream."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", PUBLIC_HOST)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    standin = web.AppRunner(make_app(), handler_cancellation=True)
    await standin.setup()
    await web.TCPSite(standin, "127.0.0.1", 0, ssl_context=server_ctx).start()
    port = standin.addresses[0][1]
    site = f'hosts = ["{PUBLIC_HOST}", "127.0.0.1"]\nupstream = "https://127.0.0.1:{port}"\n'
    site += f'[upstream_tls]\nca = "{tmp_path / "ca.pem"}"\n'
    proxy = await start_proxy({"crm": site})
    listener = web.ServerRunner(proxy.service._proxy_server())
    await listener.setup()
    await web.TCPSite(listener, "127.0.0.1", 0, ssl_context=server_ctx).start()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    big = pattern_bytes(3, 1024 * 1024)
    try:
        async with (
            aiohttp.ClientSession(headers={"Host": PUBLIC_HOST}) as client,
            client.ws_connect(
                f"wss://127.0.0.1:{listener.addresses[0][1]}/ws/echo", ssl=client_ctx, protocols=("crm.v2",)
            ) as ws,
        ):
            assert ws.protocol == "crm.v2"
            await ws.send_bytes(big)
            assert (await ws.receive(10)).data == big
            await ws.send_str("close:4000:over TLS")
            message = await ws.receive(5)
            assert (message.type, message.data, message.extra) == (aiohttp.WSMsgType.CLOSE, 4000, "over TLS")
        assert await eventually(lambda: not open_connections(standin))
    finally:
        await listener.cleanup()
        await standin.cleanup()


def test_frame_cursor_finds_boundaries_however_the_bytes_are_split() -> None:
    frames = [
        client_frame(0x1, b"short"),
        client_frame(0x2, b"m" * 300),  # 16-bit length
        client_frame(0x2, b"L" * 70000),  # 64-bit length
        b"\x81\x03abc",  # unmasked, as a server sends
        close_frame(b"\x03\xe8", masked=True),
    ]
    stream = b"".join(frames)
    ends = {sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))}
    for step in (1, 2, 3, 7, 4096):
        cursor, passed = FrameCursor(), 0
        for offset in range(0, len(stream), step):
            piece = stream[offset : offset + step]
            cursor.feed(piece)
            passed += len(piece)
            assert cursor.at_boundary == (passed in ends), (step, passed)


def test_normal_origin() -> None:
    assert normal_origin("HTTPS://CRM.Example.com:443") == "https://crm.example.com"
    assert normal_origin("http://localhost:8080/") == "http://localhost:8080"
    for bad in ("null", "", "file://x", "https://crm.example.com/path", "crm.example.com"):
        assert normal_origin(bad) is None, bad


async def test_idle_websocket_outlives_upstream_read(upstream: Upstream, start_proxy: StartProxy) -> None:
    """upstream_read bounds silence inside an HTTP response; an idle WebSocket is not one."""
    toml = "[listen]\nhttps = []\nhttp = []\nplain = ['127.0.0.1:0']\n[timeouts]\nupstream_read = 0.3\n"
    proxy = await start_proxy({"crm": site_toml(upstream)}, toml)
    async with (
        aiohttp.ClientSession(headers={"Host": PUBLIC_HOST}) as client,
        client.ws_connect(f"{proxy.url}/ws/echo", autoping=False, heartbeat=None) as ws,
    ):
        await ws.send_str("hello")  # data from upstream would (re)start a sock_read timer
        assert (await ws.receive(5)).data == "hello"
        await asyncio.sleep(1.0)
        await ws.send_str("still here")
        assert (await ws.receive(5)).data == "still here"


async def test_websocket_client_not_reading_stops_the_echo(proxy: Proxy, upstream: Upstream) -> None:
    """Flow control through the tunnel: a client that sends but never reads is eventually not read either."""
    frame = client_frame(0x2, pattern_bytes(0, 1024 * 1024))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(handshake())
        await read_head(reader)
        sent = 0
        while sent < 256:
            writer.write(frame)
            sent += 1
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except TimeoutError:
                break  # every buffer on the way round is full: nothing grows without bound
        assert sent < 160, sent  # MiB: kernel socket buffers of four hops, the proxy's are 2 x 128 KiB
        echoed = 0
        reply_head = b"\x82\x7f" + (1024 * 1024).to_bytes(8, "big")
        while echoed < sent:  # reading again lets everything through, in order (our unsent frames too:
            # the transport flushes them by itself; awaiting drain() here instead would stop our reading)
            assert await asyncio.wait_for(reader.readexactly(10), 5) == reply_head
            assert await asyncio.wait_for(reader.readexactly(1024 * 1024), 5) == pattern_bytes(0, 1024 * 1024)
            echoed += 1
    finally:
        writer.close()


async def test_upstream_speaking_first_right_behind_the_101(proxy: Proxy) -> None:
    """Bytes that arrive in the same read as upstream's 101 belong to the tunnel, not to HTTP."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(handshake("/ws/echo?greet=welcome"))
        assert (await read_head(reader)).startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.readexactly(9), 5) == b"\x81\x07welcome"
        writer.write(client_frame(0x1, b"and you"))
        assert await asyncio.wait_for(reader.readexactly(9), 5) == b"\x81\x07and you"
    finally:
        writer.close()
