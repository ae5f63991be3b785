"""`[server] workers`: several processes sharing the listening ports (Linux SO_REUSEPORT).

One asyncio process uses one core. With `workers = N` (or "auto": one per core) the parent forks
N workers that each run the whole proxy and bind the same addresses with SO_REUSEPORT, so the
kernel spreads new connections over them. The parent only supervises: it passes SIGTERM/SIGINT
(stop, each worker honours shutdown_grace) and SIGHUP (reload) on, and restarts a worker that
died. Port 0 is turned into one concrete port first, so all workers share it.

Elsewhere (Windows, macOS: no load-balancing SO_REUSEPORT) the proxy runs one process and says so.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait

from .config import Address, Config, ConfigError, load_config

log = logging.getLogger("crm_proxy")

#: A worker that dies sooner than this after its start is not restarted (a crash loop, e.g. a port in use).
MIN_UPTIME = 2.0


def can_share_ports() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def worker_count(setting: int | str, *, shareable: bool | None = None) -> int:
    """How many processes to run for the `workers` setting on this platform."""
    wanted = (os.cpu_count() or 1) if setting == "auto" else int(setting)
    if wanted > 1 and not (can_share_ports() if shareable is None else shareable):
        log.warning("server.workers = %s needs Linux SO_REUSEPORT; running 1 worker on %s", setting, sys.platform)
        return 1
    return max(wanted, 1)


def _reserve(address: Address) -> tuple[Address, socket.socket | None]:
    """A concrete port for `address`, held (bound, not listening) so no one else takes it meanwhile."""
    if address.port != 0:
        return address, None
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((address.host, 0))
    return Address(address.host, holder.getsockname()[1]), holder


def pin_ports(config: Config) -> tuple[Config, list[socket.socket]]:
    """The configuration with every port 0 replaced by one reserved port, and the reserving sockets."""
    holders: list[socket.socket] = []

    def pinned(addresses: tuple[Address, ...]) -> tuple[Address, ...]:
        out = []
        for address in addresses:
            concrete, holder = _reserve(address)
            out.append(concrete)
            if holder is not None:
                holders.append(holder)
        return tuple(out)

    listen = config.proxy.listen
    listen = dataclasses.replace(
        listen, https=pinned(listen.https), http=pinned(listen.http), plain=pinned(listen.plain)
    )
    return dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, listen=listen)), holders


def _stop_when_orphaned(parent: int, every: float = 0.5) -> None:
    """A worker whose supervisor was killed (SIGKILL, OOM) stops gracefully instead of holding the ports."""
    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)


#: Worker 0 to the supervisor: "I reloaded; reload the others" (workers run on Linux only).
OTHERS_RELOAD = getattr(signal, "SIGUSR1", 0)
_supervisor: int | None = None  # in a worker: the pid of the process that forked it


def reload_all_workers() -> None:
    """Ask the supervisor to pass SIGHUP to the other workers (the admin listener lives in worker 0 only)."""
    if _supervisor is not None and os.getppid() == _supervisor:  # never a stray signal to whoever adopted us
        os.kill(_supervisor, OTHERS_RELOAD)


def reloaded(config: Config) -> Config:
    """The supervisor's copy after a SIGHUP, so a restarted worker starts from what the others now run."""
    try:
        fresh = load_config(config.directory)
    except ConfigError:
        return config  # the workers refuse it too and keep what they have
    return dataclasses.replace(fresh, proxy=dataclasses.replace(fresh.proxy, listen=config.proxy.listen))


def _worker_main(serve: Callable[[Config], object], config: Config, holders: list[socket.socket], slot: int) -> None:
    global _supervisor
    _supervisor = os.getppid()
    for holder in holders:
        holder.close()
    if slot > 0:  # one admin listener for the whole proxy, in the first worker
        config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, admin_listen=None))
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)  # the worker's loop installs its own
    serve(config)


def run_workers(config: Config, count: int, serve: Callable[[Config], object]) -> int:
    """Fork `count` workers running `serve(config)`, supervise them until stopped; the exit code."""
    config, holders = pin_ports(config)
    context = multiprocessing.get_context("fork")  # the loaded configuration (and its TLS contexts) carries over
    stopping = False
    workers: dict[int, tuple[multiprocessing.process.BaseProcess, float]] = {}

    def start(slot: int) -> None:
        name = f"crm-proxy-worker-{slot}"
        process = context.Process(target=_worker_main, args=(serve, config, holders, slot), name=name)
        process.start()
        workers[slot] = (process, time.monotonic())
        log.info("worker %d started, pid %s", slot, process.pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping, config
        others_only = signum == OTHERS_RELOAD  # the admin's worker has reloaded itself already
        if signum not in (signal.SIGHUP, OTHERS_RELOAD):
            stopping = True
        else:
            config = reloaded(config)
        for slot, (process, _) in workers.items():
            if process.pid is not None and process.is_alive() and not (others_only and slot == 0):
                os.kill(process.pid, signal.SIGTERM if stopping else signal.SIGHUP)

    previous = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1")}
    for name in previous:
        signal.signal(getattr(signal, name), forward)
    code = 0
    try:
        for slot in range(count):
            start(slot)
        while workers:
            wait([process.sentinel for process, _ in workers.values()])
            for slot, (process, started) in list(workers.items()):
                if process.is_alive():
                    continue
                process.join()
                del workers[slot]
                if stopping:
                    continue
                code = 1
                if time.monotonic() - started < MIN_UPTIME:
                    log.error(
                        "worker %d exited with %s right after starting; not restarting it", slot, process.exitcode
                    )
                else:
                    log.error("worker %d exited with %s; restarting it", slot, process.exitcode)
                    start(slot)
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
        for holder in holders:
            holder.close()
    return 0 if stopping else code
