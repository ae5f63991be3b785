"""Metrics: the exposition format, and counts taken from real requests through the proxy."""

from __future__ import annotations

import asyncio
import datetime
import math
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy.metrics import Metrics
from proxy.observe import CURRENT, Exchange, websocket_open
from tests.conftest import PUBLIC_HOST, Proxy, StartProxy, Upstream, raw_request, site_toml
from tests.ops import WITH_ADMIN, admin_url, get, parse_exposition, scrape, value


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exposition_escapes_label_values_and_help() -> None:
    metrics = Metrics()
    metrics.websockets.inc('we"ird\\site\nname')
    metrics.requests.help = "line one\nline \\ two"
    text = metrics.render()
    assert 'crm_proxy_open_websockets{site="we\\"ird\\\\site\\nname"} 1\n' in text
    assert "# HELP crm_proxy_requests_total line one\\nline \\\\ two\n" in text
    samples = parse_exposition(text)
    assert value(samples, "crm_proxy_open_websockets", site='we"ird\\site\nname') == 1


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.2, 0.2, 7, 1000):
        metrics.request("crm", "GET", 200, seconds, 0, 0)
    samples = parse_exposition(metrics.render())
    bucket = "crm_proxy_request_duration_seconds_bucket"
    assert value(samples, bucket, site="crm", le="0.005") == 1
    assert value(samples, bucket, site="crm", le="0.25") == 3
    assert value(samples, bucket, site="crm", le="10") == 4
    assert value(samples, bucket, site="crm", le="300") == 4
    assert value(samples, bucket, site="crm", le="+Inf") == 5
    assert value(samples, "crm_proxy_request_duration_seconds_count", site="crm") == 5
    assert math.isclose(value(samples, "crm_proxy_request_duration_seconds_sum", site="crm"), 1007.401)
    les = [dict(labels)["le"] for name, labels in samples if name == bucket]
    assert les[-1] == "+Inf" and len(les) == len(set(les))


def test_client_chosen_methods_cannot_grow_the_registry() -> None:
    metrics = Metrics()
    for i in range(50):
        metrics.request("crm", f"X{i}", 200, 0.01, 0, 0)
    metrics.request("crm", "PROPFIND", 207, 0.01, 0, 0)
    samples = parse_exposition(metrics.render())
    assert value(samples, "crm_proxy_requests_total", site="crm", method="other", status_class="2xx") == 50
    assert value(samples, "crm_proxy_requests_total", site="crm", method="PROPFIND", status_class="2xx") == 1
    assert sum(1 for name, _ in samples if name == "crm_proxy_requests_total") == 2


def test_websocket_gauge_counts_open_tunnels() -> None:
    metrics = Metrics()
    token = CURRENT.set(Exchange(metrics, 0.0))
    try:
        with websocket_open("crm"):
            with websocket_open("crm"):
                assert metrics.websockets.get("crm") == 2
            assert metrics.websockets.get("crm") == 1
        assert metrics.websockets.get("crm") == 0
    finally:
        CURRENT.reset(token)


async def test_requests_are_counted_by_site_method_and_status_class(
    upstream: Upstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    for path in ("/echo", "/echo", "/status/404", "/status/503"):
        await get(proxy.port, path)
    body = b"x" * 1000
    post = await raw_request(
        proxy.port,
        b"POST /echo HTTP/1.1\r\nHost: crm.example.com\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + body,
    )
    await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n")
    await raw_request(proxy.port, b"NOT HTTP AT ALL\r\n\r\n")
    samples = await scrape(proxy)
    requests = "crm_proxy_requests_total"
    assert value(samples, requests, site="crm", method="GET", status_class="2xx") == 2
    assert value(samples, requests, site="crm", method="GET", status_class="4xx") == 1
    assert value(samples, requests, site="crm", method="GET", status_class="5xx") == 1
    assert value(samples, requests, site="crm", method="POST", status_class="2xx") == 1
    assert value(samples, requests, site="-", method="GET", status_class="4xx") == 1  # unknown host: 421
    assert value(samples, requests, site="-", method="other", status_class="4xx") == 1  # unparsable: 400
    assert value(samples, "crm_proxy_request_duration_seconds_count", site="crm") == 5
    assert value(samples, "crm_proxy_received_bytes_total", site="crm") == 1000
    assert post.status == 200
    sent_before = value(samples, "crm_proxy_sent_bytes_total", site="crm")
    answer = await raw_request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    samples = await scrape(proxy)
    assert value(samples, "crm_proxy_sent_bytes_total", site="crm") - sent_before == len(answer.raw)
    assert value(samples, "crm_proxy_build_info", version="0.1.0") == 1


async def test_upstream_errors_are_counted_by_kind(upstream: Upstream, start_proxy: StartProxy) -> None:
    port = closed_port()
    proxy_toml = WITH_ADMIN + "[timeouts]\nupstream_read = 0.2\n"
    sites = {
        "crm": site_toml(upstream),
        "gone": f'hosts = ["gone.example"]\nupstream = "http://127.0.0.1:{port}"\n',
        "tls": f'hosts = ["tls.example"]\nupstream = "https://127.0.0.1:{upstream.port}"\n'
        "[upstream_tls]\nverify = false\n",
    }
    proxy = await start_proxy(sites, proxy_toml)
    for host, path in (
        ("gone.example", "/"),
        ("gone.example", "/"),
        ("tls.example", "/"),
        (PUBLIC_HOST, "/slow?delay=0.6"),
        (PUBLIC_HOST, "/die-midway?bytes=5000"),
    ):
        await raw_request(proxy.port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    samples = await scrape(proxy)
    errors = "crm_proxy_upstream_errors_total"
    assert value(samples, errors, site="gone", kind="refused") == 2
    assert value(samples, errors, site="tls", kind="tls") == 1
    assert value(samples, errors, site="crm", kind="timeout") == 1
    assert value(samples, errors, site="crm", kind="protocol") == 1
    assert value(samples, "crm_proxy_requests_total", site="gone", method="GET", status_class="5xx") == 2


async def test_open_connections_gauge_follows_client_connections(proxy_with_admin: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_with_admin.port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\n\r\n")  # keep-alive: stays open
    await reader.readuntil(b"\r\n\r\n")
    assert value(await scrape(proxy_with_admin), "crm_proxy_open_connections") == 1
    writer.close()
    await writer.wait_closed()
    for _ in range(100):  # the server notices the close on its next loop iteration
        if value(await scrape(proxy_with_admin), "crm_proxy_open_connections") == 0:
            break
        await asyncio.sleep(0.01)
    assert value(await scrape(proxy_with_admin), "crm_proxy_open_connections") == 0


async def test_client_leaving_early_is_counted_as_499(proxy_with_admin: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_with_admin.port)
    writer.write(b"GET /slow?delay=1 HTTP/1.1\r\nHost: crm.example.com\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # the request is now waiting on the upstream
    writer.close()
    await writer.wait_closed()
    requests = "crm_proxy_requests_total"
    for _ in range(200):
        samples = await scrape(proxy_with_admin)
        if value(samples, requests, site="crm", method="GET", status_class="4xx") == 1:
            break
        await asyncio.sleep(0.01)
    assert value(samples, requests, site="crm", method="GET", status_class="4xx") == 1


async def test_certificate_expiry_is_exposed_per_site(
    upstream: Upstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    ca = trustme.CA()
    not_after = datetime.datetime(2031, 5, 17, 12, 0, tzinfo=datetime.UTC)
    cert = ca.issue_cert(PUBLIC_HOST, not_after=not_after)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "crm.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "crm-key.pem"))
    extra = f'[tls]\ncert = "{tmp_path / "crm.pem"}"\nkey = "{tmp_path / "crm-key.pem"}"\n'
    proxy = await start_proxy({"crm": site_toml(upstream, extra)}, WITH_ADMIN)
    samples = await scrape(proxy)
    assert value(samples, "crm_proxy_certificate_expiry_timestamp_seconds", site="crm") == not_after.timestamp()


async def test_prometheus_reference_parser_reads_the_exposition(proxy_with_admin: Proxy) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    await get(proxy_with_admin.port, "/echo")
    async with aiohttp.ClientSession() as session, session.get(admin_url(proxy_with_admin, "/metrics")) as response:
        text = await response.text()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["crm_proxy_requests"].type == "counter"  # the parser strips _total from counter families
    assert families["crm_proxy_request_duration_seconds"].type == "histogram"
    assert families["crm_proxy_open_connections"].type == "gauge"
    (sample,) = [s for s in families["crm_proxy_requests"].samples if s.name == "crm_proxy_requests_total"]
    assert sample.labels == {"site": "crm", "method": "GET", "status_class": "2xx"} and sample.value == 1
    count = [s for s in families["crm_proxy_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert [s.value for s in count] == [1]


@pytest.fixture
async def proxy_with_admin(upstream: Upstream, start_proxy: StartProxy) -> Proxy:
    return await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
