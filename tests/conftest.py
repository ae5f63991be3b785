"""Shared fixtures: the Sage CRM stand-in on loopback, a config directory, the proxy in front of it."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.config import load_config
from proxy.server import ProxyService
from proxy.standin import RECORDED, RecordedRequest, run_standin

PUBLIC_HOST = "crm.example.com"


@dataclass
class Upstream:
    runner: web.AppRunner
    port: int

    @property
    def recorded(self) -> list[RecordedRequest]:
        return self.runner.app[RECORDED]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    runner = await run_standin("127.0.0.1", 0)
    port = runner.addresses[0][1]
    yield Upstream(runner, port)
    await runner.cleanup()


def write_config(directory: Path, proxy_toml: str, sites: dict[str, str]) -> Path:
    (directory / "sites").mkdir(parents=True, exist_ok=True)
    (directory / "proxy.toml").write_text(textwrap.dedent(proxy_toml))
    for name, text in sites.items():
        (directory / "sites" / f"{name}.toml").write_text(textwrap.dedent(text))
    return directory


PLAIN_ONLY = """
[listen]
https = []
http = []
plain = ["127.0.0.1:0"]
[log]
format = "text"
"""


def site_toml(upstream: Upstream, extra: str = "", hosts: str = f'["{PUBLIC_HOST}", "127.0.0.1"]') -> str:
    return f'hosts = {hosts}\nupstream = "{upstream.origin}"\n' + textwrap.dedent(extra)


@dataclass
class Proxy:
    service: ProxyService
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start a proxy on a plain loopback listener for the given site files (name -> TOML)."""
    services: list[ProxyService] = []
    counter = 0

    async def start(sites: dict[str, str], proxy_toml: str = PLAIN_ONLY) -> Proxy:
        nonlocal counter
        counter += 1
        if "[admin]" not in proxy_toml:  # the default 127.0.0.1:9100 is a fixed port: tests that want it say so
            proxy_toml += '\n[admin]\nlisten = ""\n'
        directory = write_config(tmp_path / f"config{counter}", proxy_toml, sites)
        service = ProxyService(load_config(directory))
        await service.start()
        services.append(service)
        return Proxy(service, service.bound()[0][1])

    yield start
    for service in services:
        await service.stop()


@pytest.fixture
async def proxy(upstream: Upstream, start_proxy: StartProxy) -> Proxy:
    """The proxy with one site, default settings, in front of the stand-in."""
    return await start_proxy({"crm": site_toml(upstream)})


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that shows what arrives: no decompression, no redirects followed, no cookie jar."""
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), headers={"Host": PUBLIC_HOST}
    ) as session:
        yield session


@dataclass
class RawResponse:
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_raw(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if line]
    return RawResponse(lines[0], headers, body, raw)  # type: ignore[arg-type]


def complete(raw: bytes) -> bool:
    """True once a response with a Content-Length has all of its body (no need to wait for close)."""
    head, found, body = raw.partition(b"\r\n\r\n")
    if not found or head.startswith(b"HTTP/1.1 100 "):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


async def raw_request(port: int, data: bytes, timeout: float = 5.0) -> RawResponse:
    """Send bytes as they are and read until the server closes (or the timeout passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> RawResponse:
    """Read one response: to its Content-Length, or until the server closes (or the timeout passes)."""
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
        if complete(b"".join(chunks)):
            break
    return parse_raw(b"".join(chunks))
