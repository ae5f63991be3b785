"""Assemble the listeners around one shared upstream transport; reload and stop gracefully."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from .config import Address, Config, ConfigError, load_config
from .forward import Snapshot, handle
from .protocol import LINGER, ConnectionGate, ProxyServer
from .upstream import AiohttpTransport

log = logging.getLogger("crm_proxy")


class ProxyService:
    """The running proxy: listeners, the current configuration snapshot, the upstream pool."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._snapshot: Snapshot | None = None
        self._transport: AiohttpTransport | None = None
        self._runners: list[web.BaseRunner] = []
        self._gate = ConnectionGate(config.proxy.limits.max_connections)  # shared by every listener

    @property
    def snapshot(self) -> Snapshot:
        assert self._snapshot is not None, "start() first"
        return self._snapshot

    def _proxy_server(self) -> ProxyServer:
        proxy = self.config.proxy
        return ProxyServer(
            handle,
            context=lambda: self.snapshot,
            **hardening_options(proxy.limits.max_header_bytes, proxy.timeouts.client_header, self._gate),
            handler_cancellation=True,  # a client that leaves releases its upstream request at once
            auto_decompress=False,  # request bodies go upstream exactly as sent
            keepalive_timeout=proxy.timeouts.keep_alive,
            access_log=None,
        )

    async def _listen(self, server: web.Server, addresses: tuple[Address, ...]) -> None:
        if not addresses:
            return
        runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=self.config.proxy.timeouts.shutdown_grace
        )
        await runner.setup()
        self._runners.append(runner)
        for address in addresses:
            site = web.TCPSite(runner, address.host, address.port, reuse_address=True, backlog=1024)
            await site.start()
            log.info("listening on %s", site.name)

    async def start(self) -> None:
        timeouts = self.config.proxy.timeouts
        self._transport = AiohttpTransport(
            connect_timeout=timeouts.upstream_connect, read_timeout=timeouts.upstream_read
        )
        self._snapshot = Snapshot.of(self.config, self._transport)
        for warning in self.config.warnings:
            log.warning("%s", warning)
        await self._listen(self._proxy_server(), self.config.proxy.listen.plain)

    def bound(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, so tests and `lab` can use port 0."""
        return [addr[:2] for runner in self._runners for addr in runner.addresses]

    def reload(self, directory: Path | None = None) -> bool:
        """Swap in a freshly loaded configuration; keep the running one if it has any problem."""
        try:
            config = load_config(directory or self.config.directory)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return False
        assert self._transport is not None
        self.config = config
        self._snapshot = Snapshot.of(config, self._transport)
        log.info("configuration reloaded from %s", config.directory)
        return True

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within shutdown_grace, then close upstreams."""
        await stop_gracefully(self._runners)
        self._runners.clear()
        if self._transport is not None:
            await self._transport.close()


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
    await service.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await service.stop()
