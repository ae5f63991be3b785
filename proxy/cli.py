"""The `crm-proxy` command: serve, check, lab, audit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, load_config
from .lab import LabError, LabOptions, default_state_dir, run_lab
from .logs import configure
from .server import ProxyService, run_until_stopped
from .workers import reload_all_workers, run_workers, worker_count

log = logging.getLogger("crm_proxy")
PORT_ERRORS = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


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
        if config.proxy.listen.https:
            for host in site.hosts:
                served = config.certificates.for_name(host)
                print(f"  certificate   {host}: {served.describe() if served else 'none (handshakes refused)'}")
        for operation, header, value in site.policy.describe():
            print(f"  {operation:<13} {header}{': ' + value if value else ''}")


def install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, service: ProxyService | None) -> None:
    """SIGTERM/SIGINT stop, SIGHUP reloads; Windows has none of these handlers, Ctrl-C still stops."""
    for name in ("SIGINT", "SIGTERM"):
        with contextlib.suppress(NotImplementedError, AttributeError, ValueError):
            loop.add_signal_handler(getattr(signal, name), stop.set)
    if service is not None:
        with contextlib.suppress(NotImplementedError, AttributeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, reload_on_signal, service)


def reload_on_signal(service: ProxyService) -> None:
    log.info("SIGHUP: reloading configuration and certificates")
    service.reload()


def event_loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uvloop.Loop  # type: ignore[no-any-return]


async def serve(config: Config, reuse_port: bool = False) -> None:
    service = ProxyService(config, reuse_port=reuse_port)
    if reuse_port and config.proxy.admin_listen is not None:
        service.reload_peers = reload_all_workers
    stop = asyncio.Event()
    install_signal_handlers(asyncio.get_running_loop(), stop, service)
    await run_until_stopped(service, stop)


async def lab_main(options: LabOptions) -> None:
    stop = asyncio.Event()
    install_signal_handlers(asyncio.get_running_loop(), stop, None)
    await run_lab(options, stop)


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
    lab = commands.add_parser("lab", help="run the Sage CRM stand-in behind the proxy on localhost, with a local CA")
    lab.add_argument("--https-port", type=int, default=8443, help="HTTPS port (default 8443; 0: any free port)")
    lab.add_argument("--http-port", type=int, default=8080, help="HTTP redirect port (default 8080; 0: any free port)")
    lab.add_argument("--state", type=Path, default=None, help=f"folder for the lab CA (default {default_state_dir()})")
    commands.add_parser("audit", help="report a URL's security headers, cookies, redirect and TLS (docs/audit.md)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["audit"]:  # audit has its own parser and options
        from .audit import main as audit_main

        return audit_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "lab":
        configure("text")
        options = LabOptions(https_port=args.https_port, http_port=args.http_port, state=args.state)
        try:
            run(lab_main(options))
        except OSError as exc:  # typically the port is taken
            hint = " (choose other ports with --https-port/--http-port)" if exc.errno in PORT_ERRORS else ""
            print(f"crm-proxy lab: {exc}{hint}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"crm-proxy lab: {exc}", file=sys.stderr)
            return 1
        except LabError as exc:
            print(f"crm-proxy lab: {exc}", file=sys.stderr)
            return 1
        return 0

    config = load_or_report(args.config)
    if config is None:
        return 1
    if args.command == "check":
        print_check(config)
        return 0
    configure(config.proxy.log_format)
    workers = worker_count(config.proxy.workers)
    try:
        if workers > 1:
            return run_workers(config, workers, lambda worker_config: run(serve(worker_config, reuse_port=True)))
        run(serve(config))
    except OSError as exc:  # typically a port in use or a privileged port
        print(f"crm-proxy: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
