"""Streams through the proxy: SSE and chunked flushing, backpressure both ways, flat memory, disconnects."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.standin import CHUNK, pattern_bytes, pattern_sha256
from tests.conftest import PUBLIC_HOST, Proxy, StartProxy, Upstream, site_toml

MIB = 1024 * 1024


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def settled(value: Callable[[], int], quiet: float = 0.4, timeout: float = 10.0) -> int:
    """The value once it has stopped changing for `quiet` seconds (a stalled transfer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = value(), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since >= quiet:
            return now
    raise AssertionError(f"still moving after {timeout} s: {last}")


def open_connections(runner: web.BaseRunner) -> int:
    """Sockets a server still has open; `server.connections` also counts handlers still running."""
    return sum(1 for h in runner.server.connections if h.transport is not None)  # type: ignore[union-attr]


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_sse_first_event_arrives_long_before_the_stream_ends(
    proxy: Proxy, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{proxy.url}/events?count=3&interval=30") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)  # the stream lasts 60 s
        assert first == b"id: 0\nevent: notification\ndata: event 0\n\n"
    # leaving early closed our connection, and the proxy dropped its upstream one at once
    assert await eventually(lambda: not open_connections(upstream.runner))


async def test_chunked_response_is_flushed_per_chunk(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{proxy.url}/drip?chunks=2&interval=30") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await asyncio.wait_for(response.content.readuntil(b"\n"), 5) == b"chunk 0\n"


async def test_upstream_read_timeout_is_between_reads_not_a_total(
    upstream: Upstream, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    toml = "[listen]\nhttps = []\nhttp = []\nplain = ['127.0.0.1:0']\n[timeouts]\nupstream_read = 1.5\n"
    proxy = await start_proxy({"crm": site_toml(upstream)}, toml)
    async with client.get(f"{proxy.url}/drip?chunks=3&interval=1") as response:  # 2 s in all, 1 s gaps
        assert await response.read() == b"chunk 0\nchunk 1\nchunk 2\n"


@pytest.fixture
async def gauge() -> AsyncIterator[tuple[int, dict[str, object]]]:
    """An upstream that counts what it has written and read, and can hold an upload unread."""
    state: dict[str, object] = {"sent": 0, "received": 0, "release": asyncio.Event()}

    async def download(request: web.Request) -> web.StreamResponse:
        total = int(request.query["bytes"])
        response = web.StreamResponse()
        response.content_length = total
        await response.prepare(request)
        for offset in range(0, total, CHUNK):
            await response.write(pattern_bytes(offset, min(CHUNK, total - offset)))
            state["sent"] = offset + min(CHUNK, total - offset)
        await response.write_eof()
        return response

    async def held_upload(request: web.Request) -> web.Response:
        await state["release"].wait()  # type: ignore[union-attr]
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            state["received"] = int(state["received"]) + len(chunk)  # type: ignore[call-overload]
        return web.json_response({"length": state["received"], "sha256": digest.hexdigest()})

    async def chunked_then_die(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first part of a report\n")
        assert request.transport is not None
        request.transport.close()  # dies before the last chunk
        return response

    app = web.Application()
    app.router.add_get("/download", download)
    app.router.add_get("/chunked-then-die", chunked_then_die)
    app.router.add_put("/held", held_upload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1], state
    await runner.cleanup()


def gauge_site(port: int) -> dict[str, str]:
    return {"crm": f'hosts = ["{PUBLIC_HOST}"]\nupstream = "http://127.0.0.1:{port}"\n'}


async def test_stalled_reader_stops_the_upstream(gauge: tuple[int, dict[str, object]], start_proxy: StartProxy) -> None:
    port, state = gauge
    proxy = await start_proxy(gauge_site(port))
    total = 256 * MIB
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(f"GET /download?bytes={total} HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert f"Content-Length: {total}".encode() in head
        stalled = await settled(lambda: int(state["sent"]))  # type: ignore[call-overload]
        # what is in flight: kernel socket buffers on both hops plus the proxy's few 64 KiB buffers
        assert stalled < 48 * MIB, stalled
        digest, got = hashlib.sha256(), 0
        while got < total:  # reading again resumes the whole chain, byte-for-byte
            chunk = await asyncio.wait_for(reader.read(4 * MIB), 5)
            assert chunk
            digest.update(chunk)
            got += len(chunk)
        assert got == total and digest.hexdigest() == pattern_sha256(total)
    finally:
        writer.close()


async def test_stalled_upstream_stops_reading_the_upload(
    gauge: tuple[int, dict[str, object]], start_proxy: StartProxy
) -> None:
    port, state = gauge
    proxy = await start_proxy(gauge_site(port))
    total = 128 * MIB
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(f"PUT /held HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nContent-Length: {total}\r\n\r\n".encode())
        sent = 0
        while sent < total:
            writer.write(pattern_bytes(sent, CHUNK))
            sent += CHUNK
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except TimeoutError:
                break  # the proxy stopped reading us: the upload is held
        assert sent < 48 * MIB, sent
        assert state["received"] == 0
        state["release"].set()  # type: ignore[union-attr]
        while sent < total:
            writer.write(pattern_bytes(sent, CHUNK))
            sent += CHUNK
            await asyncio.wait_for(writer.drain(), 5)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        body = json.loads(await asyncio.wait_for(reader.readuntil(b"}"), 5))
        assert body == {"length": total, "sha256": pattern_sha256(total)}
    finally:
        writer.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
async def test_large_bodies_both_ways_with_flat_memory(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    total = 96 * MIB
    expected = pattern_sha256(total)
    baseline, peak = rss(), 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss())
            await asyncio.sleep(0.02)

    async def body() -> AsyncIterator[bytes]:
        for offset in range(0, total, CHUNK):
            yield pattern_bytes(offset, CHUNK)

    sampler = asyncio.ensure_future(sample())
    try:
        for chunked in ("0", "1"):
            async with client.get(f"{proxy.url}/large?bytes={total}&chunked={chunked}") as response:
                digest, got = hashlib.sha256(), 0
                async for chunk in response.content.iter_any():
                    digest.update(chunk)
                    got += len(chunk)
            assert (got, digest.hexdigest()) == (total, expected)
        # an async generator goes chunked; the second upload declares its length
        for headers in ({}, {"Content-Length": str(total)}):
            async with client.put(f"{proxy.url}/upload", data=body(), headers=headers) as response:
                assert await response.json() == {"body_length": total, "body_sha256": expected}
    finally:
        sampler.cancel()
    # client, proxy and stand-in share this process: the bodies (4 x 96 MiB) never sit in it
    assert peak - baseline < 32 * MIB, (baseline, peak)


async def test_client_leaving_mid_download_releases_the_upstream(proxy: Proxy, upstream: Upstream) -> None:
    tasks_before = len(asyncio.all_tasks())
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET /large?bytes={512 * MIB} HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(reader.readexactly(MIB), 5)
    assert open_connections(upstream.runner) == 1
    writer.transport.abort()
    assert await eventually(lambda: not open_connections(upstream.runner))
    assert await eventually(lambda: not open_connections(proxy.service._runners[0]))
    assert await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_curl_large_upload_with_expect_100_continue(proxy: Proxy, tmp_path: Path, framing: str) -> None:
    total = 24 * MIB
    path = tmp_path / "upload.bin"
    with path.open("wb") as f:
        for offset in range(0, total, CHUNK):
            f.write(pattern_bytes(offset, CHUNK))
    extra = ["-H", "Transfer-Encoding: chunked"] if framing == "chunked" else []
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", "--max-time", "30", "-T", str(path), *extra,
        "-H", f"Host: {PUBLIC_HOST}", "-H", "Expect: 100-continue", f"{proxy.url}/upload",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(curl.communicate(), 40)
    assert curl.returncode == 0, err.decode()
    assert "< HTTP/1.1 100 Continue" in err.decode()
    assert json.loads(out) == {"body_length": total, "body_sha256": pattern_sha256(total)}


async def test_upstream_dying_mid_chunked_body_is_not_a_clean_end(
    gauge: tuple[int, dict[str, object]], start_proxy: StartProxy
) -> None:
    port, _ = gauge
    proxy = await start_proxy(gauge_site(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(f"GET /chunked-then-die HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(-1), 5)  # read until the proxy closes the connection
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body.startswith(b"17\r\nfirst part of a report\n\r\n")
    assert not body.endswith(b"0\r\n\r\n")  # no last-chunk: the client knows the body was cut short


async def test_client_abandoning_an_upload_releases_the_upstream(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"PUT /upload HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nContent-Length: {512 * MIB}\r\n\r\n".encode())
    for offset in range(0, 4 * MIB, CHUNK):
        writer.write(pattern_bytes(offset, CHUNK))
        await writer.drain()
    assert await eventually(lambda: open_connections(upstream.runner) == 1)
    writer.transport.abort()
    assert await eventually(lambda: not open_connections(upstream.runner))
    assert await eventually(lambda: not open_connections(proxy.service._runners[0]))
    assert not [r for r in upstream.recorded if r.raw_path == "/upload"]  # the stand-in never saw a whole body
