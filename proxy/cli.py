"""The `crm-proxy` command: serve, check, lab, audit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, load_config
from .logs import configure
from .server import ProxyService, run_until_stopped
from .workers import run_workers, worker_count


def load_or_report(directory: Path) -> Config | None:
    try:
        return load_config(directory)
    except ConfigError as exc:
        print(f"crm-proxy: configuration in {directory} has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def print_check(config: Config) -> None:
    print(f"configuration {config.directory}: OK, {len(config.sites)} site(s)")
    for warning in config.warnings:
        print(f"warning: {warning}")
    for site in config.sites:
        print(f"\n{site.file}: {', '.join(site.hosts)} {', '.join(site.paths)} -> {site.upstream_origin}")
        print(f"  profile {site.profile}")
        for operation, header, value in site.policy.describe():
            print(f"  {operation:<13} {header}{': ' + value if value else ''}")


def install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, service: ProxyService) -> None:
    """SIGTERM/SIGINT stop, SIGHUP reloads; Windows has none of these handlers, Ctrl-C still stops."""
    for name in ("SIGINT", "SIGTERM"):
        with contextlib.suppress(NotImplementedError, AttributeError, ValueError):
            loop.add_signal_handler(getattr(signal, name), stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, service.reload)


def event_loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uvloop.Loop  # type: ignore[no-any-return]


async def serve(config: Config, reuse_port: bool = False) -> None:
    service = ProxyService(config, reuse_port=reuse_port)
    stop = asyncio.Event()
    install_signal_handlers(asyncio.get_running_loop(), stop, service)
    await run_until_stopped(service, stop)


def run(coroutine) -> None:  # type: ignore[no-untyped-def]
    factory = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crm-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"crm-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the proxy"),
        ("check", "validate the configuration and print each site's policy"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, default=Path("config"), help="directory with proxy.toml and sites/")
    args = parser.parse_args(argv)

    config = load_or_report(args.config)
    if config is None:
        return 1
    if args.command == "check":
        print_check(config)
        return 0
    configure(config.proxy.log_format)
    workers = worker_count(config.proxy.workers)
    if workers > 1:
        return run_workers(config, workers, lambda worker_config: run(serve(worker_config, reuse_port=True)))
    run(serve(config))
    return 0
