"""Assemble the listeners around one shared upstream transport; reload and stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .admin import AdminListener
from .config import Address, Config, ConfigError, load_config
from .forward import Snapshot, handle, refuse
from .logs import event
from .metrics import Metrics
from .observe import (
    ObservedTransport,
    access_logger_class,
    counted_reload,
    observed,
    refresh_certificates,
    watch_connections,
)
from .protocol import LINGER, ConnectionGate, ProxyRequest, ProxyServer
from .redirect import handle_redirect
from .routing import parse_target
from .tls import Certificates, listener_context
from .upstream import AiohttpTransport
from .websocket import Tunnels

log = logging.getLogger("crm_proxy")


class ProxyService:
    """The running proxy: listeners, the current configuration snapshot, the upstream pool."""

    def __init__(self, config: Config, *, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port  # several worker processes share the listeners (see workers.py)
        #: Set in the worker that runs the admin listener, so `POST /reload` reaches every worker.
        self.reload_peers: Callable[[], None] | None = None
        self._snapshot: Snapshot | None = None
        self._transport: ObservedTransport | None = None
        self._runners: list[web.BaseRunner] = []
        self._kinds: list[str] = []  # "plain", "https" or "http", one per runner
        self._expiry_watch: asyncio.Task[None] | None = None
        self.metrics = Metrics()
        self.admin: AdminListener | None = None
        self.draining = False  # set when stop() begins, so /readyz turns 503 first
        self._gate = ConnectionGate(config.proxy.limits.max_connections)  # shared by every listener
        self._tunnels = Tunnels()  # open WebSockets, across reloads

    @property
    def snapshot(self) -> Snapshot:
        assert self._snapshot is not None, "start() first"
        return self._snapshot

    def _certificates(self) -> Certificates:
        """What the SNI callback consults on every handshake: always the current snapshot's certificates."""
        return self.snapshot.config.certificates

    def _proxy_server(self, handler: Callable[[ProxyRequest], Awaitable[web.StreamResponse]] = handle) -> ProxyServer:
        proxy = self.config.proxy
        return ProxyServer(
            observed(handler, self.metrics),
            context=lambda: self.snapshot,
            **hardening_options(proxy.limits.max_header_bytes, proxy.timeouts.client_header, self._gate),
            handler_cancellation=True,  # a client that leaves releases its upstream request at once
            auto_decompress=False,  # request bodies go upstream exactly as sent
            keepalive_timeout=proxy.timeouts.keep_alive,
            access_log=logging.getLogger("crm_proxy.access"),
            access_log_class=access_logger_class(self.metrics),  # one access line and metrics per response
        )

    async def _listen(
        self, kind: str, server: web.Server, addresses: tuple[Address, ...], ssl_context: ssl.SSLContext | None = None
    ) -> None:
        if not addresses:
            return
        runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=self.config.proxy.timeouts.shutdown_grace
        )
        await runner.setup()
        self._runners.append(runner)
        self._kinds.append(kind)
        for address in addresses:
            site = web.TCPSite(
                runner,
                address.host,
                address.port,
                reuse_address=None,
                reuse_port=self.reuse_port or None,
                backlog=1024,
                ssl_context=ssl_context,
            )
            await site.start()
            log.info("listening on %s", site.name)

    async def start(self) -> None:
        timeouts = self.config.proxy.timeouts
        self._transport = ObservedTransport(
            AiohttpTransport(connect_timeout=timeouts.upstream_connect, read_timeout=timeouts.upstream_read),
            self.metrics,
        )
        self._snapshot = Snapshot.of(self.config, self._transport, self._tunnels)
        for warning in self.config.warnings:
            log.warning("%s", warning)
        listen = self.config.proxy.listen
        await self._listen("plain", self._proxy_server(), listen.plain)
        if listen.https:
            context = listener_context(self.config.proxy.tls.min_version, self._certificates)
            await self._listen("https", self._proxy_server(handle_tls), listen.https, context)
        await self._listen("http", self._proxy_server(handle_redirect), listen.http)
        if listen.https:
            self._expiry_watch = asyncio.create_task(self._watch_expiry())
        await self._start_admin()

    async def _watch_expiry(self, every: float = 86400) -> None:
        """Once a day, log certificates that expire soon: a proxy runs for months between restarts."""
        while True:
            await asyncio.sleep(every)
            for note in self.snapshot.config.certificates.expiry_notes():
                log.warning("%s", note)

    async def _start_admin(self) -> None:
        """The admin listener, last: /readyz must not answer before the proxy listeners are bound."""
        watch_connections(self.metrics, lambda: self._runners)
        refresh_certificates(self.metrics, self.config)
        address = self.config.proxy.admin_listen
        if address is not None:
            self.admin = AdminListener(self, address)
            await self.admin.start()
        event("start", "crm-proxy started", listeners=[f"{h}:{p}" for h, p in self.bound()],
              sites=[s.name for s in self.config.sites], admin=str(address) if address else None)  # fmt: skip

    async def _stop_admin(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None

    def bound(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, so tests and `lab` can use port 0."""
        return [addr[:2] for runner in self._runners for addr in runner.addresses]

    def ports(self, kind: str) -> list[int]:
        """Bound ports of one kind of listener ("plain", "https", "http")."""
        return [a[1] for r, k in zip(self._runners, self._kinds, strict=True) if k == kind for a in r.addresses]

    @counted_reload
    def reload(self, directory: Path | None = None) -> bool:
        """Swap in a freshly loaded configuration; keep the running one if it has any problem."""
        try:
            config = load_config(directory or self.config.directory)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return False
        assert self._transport is not None
        for warning in restart_needed(self.config, config):
            log.warning("%s", warning)
        self.config = config
        # new handshakes now get the new certificates; open connections and WebSockets are untouched
        self._snapshot = Snapshot.of(config, self._transport, self._tunnels)
        for warning in config.warnings:
            log.warning("%s", warning)
        log.info(
            "configuration reloaded from %s: %d site(s), %d certificate(s)",
            config.directory,
            len(config.sites),
            len(config.certificates.all()),
        )
        return True

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within shutdown_grace, then close upstreams.

        Open WebSockets never finish by themselves: after the grace they get close code 1001.
        """
        self.draining = True
        if self._expiry_watch is not None:
            self._expiry_watch.cancel()
            self._expiry_watch = None
        grace = self.config.proxy.timeouts.shutdown_grace
        farewell = asyncio.get_running_loop().call_later(grace, self._tunnels.going_away)
        try:
            await stop_gracefully(self._runners)
        finally:
            farewell.cancel()
        self._runners.clear()
        self._kinds.clear()
        if self._transport is not None:
            await self._transport.close()
        await self._stop_admin()


async def handle_tls(request: ProxyRequest) -> web.StreamResponse:
    """The https listeners' handler: a request for a host this connection's certificate does not serve gets 421.

    That is what RFC 9110 §15.5.20 has 421 for: a client without SNI (or with another name) that then
    asks for a host with its own certificate never checked that certificate.
    """
    snapshot: Snapshot = request.context
    host = parse_target(request.raw_path, request.headers.get("Host")).host
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if host is not None and snapshot.config.certificates.misdirected(ssl_object, host):
        return refuse(request, 421, "This connection's certificate is not the one for this host.")
    return await handle(request)


def restart_needed(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply to sockets that are already open."""
    was, now = old.proxy, new.proxy
    fixed_at_start = {
        "listen": lambda p: (p.listen.https, p.listen.http, p.listen.plain),
        "tls.min_version": lambda p: p.tls.min_version,
        "timeouts.client_header": lambda p: p.timeouts.client_header,
        "timeouts.keep_alive": lambda p: p.timeouts.keep_alive,
        "timeouts.upstream_connect": lambda p: p.timeouts.upstream_connect,
        "timeouts.upstream_read": lambda p: p.timeouts.upstream_read,
        "timeouts.shutdown_grace": lambda p: p.timeouts.shutdown_grace,
        "limits.max_header_bytes": lambda p: p.limits.max_header_bytes,
        "limits.max_connections": lambda p: p.limits.max_connections,
        "admin.listen": lambda p: p.admin_listen,
        "server.workers": lambda p: p.workers,
        "log.format": lambda p: p.log_format,
    }
    return [
        f"proxy.toml: {key}: changed; takes effect at the next restart"
        for key, value in fixed_at_start.items()
        if value(was) != value(now)
    ]


def hardening_options(head_limit: int, client_header: float, gate: ConnectionGate) -> dict[str, object]:
    """Protocol options against oversized heads and slow clients (see `protocol.ProxyRequestHandler`)."""
    return {
        "head_limit": head_limit,  # the whole head; no single line can be longer either
        "max_line_size": head_limit,
        "max_field_size": head_limit,
        "client_header": client_header,
        "gate": gate,
        "lingering_time": LINGER,  # unread body of a refused request: discarded for at most this long, then close
    }


async def stop_gracefully(runners: list[web.BaseRunner]) -> None:
    """Close every listening socket first, then drain all listeners' connections at once.

    Cleaning runners one by one would keep later listeners accepting while the first drains,
    and make the grace period add up per listener.
    """
    for runner in runners:
        for site in list(runner.sites):
            await site.stop()
    await asyncio.gather(*(runner.cleanup() for runner in runners))


async def run_until_stopped(service: ProxyService, stop: asyncio.Event) -> None:
    try:
        await service.start()
    except BaseException:
        await service.stop()  # a listener that could not bind: release the ones that did
        raise
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await service.stop()
