"""`[timeouts]` against slow clients: heads that dribble in (slowloris), silent and idle connections."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.conftest import PLAIN_ONLY, Proxy, StartProxy, Upstream, site_toml
from tests.rawclient import HOST, OK, exchange

SLOW = 200  # slowloris connections


def timeouts(**keys: float) -> str:
    return PLAIN_ONLY + "[timeouts]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


async def dribble(port: int, stop: asyncio.Event) -> bytes:
    """Open a connection and send a head one byte at a time, never finishing; return what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET /echo HTTP/1.1\r\n" + HOST + b"X-Slow: " + b"s" * 10_000
    read = asyncio.ensure_future(reader.read())
    try:
        for byte in head:
            if read.done() or stop.is_set():
                break
            try:
                writer.write(bytes([byte]))
            except ConnectionError:
                break
            await asyncio.wait([read], timeout=0.05)
        return await asyncio.wait_for(read, 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_slowloris_is_cut_off_and_does_not_delay_normal_clients(
    upstream: Upstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, timeouts(client_header=1.5))
    stop = asyncio.Event()
    slow = [asyncio.ensure_future(dribble(proxy.port, stop)) for _ in range(SLOW)]
    await asyncio.sleep(0.2)  # all connected and dribbling
    # normal clients are served while every slow connection is still open and sending
    for _ in range(20):
        assert (await exchange(proxy.port, OK)).response.status_line == "HTTP/1.1 200 OK"
    assert not any(task.done() for task in slow), "normal requests should be served before the cut-off"
    answers = await asyncio.wait_for(asyncio.gather(*slow), 15)
    stop.set()
    assert all(a.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for a in answers), {a[:40] for a in answers}
    assert all(b"X-Frame-Options: DENY\r\n" in a and b"Connection: close\r\n" in a for a in answers)
    assert [r.raw_path for r in upstream.recorded] == ["/echo"] * 20
    assert (await exchange(proxy.port, OK)).response.status_line == "HTTP/1.1 200 OK"


async def test_a_connection_that_sends_nothing_is_closed_silently(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, timeouts(client_header=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_the_head_timer_covers_each_request(upstream: Upstream, start_proxy: StartProxy) -> None:
    """Requests spaced further apart than client_header (but within keep_alive) are all served."""
    proxy = await start_proxy({"crm": site_toml(upstream)}, timeouts(client_header=0.3, keep_alive=5))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for i in range(3):
            writer.write(b"GET /echo/%d HTTP/1.1\r\n" % i + HOST + b"\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(0.35)  # idle longer than client_header: keep_alive, not client_header, applies
    finally:
        writer.close()
    assert len(upstream.recorded) == 3


async def test_a_slow_body_is_not_cut_by_the_head_timer(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, timeouts(client_header=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\n" + HOST + b"Content-Length: 8\r\nConnection: close\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(0.1)
            writer.write(b"b")
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert upstream.recorded[0].body_length == 8


async def test_idle_keep_alive_connections_are_closed(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, timeouts(keep_alive=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /echo HTTP/1.1\r\n" + HOST + b"\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)  # the response, then EOF once idle
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" not in raw.split(b"\r\n\r\n")[0]  # it was kept alive, then closed when idle


async def test_a_head_sent_in_pieces_within_the_timeout_is_served(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    for piece in (b"GET /ec", b"ho HTTP/1.1\r", b"\n" + HOST, b"Connection: close\r\n", b"\r\n"):
        writer.write(piece)
        await asyncio.sleep(0.02)
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_body_that_stops_arriving_is_cut_off(upstream: Upstream, start_proxy: StartProxy) -> None:
    """Slow-POST: the head is fine, then the body stalls; the upstream never sees a complete request."""
    proxy = await start_proxy({"crm": site_toml(upstream)}, timeouts(client_body=0.3))
    data = b"POST /upload HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\n" + b"x" * 10
    result = await exchange(proxy.port, data, timeout=5)
    assert result.response.status_line == "HTTP/1.1 408 Request Timeout"
    assert result.response.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    assert result.closed
    assert upstream.recorded == []


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue")
async def test_an_upstream_that_never_accepts_gives_504(upstream: Upstream, start_proxy: StartProxy) -> None:
    """`timeouts.upstream_connect`: a listening socket whose accept queue is full drops SYNs, so connect hangs."""
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        site = site_toml(upstream).replace(upstream.origin, f"http://127.0.0.1:{port}")
        proxy = await start_proxy({"crm": site}, timeouts(upstream_connect=0.3))
        result = await exchange(proxy.port, OK, timeout=5)
        assert result.response.status_line == "HTTP/1.1 504 Gateway Timeout"
        assert result.response.get_all("X-Frame-Options") == ["SAMEORIGIN"]
        assert b"127.0.0.1" not in result.raw
    finally:
        for sock in [*fillers, blackhole]:
            sock.close()
