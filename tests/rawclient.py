"""Raw-socket helpers for the hardening tests: send bytes as they are, see exactly what comes back."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from proxy.policy import ResponseContext
from proxy.protocol import REFUSAL_POLICY
from tests.conftest import PUBLIC_HOST, RawResponse, parse_raw

HOST = f"Host: {PUBLIC_HOST}\r\n".encode()
STATUS_LINE = re.compile(rb"HTTP/\d\.\d \d{3} ")
OK = b"GET /echo HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"


@dataclass
class Exchange:
    response: RawResponse
    closed: bool  # the proxy closed the connection (EOF or reset) before the timeout

    @property
    def raw(self) -> bytes:
        return self.response.raw


async def exchange(port: int, data: bytes, timeout: float = 3.0) -> Exchange:
    """Send `data`, then read until the proxy closes the connection or `timeout` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks: list[bytes] = []
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    finally:
        writer.close()
    return Exchange(parse_raw(b"".join(chunks)), closed)


def refusal_headers() -> dict[str, str]:
    """The header set every refusal must carry, computed from the policy itself (plain HTTP)."""
    from multidict import CIMultiDict

    headers: CIMultiDict[str] = CIMultiDict()
    REFUSAL_POLICY.apply(headers, ResponseContext(https=False))
    return dict(headers)


def assert_refusal(result: Exchange, status_line: str) -> None:
    """Exact status line, the refusal header set, no banner, `Connection: close`, connection closed."""
    response = result.response
    assert response.status_line == status_line, result.raw[:300]
    for name, value in refusal_headers().items():
        assert response.get_all(name) == [value], name
    assert response.get_all("Server") == []
    assert b"aiohttp" not in result.raw and b"Python" not in result.raw
    assert response.get_all("Connection") == ["close"]
    assert len(STATUS_LINE.findall(result.raw)) == 1  # one answer, nothing of a second request
    assert result.closed


async def still_serves(port: int) -> None:
    result = await exchange(port, OK)
    assert result.response.status_line == "HTTP/1.1 200 OK"
