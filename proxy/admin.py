"""The admin listener (`[admin] listen`, default 127.0.0.1:9100): health, readiness, metrics, reload.

It is a separate aiohttp application on its own socket, never one of the proxy listeners, and it
refuses any request that arrives through a proxy (it carries X-Forwarded-For or Forwarded, which the
proxy always adds upstream), so a site whose upstream points here cannot expose it. `POST /reload`
is answered only for loopback clients: it has no authentication, and a Kubernetes probe or a
Prometheus scrape never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import Address, Site
from .logs import event
from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .server import ProxyService

log = logging.getLogger("crm_proxy")

SERVICE: web.AppKey[ProxyService] = web.AppKey("service")
PROBER: web.AppKey[UpstreamProber] = web.AppKey("prober")
PROBE_INTERVAL = 5.0  # seconds between probes of each upstream


@dataclass(frozen=True)
class Probe:
    ok: bool
    at: float  # monotonic time of the probe
    detail: str = ""


def _probe_ssl(site: Site) -> ssl.SSLContext | None:
    if site.upstream.scheme != "https":
        return None
    if isinstance(site.upstream_ssl, ssl.SSLContext):
        return site.upstream_ssl
    unverified = ssl.create_default_context()  # upstream_tls.verify = false: the handshake is still probed
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return unverified


async def probe_upstream(site: Site, timeout: float) -> Probe:
    """A TCP connect (and the TLS handshake for https:// upstreams): cheap, and nothing reaches IIS's logs."""
    host, port = site.upstream.host or "", site.upstream.port or 80
    context = _probe_ssl(site)
    name = site.upstream_tls.server_name or None if context is not None else None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=name)
    except TimeoutError:
        return Probe(False, time.monotonic(), f"timeout: no connection within {timeout:g} s")
    except ssl.SSLError as exc:
        return Probe(False, time.monotonic(), f"tls: {exc.reason or exc}")
    except socket.gaierror as exc:
        return Probe(False, time.monotonic(), f"dns: cannot resolve {host}: {exc.strerror or exc}")
    except OSError as exc:
        return Probe(False, time.monotonic(), f"refused: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return Probe(True, time.monotonic())


class UpstreamProber:
    """Probes every site's upstream every `interval` seconds; `/readyz` reads the latest results."""

    def __init__(self, service: ProxyService, interval: float = PROBE_INTERVAL) -> None:
        self.service, self.interval = service, interval
        self.results: dict[str, Probe] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def stale_after(self) -> float:
        return 3 * self.interval + self.service.config.proxy.timeouts.upstream_connect

    async def probe_all(self) -> None:
        sites = self.service.config.sites
        timeout = self.service.config.proxy.timeouts.upstream_connect
        results = await asyncio.gather(*(probe_upstream(site, timeout) for site in sites))
        self.results = {site.name: result for site, result in zip(sites, results, strict=True)}
        gauge = self.service.metrics.upstream_up
        gauge.values.clear()
        for site, result in zip(sites, results, strict=True):
            gauge.set(site.name, value=1 if result.ok else 0)

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # a probe must never kill the prober; the next round tries again
                log.exception("upstream probe failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="crm-proxy upstream prober")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def problems(self) -> list[str]:
        now = time.monotonic()
        found = []
        for site in self.service.config.sites:
            result = self.results.get(site.name)
            if result is None:
                found.append(f"{site.name}: upstream {site.upstream_origin} not probed yet")
            elif not result.ok:
                found.append(f"{site.name}: upstream {site.upstream_origin} failed its probe: {result.detail}")
            elif now - result.at > self.stale_after:
                found.append(f"{site.name}: upstream {site.upstream_origin} not probed for {now - result.at:.0f} s")
        return found


def points_here(site: Site, address: Address) -> bool:
    """Whether a site's upstream is (probably) this admin listener: same port, same or a wildcard/loopback host."""
    host = (site.upstream.host or "").strip("[]")
    if site.upstream.port != address.port:
        return False
    local = _is_loopback(host) or host == "localhost"
    return host == address.host or (local and (address.host in ("0.0.0.0", "::") or _is_loopback(address.host)))


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


@web.middleware
async def not_through_a_proxy(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return web.json_response({"error": "the admin endpoints are not served through a proxy"}, status=403)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    problems = []
    if service.draining:
        problems.append("shutting down")
    expected = service.config.proxy.listen
    if len(service.bound()) < len(expected.https) + len(expected.http) + len(expected.plain):
        problems.append("not every listener is bound")
    problems += request.app[PROBER].problems()
    return web.json_response({"ready": not problems, "problems": problems}, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(text=request.app[SERVICE].metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


class _Collect(logging.Handler):
    """Collects the errors a reload logs, so `POST /reload` can answer with them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def reload(request: web.Request) -> web.Response:
    if not _is_loopback(request.remote):
        return web.json_response({"error": "POST /reload is accepted from loopback addresses only"}, status=403)
    service = request.app[SERVICE]
    collect = _Collect()
    logger = logging.getLogger("crm_proxy")
    logger.addHandler(collect)
    try:
        result: Any = service.reload()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
    except Exception as exc:
        log.exception("reload failed")
        return web.json_response({"reloaded": False, "errors": [f"reload failed: {exc!r}"]}, status=500)
    finally:
        logger.removeHandler(collect)
    if not result:
        return web.json_response({"reloaded": False, "errors": collect.messages}, status=409)
    if service.reload_peers is not None:
        service.reload_peers()  # with several workers, the others reload too
    sites = [site.name for site in service.config.sites]
    return web.json_response({"reloaded": True, "config": str(service.config.directory), "sites": sites})


async def _no_banner(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.pop("Server", None)  # no version banner on an internal port either


def make_app(service: ProxyService, prober: UpstreamProber) -> web.Application:
    app = web.Application(middlewares=[not_through_a_proxy])
    app[SERVICE] = service
    app[PROBER] = prober
    app.on_response_prepare.append(_no_banner)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/reload", reload)
    return app


class AdminListener:
    """The admin application on its own socket, with the upstream prober it reports on."""

    def __init__(self, service: ProxyService, address: Address, interval: float = PROBE_INTERVAL) -> None:
        self.service, self.address = service, address
        self.prober = UpstreamProber(service, interval)
        self._runner = web.AppRunner(make_app(service, self.prober), handle_signals=False, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address.host, self.address.port, reuse_address=None)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"admin.listen = {str(self.address)!r}: cannot listen: {exc.strerror}") from exc
        self.prober.start()
        for config_site in self.service.config.sites:
            if points_here(config_site, self.address):
                event("admin", f"{config_site.file}: upstream {config_site.upstream_origin} is the admin listener; "
                      "requests through the proxy get 403 there", level=logging.WARNING)  # fmt: skip
        host = self.address.host
        if not _is_loopback(host) and host != "localhost":
            text = f"admin listener on {site.name} is reachable from the network: firewall port {self.address.port}"
            event("admin", text + "; POST /reload answers loopback clients only", level=logging.WARNING)
        log.info("admin listening on %s", site.name)

    @property
    def port(self) -> int:
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self.prober.stop()
        await self._runner.cleanup()
