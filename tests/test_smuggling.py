"""Request smuggling and malformed input, sent byte for byte over raw loopback sockets.

Every probe must get one clean refusal with the refusal header set and no banner, the connection
closed, nothing forwarded (in particular no second request hidden in the first), and the proxy
serving the next client normally.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Proxy, Upstream, parse_raw
from tests.rawclient import HOST, STATUS_LINE, assert_refusal, exchange, still_serves

SMUGGLED = b"GET /echo/smuggled HTTP/1.1\r\n" + HOST + b"\r\n"


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /echo HTTP/1.1\r\n" + HOST + headers + b"\r\n" + body


BAD_REQUEST = "HTTP/1.1 400 Bad Request"
NOT_IMPLEMENTED = "HTTP/1.1 501 Not Implemented"

PROBES = {
    # framing conflicts (CL.TE, TE.CL) with a second request hidden behind the first
    "cl-te": (post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED), BAD_REQUEST),
    "te-cl": (post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\n" + SMUGGLED), BAD_REQUEST),
    "two-content-lengths": (post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), BAD_REQUEST),
    "same-content-length-twice": (post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), BAD_REQUEST),
    "content-length-list": (post(b"Content-Length: 5, 5\r\n", b"hello"), BAD_REQUEST),
    "content-length-plus": (post(b"Content-Length: +5\r\n", b"hello"), BAD_REQUEST),
    "content-length-negative": (post(b"Content-Length: -1\r\n"), BAD_REQUEST),
    "content-length-20-digits": (post(b"Content-Length: 99999999999999999999\r\n", b"hello"), BAD_REQUEST),
    # obfuscated Transfer-Encoding
    "xchunked": (post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED), BAD_REQUEST),
    "chunked-identity": (post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), BAD_REQUEST),
    "identity-alone": (post(b"Transfer-Encoding: identity\r\nContent-Length: 0\r\n"), BAD_REQUEST),
    "chunked-twice-in-one": (post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), BAD_REQUEST),
    "two-te-lines": (post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), BAD_REQUEST),
    "space-before-colon": (post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED), BAD_REQUEST),
    "te-in-http-1.0": (
        b"POST /echo HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        BAD_REQUEST,
    ),
    "identity-then-chunked": (post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"), NOT_IMPLEMENTED),
    "gzip-then-chunked": (post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), NOT_IMPLEMENTED),
    "xchunked-then-chunked": (post(b"Transfer-Encoding: xchunked, chunked\r\n", b"0\r\n\r\n"), NOT_IMPLEMENTED),
    # field syntax
    "obs-fold": (b"GET /echo HTTP/1.1\r\n" + HOST + b"X-A: a\r\n b\r\n\r\n", BAD_REQUEST),
    "obs-fold-te": (post(b"Transfer-Encoding: identity\r\n chunked\r\n", b"0\r\n\r\n"), BAD_REQUEST),
    "nul-in-value": (b"GET /echo HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", BAD_REQUEST),
    "nul-in-name": (b"GET /echo HTTP/1.1\r\n" + HOST + b"X-\x00A: b\r\n\r\n", BAD_REQUEST),
    "bare-cr-in-value": (b"GET /echo HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n", BAD_REQUEST),
    "bare-lf-line-ends": (b"GET /echo HTTP/1.1\n" + HOST.replace(b"\r\n", b"\n") + b"\n", BAD_REQUEST),
    "control-char-in-value": (b"GET /echo HTTP/1.1\r\n" + HOST + b"X-A: a\x01b\r\n\r\n", BAD_REQUEST),
    "space-before-field-name": (b"GET /echo HTTP/1.1\r\n" + HOST + b" X-A: a\r\n\r\n", BAD_REQUEST),
    "two-hosts": (b"GET /echo HTTP/1.1\r\n" + HOST + b"Host: evil.example\r\n\r\n", BAD_REQUEST),
    "no-host-in-1.1": (b"GET /echo HTTP/1.1\r\n\r\n", BAD_REQUEST),
    # chunk syntax
    "chunk-size-not-hex": (post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), BAD_REQUEST),
    "chunk-size-negative": (post(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"), BAD_REQUEST),
    "chunk-size-0x": (post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"), BAD_REQUEST),
    "chunk-size-overflow": (
        post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        BAD_REQUEST,
    ),
    "chunk-bare-lf": (post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"), BAD_REQUEST),
    "chunk-data-longer-than-size": (
        post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        BAD_REQUEST,
    ),
    # request line and version
    "http-0.9": (b"GET /echo\r\n", BAD_REQUEST),
    "http-0.9-blank-line": (b"GET /echo\r\n\r\n", BAD_REQUEST),
    "http-0.9-with-headers": (b"GET /echo\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "version-0.9": (b"GET /echo HTTP/0.9\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "version-1.2": (b"GET /echo HTTP/1.2\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "version-2.0": (b"GET /echo HTTP/2.0\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "version-3": (b"GET /echo HTTP/3\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", BAD_REQUEST),
    "lower-case-version": (b"GET /echo http/1.1\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "space-in-target": (b"GET /echo x HTTP/1.1\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "bad-method": (b"G(T /echo HTTP/1.1\r\n" + HOST + b"\r\n", BAD_REQUEST),
    "tls-hello-on-plain": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n", BAD_REQUEST),
}


@pytest.mark.parametrize("name", PROBES)
async def test_probe_is_refused_cleanly(name: str, proxy: Proxy, upstream: Upstream) -> None:
    data, status_line = PROBES[name]
    before = len(upstream.recorded)
    result = await exchange(proxy.port, data + b"GET /echo/pipelined HTTP/1.1\r\n" + HOST + b"\r\n")
    assert_refusal(result, status_line)
    assert upstream.recorded[before:] == []  # not the request, not what was behind it
    await still_serves(proxy.port)


async def test_request_hidden_in_a_content_length_body_stays_body(proxy: Proxy, upstream: Upstream) -> None:
    body = SMUGGLED + SMUGGLED
    data = post(b"Connection: close\r\nContent-Length: %d\r\n" % len(body), body)
    result = await exchange(proxy.port, data)
    assert result.response.status_line == "HTTP/1.1 200 OK"
    assert [r.raw_path for r in upstream.recorded] == ["/echo"]
    assert upstream.recorded[0].body_length == len(body)
    assert upstream.recorded[0].header("Content-Length") == [str(len(body))]


async def test_request_hidden_in_a_chunked_body_stays_body(proxy: Proxy, upstream: Upstream) -> None:
    # the chunk framing itself looks like the end of a body followed by a request
    inner = b"0\r\n\r\n" + SMUGGLED
    chunks = b"%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    data = post(b"Connection: close\r\nTransfer-Encoding: chunked\r\n", chunks)
    result = await exchange(proxy.port, data)
    assert result.response.status_line == "HTTP/1.1 200 OK"
    assert [r.raw_path for r in upstream.recorded] == ["/echo"]
    seen = upstream.recorded[0]
    assert seen.body_length == len(inner)
    # re-framed by the proxy: chunked again, no Content-Length, no extension echoed
    assert seen.header("Transfer-Encoding") == ["chunked"]
    assert seen.header("Content-Length") == []


async def test_pipelined_requests_stop_at_the_first_refused_one(proxy: Proxy, upstream: Upstream) -> None:
    good = b"GET /echo/1 HTTP/1.1\r\n" + HOST + b"\r\n"
    bad = post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n")  # refused by the proxy's own check
    after = b"GET /echo/3 HTTP/1.1\r\n" + HOST + b"\r\n"
    result = await exchange(proxy.port, good + bad + after)
    first, _, rest = result.raw.partition(b"HTTP/1.1 501 Not Implemented\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest and len(STATUS_LINE.findall(result.raw)) == 2
    assert result.closed
    assert [r.raw_path for r in upstream.recorded] == ["/echo/1"]


async def test_a_parse_error_drops_the_whole_read_it_arrived_in(proxy: Proxy, upstream: Upstream) -> None:
    """llhttp fails the whole buffer: a good request in the same packet as a broken one is not served either."""
    good = b"GET /echo/1 HTTP/1.1\r\n" + HOST + b"\r\n"
    bad = post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")
    result = await exchange(proxy.port, good + bad + good)
    assert_refusal(result, "HTTP/1.1 400 Bad Request")
    assert upstream.recorded == []


async def test_a_parse_error_after_a_served_request_closes_the_connection(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET /echo/1 HTTP/1.1\r\n" + HOST + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        length = int(next(v for k, v in parse_raw(head).headers if k.lower() == "content-length"))
        await reader.readexactly(length)
        writer.write(b"GET /echo/2 HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n" + SMUGGLED)
        rest = await asyncio.wait_for(reader.read(), 3)  # read() to EOF: the proxy closes
    finally:
        writer.close()
    assert rest.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert len(STATUS_LINE.findall(rest)) == 1
    assert [r.raw_path for r in upstream.recorded] == ["/echo/1"]


async def test_leading_blank_lines_are_ignored(proxy: Proxy, upstream: Upstream) -> None:
    """RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line."""
    result = await exchange(proxy.port, b"\r\n\r\nGET /echo HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
    assert result.response.status_line == "HTTP/1.1 200 OK"
    assert [r.raw_path for r in upstream.recorded] == ["/echo"]


@pytest.mark.parametrize("value", [b"chunked", b"CHUNKED", b"\tchunked ", b"Chunked"])
async def test_plain_chunked_spellings_are_served(value: bytes, proxy: Proxy, upstream: Upstream) -> None:
    data = post(b"Connection: close\r\nTransfer-Encoding: " + value + b"\r\n", b"5\r\nhello\r\n0\r\n\r\n")
    result = await exchange(proxy.port, data)
    assert result.response.status_line == "HTTP/1.1 200 OK"
    assert upstream.recorded[0].body_length == 5
    assert upstream.recorded[0].header("Transfer-Encoding") == ["chunked"]


@pytest.mark.parametrize(
    "target",
    [b"http://evil.example/", b"http://evil.example:80/echo", b"https://169.254.169.254/latest/meta-data/"],
)
async def test_absolute_form_for_another_host_is_not_proxied(target: bytes, proxy: Proxy, upstream: Upstream) -> None:
    result = await exchange(proxy.port, b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert_refusal(result, "HTTP/1.1 421 Misdirected Request")
    assert upstream.recorded == []
    await still_serves(proxy.port)


@pytest.mark.parametrize(
    "host", [b"evil.example", b"crm.example.com.evil.example", b"crm.example.com@evil.example", b"", b"localhost"]
)
async def test_unknown_hosts_are_refused(host: bytes, proxy: Proxy, upstream: Upstream) -> None:
    result = await exchange(proxy.port, b"GET /echo HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert result.response.status in (400, 421)
    assert_refusal(result, result.response.status_line)
    assert upstream.recorded == []


async def test_connect_is_refused_with_the_refusal_set(proxy: Proxy, upstream: Upstream) -> None:
    data = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n\x16\x03\x01"
    result = await exchange(proxy.port, data)
    assert_refusal(result, "HTTP/1.1 405 Method Not Allowed")
    assert upstream.recorded == []
    await still_serves(proxy.port)


async def test_chunk_extensions_and_trailers_are_not_forwarded(proxy: Proxy, upstream: Upstream) -> None:
    chunks = b"5;name=evil\r\nhello\r\n0\r\nX-Trailer: smuggled\r\nHost: evil.example\r\n\r\n"
    result = await exchange(proxy.port, post(b"Connection: close\r\nTransfer-Encoding: chunked\r\n", chunks))
    assert result.response.status_line == "HTTP/1.1 200 OK"
    seen = upstream.recorded[0]
    assert seen.body_length == 5
    assert seen.header("X-Trailer") == [] and seen.header("Host") == ["crm.example.com"]
    assert b"evil" not in result.response.body and b"smuggled" not in result.response.body


@pytest.mark.parametrize("framing", [b"Content-Length: 100\r\n", b"Transfer-Encoding: chunked\r\n"])
async def test_a_client_leaving_mid_body_does_not_poison_the_upstream_pool(
    framing: bytes, proxy: Proxy, upstream: Upstream
) -> None:
    """A half-sent upload must not leave a pooled upstream connection mid-request for the next client."""
    partial = b"x" * 10 if framing.startswith(b"Content") else b"64\r\n" + b"x" * 10
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(post(framing, partial))
        await writer.drain()
        await asyncio.sleep(0.05)  # the upload to the upstream has begun
        writer.transport.abort()
    await asyncio.sleep(0.1)
    for i in range(5):
        body = b"next%d" % i
        data = b"POST /echo/%d HTTP/1.1\r\n" % i + HOST + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        result = await exchange(proxy.port, data + body)
        assert result.response.status_line == "HTTP/1.1 200 OK"
    # the upstream saw the five complete requests, each with its own body, and nothing else complete
    assert [(r.raw_path, r.body_length) for r in upstream.recorded] == [(f"/echo/{i}", 5) for i in range(5)]
