"""A bounded fuzz run at a live listener: random bytes and mutated requests, then it must still serve.

Seeded, so a failure reproduces; a few hundred cases, concurrently, in well under ten seconds.
Every answer is a well-formed HTTP/1.1 response without a banner or a traceback; no error is logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import traceback

import pytest

from tests.conftest import PLAIN_ONLY, StartProxy, Upstream, site_toml
from tests.rawclient import HOST, exchange, still_serves

SEED = 20261204
CASES = 400
VALID = [
    b"GET /echo?x=1 HTTP/1.1\r\n" + HOST + b"Accept: */*\r\n\r\n",
    b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"POST /upload HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /crm/eware.dll/Do?SID=1&Act=520 HTTP/1.0\r\n" + HOST + b"Cookie: a=b\r\n\r\n",
]
SPECIAL = [
    b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"\x7f", b"\xff", b"HTTP/1.1", b"chunked",
    b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n", b"0\r\n\r\n", b"%00", b"/../",
]  # fmt: skip
STATUS = re.compile(rb"HTTP/1\.[01] [1-5]\d\d ")


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)  # flip a bit
        elif kind == 1:
            out[at:at] = rng.choice(SPECIAL)  # insert something parsers care about
        elif kind == 2:
            del out[at : at + rng.randint(1, 8)]  # drop a few bytes
        elif kind == 3:
            line = bytes(out).split(b"\r\n")[rng.randrange(bytes(out).count(b"\r\n") + 1)]
            out[at:at] = line + b"\r\n"  # repeat a line
        else:
            out = out[:at]  # truncate
    return bytes(out)


def from_standin(record: logging.LogRecord) -> bool:
    """The stand-in logs the uploads the proxy aborts (over-long or stalled bodies): upstream noise."""
    return record.exc_info is not None and "proxy/standin.py" in "".join(traceback.format_exception(*record.exc_info))


def cases() -> list[bytes]:
    rng = random.Random(SEED)
    found = []
    for i in range(CASES):
        if i % 4 == 0:
            found.append(rng.randbytes(rng.randint(1, 300)))
        else:
            found.append(mutate(rng, rng.choice(VALID)))
    return found


async def test_fuzzed_input_is_answered_cleanly_and_the_proxy_keeps_serving(
    upstream: Upstream, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    timeouts = "[timeouts]\nclient_header = 0.5\nkeep_alive = 0.3\nclient_body = 0.5\n"
    toml = PLAIN_ONLY + timeouts + "[limits]\nmax_header_bytes = 4096\n"
    proxy = await start_proxy({"crm": site_toml(upstream)}, toml)
    gate = asyncio.Semaphore(40)

    async def one(data: bytes) -> bytes:
        async with gate:
            result = await exchange(proxy.port, data, timeout=5)
            assert result.closed, data  # every connection ends: refused, timed out or idle
            return result.raw

    with caplog.at_level(logging.INFO):
        answers = await asyncio.gather(*(one(data) for data in cases()))
    for data, raw in zip(cases(), answers, strict=True):
        if not raw:
            continue  # closed without an answer: nothing complete arrived
        assert STATUS.match(raw), (data, raw[:100])
        assert b"aiohttp" not in raw and b"Python/" not in raw and b"Traceback" not in raw, data
        assert b"The proxy failed to handle this request" not in raw, data
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and not from_standin(r)]
    assert errors == [], [r.getMessage() for r in errors]
    statuses = {int(raw[9:12]) for raw in answers if raw}
    assert {400, 200} <= statuses  # the run exercised both refusals and forwarding
    await still_serves(proxy.port)
