"""Graceful stop and reload: SIGTERM lets in-flight requests finish; a broken reload keeps the old config."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import PLAIN_ONLY, StartProxy, Upstream, site_toml, write_config
from tests.rawclient import HOST, OK, exchange

ROOT = Path(__file__).resolve().parent.parent
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM/SIGHUP are POSIX signals")


class Served:
    """`crm-proxy serve` in a subprocess, with its log on stderr."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log: list[str] = []
        self.port = 0

    async def wait_for_log(self, text: str, timeout: float = 10) -> str:
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout):
            for line in self.log:
                if text in line:
                    return line
            while True:
                raw = await self.process.stderr.readline()
                if not raw:
                    raise AssertionError(f"process ended before logging {text!r}: {self.log}")
                line = raw.decode(errors="replace")
                self.log.append(line)
                if text in line:
                    return line


async def serve(config: Path) -> Served:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(config),
        cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    served = Served(process)
    line = await served.wait_for_log("listening on http://")
    served.port = int(line.rstrip().rsplit(":", 1)[1])
    return served


async def recorded(upstream: Upstream, path: str) -> None:
    async with asyncio.timeout(10):
        while not any(r.raw_path.startswith(path) for r in upstream.recorded):
            await asyncio.sleep(0.01)


@pytest.fixture
async def served(upstream: Upstream, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = write_config(
        tmp_path / "config", PLAIN_ONLY + "[timeouts]\nshutdown_grace = 10\n", {"crm": site_toml(upstream)}
    )
    proxy = await serve(config)
    yield proxy
    if proxy.process.returncode is None:
        proxy.process.kill()
        await proxy.process.wait()


@posix_only
async def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(served: Served, upstream: Upstream) -> None:
    requests = [b"GET /slow?delay=1.5&n=%d HTTP/1.1\r\n" % i + HOST + b"Connection: close\r\n\r\n" for i in range(10)]
    slow_ones = asyncio.gather(*(exchange(served.port, r, timeout=15) for r in requests))
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", served.port)  # an idle keep-alive client
    async with asyncio.timeout(10):
        while sum(r.raw_path.startswith("/slow") for r in upstream.recorded) < 10:
            await asyncio.sleep(0.01)  # all ten are at the upstream now
    served.process.send_signal(signal.SIGTERM)
    await served.wait_for_log("stopping")
    await asyncio.sleep(0.1)
    with pytest.raises(ConnectionRefusedError):  # no longer accepting
        await asyncio.open_connection("127.0.0.1", served.port)
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle connections are closed at once
    idle_writer.close()
    for result in await slow_ones:
        assert result.response.status_line == "HTTP/1.1 200 OK"
        assert result.response.body == b"done"
    assert await asyncio.wait_for(served.process.wait(), 10) == 0


@posix_only
async def test_sigterm_cuts_requests_that_outlast_the_grace(upstream: Upstream, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c", PLAIN_ONLY + "[timeouts]\nshutdown_grace = 0.3\n", {"crm": site_toml(upstream)}
    )
    served = await serve(config)
    slow = asyncio.ensure_future(
        exchange(served.port, b"GET /slow?delay=2 HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", timeout=15)
    )
    await recorded(upstream, "/slow")
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 10) == 0
    result = await slow
    assert result.closed and result.response.body == b""


@posix_only
async def test_sighup_with_a_broken_file_keeps_serving_the_old_config(
    served: Served, upstream: Upstream, tmp_path: Path
) -> None:
    (tmp_path / "config" / "sites" / "crm.toml").write_text('hosts = ["crm.example.com"]\nupstream = 5\n')
    served.process.send_signal(signal.SIGHUP)
    line = await served.wait_for_log("reload refused")
    assert "sites/crm.toml: upstream: must be a string" in line
    assert (await exchange(served.port, OK)).response.status_line == "HTTP/1.1 200 OK"
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 10) == 0


async def test_reload_swaps_a_good_config_and_refuses_a_broken_one(
    upstream: Upstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)})
    directory = proxy.service.config.directory
    site = directory / "sites" / "crm.toml"
    site.write_text(site_toml(upstream, '[headers.set]\nX-Frame-Options = "DENY"\n'))
    assert proxy.service.reload()
    assert (await exchange(proxy.port, OK)).response.get_all("X-Frame-Options") == ["DENY"]
    site.write_text("hosts = [")  # broken TOML
    assert not proxy.service.reload()
    assert (await exchange(proxy.port, OK)).response.get_all("X-Frame-Options") == ["DENY"]


async def test_an_upload_in_flight_finishes_during_shutdown(upstream: Upstream, start_proxy: StartProxy) -> None:
    """aiohttp's own shutdown stops reading at once; the proxy keeps reading the body it already accepted."""
    proxy = await start_proxy({"crm": site_toml(upstream)})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /upload HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nhello")
    await writer.drain()
    await asyncio.sleep(0.1)
    stopping = asyncio.ensure_future(proxy.service.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()
    writer.write(b"world")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await asyncio.wait_for(stopping, 5)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert upstream.recorded[0].body_length == 10


async def test_reloads_under_load_drop_nothing(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)})
    site = proxy.service.config.directory / "sites" / "crm.toml"
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> str:
        request = b"GET /echo/%d HTTP/1.1\r\n" % i + HOST + b"Connection: close\r\n\r\n"
        async with gate:
            return (await exchange(proxy.port, request)).response.status_line

    async def reloads() -> list[bool]:
        results = []
        for i in range(10):
            await asyncio.sleep(0.02)
            site.write_text(site_toml(upstream, "" if i % 2 else "hosts = [\n"))  # every other file is broken
            results.append(proxy.service.reload())
        return results

    statuses, outcomes = await asyncio.gather(asyncio.gather(*(one(i) for i in range(400))), reloads())
    assert set(statuses) == {"HTTP/1.1 200 OK"}
    assert outcomes == [False, True] * 5
    assert len(upstream.recorded) == 400
