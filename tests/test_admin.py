"""The admin listener over real sockets: health, readiness with upstream probes, reload, isolation."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from proxy.admin import _is_loopback
from proxy.config import load_config
from proxy.server import ProxyService
from tests.conftest import StartProxy, Upstream, raw_request, site_toml, write_config
from tests.ops import WITH_ADMIN, admin_url, get, scrape, value, with_admin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fetch(method: str, url: str) -> tuple[int, dict[str, object] | str, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body, response.headers


async def test_healthz_and_readyz_when_everything_is_up(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    assert proxy.service.admin is not None
    await proxy.service.admin.prober.probe_all()
    status, body, headers = await fetch("GET", admin_url(proxy, "/healthz"))
    assert (status, body) == (200, {"status": "ok"})
    assert "Server" not in headers
    status, body, _ = await fetch("GET", admin_url(proxy, "/readyz"))
    assert (status, body) == (200, {"ready": True, "problems": []})
    assert value(await scrape(proxy), "crm_proxy_upstream_up", site="crm") == 1


async def test_readyz_names_the_site_whose_upstream_is_down(upstream: Upstream, start_proxy: StartProxy) -> None:
    port = free_port()
    sites = {"crm": site_toml(upstream), "sdata": f'hosts = ["sdata.example"]\nupstream = "http://127.0.0.1:{port}"\n'}
    proxy = await start_proxy(sites, WITH_ADMIN)
    assert proxy.service.admin is not None
    await proxy.service.admin.prober.probe_all()
    status, body, _ = await fetch("GET", admin_url(proxy, "/readyz"))
    assert status == 503
    assert isinstance(body, dict) and body["ready"] is False
    (problem,) = body["problems"]
    assert problem.startswith(f"sdata: upstream http://127.0.0.1:{port} failed its probe: refused")
    samples = await scrape(proxy)
    assert value(samples, "crm_proxy_upstream_up", site="sdata") == 0
    assert value(samples, "crm_proxy_upstream_up", site="crm") == 1


async def test_readyz_fails_once_shutdown_begins(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    assert proxy.service.admin is not None
    await proxy.service.admin.prober.probe_all()
    proxy.service.draining = True  # what stop() sets first, while in-flight requests finish
    status, body, _ = await fetch("GET", admin_url(proxy, "/readyz"))
    assert status == 503 and isinstance(body, dict) and body["problems"] == ["shutting down"]
    proxy.service.draining = False


async def test_reload_applies_a_good_configuration(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    directory = proxy.service.config.directory
    (directory / "sites" / "sdata.toml").write_text(
        f'hosts = ["sdata.example"]\nupstream = "{upstream.origin}"\npaths = ["/sdata/"]\n'
    )
    status, body, _ = await fetch("POST", admin_url(proxy, "/reload"))
    assert status == 200
    assert body == {"reloaded": True, "config": str(directory), "sites": ["crm", "sdata"]}
    answer = await raw_request(proxy.port, b"GET /sdata/x HTTP/1.1\r\nHost: sdata.example\r\nConnection: close\r\n\r\n")
    assert answer.status == 404 and upstream.recorded[-1].raw_path == "/sdata/x"  # routed to the new site
    samples = await scrape(proxy)
    assert value(samples, "crm_proxy_reloads_total", result="success") == 1
    assert value(samples, "crm_proxy_config_last_reload_successful") == 1


async def test_reload_with_a_broken_file_answers_409_with_every_problem(
    upstream: Upstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    site_file = proxy.service.config.directory / "sites" / "crm.toml"
    site_file.write_text(site_toml(upstream, '[hsts]\nmax_age = "1y"\n[cookies]\nsame_site = "lax"\n'))
    status, body, _ = await fetch("POST", admin_url(proxy, "/reload"))
    assert status == 409
    assert isinstance(body, dict) and body["reloaded"] is False
    assert body["errors"] == [
        'reload refused: sites/crm.toml: hsts.max_age: must be a non-negative integer, got "1y"',
        'reload refused: sites/crm.toml: cookies.same_site: must be one of "Strict", "Lax", "None", "", got "lax"',
    ]
    answer = await raw_request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    assert answer.status == 200  # the running configuration stays
    samples = await scrape(proxy)
    assert value(samples, "crm_proxy_reloads_total", result="failure") == 1
    assert value(samples, "crm_proxy_reloads_total", result="success") == 0
    assert value(samples, "crm_proxy_config_last_reload_successful") == 0


async def test_admin_paths_and_methods(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    assert (await fetch("GET", admin_url(proxy, "/reload")))[0] == 405
    assert (await fetch("POST", admin_url(proxy, "/metrics")))[0] == 405
    assert (await fetch("GET", admin_url(proxy, "/crm/eware.dll/go")))[0] == 404


async def test_admin_is_not_reachable_through_the_proxy(upstream: Upstream, start_proxy: StartProxy) -> None:
    """Even a site whose upstream is the admin listener itself gets no metrics and cannot reload."""
    admin_port = free_port()
    proxy_toml = with_admin(f"127.0.0.1:{admin_port}")
    sites = {
        "crm": site_toml(upstream),
        "oops": f'hosts = ["oops.example"]\nupstream = "http://127.0.0.1:{admin_port}"\n',
    }
    proxy = await start_proxy(sites, proxy_toml)
    for request in (
        b"GET /metrics HTTP/1.1\r\nHost: oops.example\r\nConnection: close\r\n\r\n",
        b"POST /reload HTTP/1.1\r\nHost: oops.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ):
        answer = await raw_request(proxy.port, request)
        assert answer.status == 403
        assert b"crm_proxy_" not in answer.body
        assert answer.get_all("X-Frame-Options") == ["SAMEORIGIN"]  # the proxy's policy still applies
    assert value(await scrape(proxy), "crm_proxy_reloads_total", result="success") == 0
    answer = await get(proxy.port, "/metrics")
    assert b"crm_proxy_" not in answer.body  # the proxy listener itself has no admin routes: this went to IIS


async def test_admin_listen_off_and_port_taken(upstream: Upstream, start_proxy: StartProxy, tmp_path) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)})  # conftest turns the admin listener off
    assert proxy.service.admin is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy_toml = with_admin(f"127.0.0.1:{port}")
        directory = write_config(tmp_path / "taken", proxy_toml, {"crm": site_toml(upstream)})
        service = ProxyService(load_config(directory))
        with pytest.raises(OSError, match=rf"admin.listen = '127.0.0.1:{port}': cannot listen"):
            await service.start()
        await service.stop()


def test_only_loopback_may_reload() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("127.3.4.5")
    assert not _is_loopback("10.0.0.5") and not _is_loopback("192.0.2.1") and not _is_loopback(None)
    assert not _is_loopback("unix-socket")


async def test_public_host_cannot_name_the_admin_paths(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    answer = await get(proxy.port, "/healthz")
    assert upstream.recorded[-1].raw_path == "/healthz"  # forwarded to the site like any path, not answered here
    assert answer.body != b'{"status": "ok"}'


def test_a_site_pointing_at_the_admin_listener_is_recognised(tmp_path) -> None:
    from proxy.admin import points_here
    from proxy.config import Address

    directory = write_config(
        tmp_path,
        "",
        {
            "a": 'hosts = ["a.example"]\nupstream = "http://127.0.0.1:9100"\n',
            "b": 'hosts = ["b.example"]\nupstream = "http://localhost:9100"\n',
            "c": 'hosts = ["c.example"]\nupstream = "http://127.0.0.1:9101"\n',
            "d": 'hosts = ["d.example"]\nupstream = "http://iis.internal:9100"\n',
        },
    )
    sites = {site.name: site for site in load_config(directory).sites}
    loopback, anywhere = Address("127.0.0.1", 9100), Address("0.0.0.0", 9100)
    assert [points_here(sites[n], loopback) for n in "abcd"] == [True, True, False, False]
    assert [points_here(sites[n], anywhere) for n in "abcd"] == [True, True, False, False]
