"""Assemble the listeners around one shared upstream transport; reload and stop gracefully."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from .config import Address, Config, ConfigError, load_config
from .forward import Snapshot, handle
from .protocol import ProxyServer
from .upstream import AiohttpTransport
from .websocket import Tunnels

log = logging.getLogger("crm_proxy")


class ProxyService:
    """The running proxy: listeners, the current configuration snapshot, the upstream pool."""

    def __init__(self, config: Config, *, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port  # several worker processes share the listeners (see workers.py)
        self._snapshot: Snapshot | None = None
        self._transport: AiohttpTransport | None = None
        self._runners: list[web.BaseRunner] = []
        self._tunnels = Tunnels()  # open WebSockets, across reloads

    @property
    def snapshot(self) -> Snapshot:
        assert self._snapshot is not None, "start() first"
        return self._snapshot

    def _proxy_server(self) -> ProxyServer:
        proxy = self.config.proxy
        return ProxyServer(
            handle,
            context=lambda: self.snapshot,
            handler_cancellation=True,  # a client that leaves releases its upstream request at once
            auto_decompress=False,  # request bodies go upstream exactly as sent
            max_line_size=proxy.limits.max_header_bytes,
            max_field_size=proxy.limits.max_header_bytes,
            keepalive_timeout=75,
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
            site = web.TCPSite(
                runner, address.host, address.port, reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024
            )
            await site.start()
            log.info("listening on %s", site.name)

    async def start(self) -> None:
        timeouts = self.config.proxy.timeouts
        self._transport = AiohttpTransport(
            connect_timeout=timeouts.upstream_connect, read_timeout=timeouts.upstream_read
        )
        self._snapshot = Snapshot.of(self.config, self._transport, self._tunnels)
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
        self._snapshot = Snapshot.of(config, self._transport, self._tunnels)
        log.info("configuration reloaded from %s", config.directory)
        return True

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within shutdown_grace, then close upstreams.

        Open WebSockets never finish by themselves: after the grace they get close code 1001.
        """
        grace = self.config.proxy.timeouts.shutdown_grace
        farewell = asyncio.get_running_loop().call_later(grace, self._tunnels.going_away)
        try:
            for runner in reversed(self._runners):
                await runner.cleanup()
        finally:
            farewell.cancel()
        self._runners.clear()
        if self._transport is not None:
            await self._transport.close()


async def run_until_stopped(service: ProxyService, stop: asyncio.Event) -> None:
    await service.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await service.stop()
