"""`crm-proxy lab`: the Sage CRM stand-in behind the proxy on localhost, with HTTPS from a local CA.

The CA (made with trustme) lives in a state folder and is reused on the next start, so a browser
that imported it once keeps trusting the lab. The lab's configuration is written there too: it is a
normal config directory (`crm-proxy check --config` works on it), regenerated at each start.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import trustme

from .config import load_config
from .server import ProxyService
from .standin import run_standin

LAB_HOSTS = ("localhost", "127.0.0.1", "::1")
PAGE = "/crm/eware.dll/go"  # the logon page: the stand-in doubles headers and sends flagless cookies there
#: In the lab HSTS is kept short: browsers would otherwise insist on HTTPS for localhost for a year.
LAB_HSTS_MAX_AGE = 300


class LabError(Exception):
    """A problem the lab explains in one line instead of a traceback."""


def default_state_dir() -> Path:
    """Where the lab keeps its CA: %LOCALAPPDATA% on Windows, $XDG_STATE_HOME (~/.local/state) elsewhere."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "crm-proxy" / "lab"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "crm-proxy" / "lab"


def _write_private(path: Path, data: bytes) -> None:
    """Created owner-only from the start (Windows ignores the mode; the state folder is the user's own)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def lab_ca(state: Path) -> trustme.CA:
    """The lab's CA: loaded from the state folder, or made and saved there on the first start."""
    cert, key = state / "ca.pem", state / "ca-key.pem"
    if cert.is_file() and key.is_file():
        try:
            return trustme.CA.from_pem(cert.read_bytes(), key.read_bytes())
        except (ValueError, TypeError) as exc:
            raise LabError(f"cannot use the lab CA in {state} ({exc}); delete that folder to make a new one") from exc
    state.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="crm-proxy lab")
    _write_private(key, ca.private_key_pem.bytes())
    cert.write_bytes(ca.cert_pem.bytes())
    return ca


def free_port(host: str) -> int:
    """A port that is free now; the lab needs to know its HTTPS port before it writes the redirect target."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def write_lab_config(state: Path, ca: trustme.CA, upstream: str, https_port: int, http_port: int) -> Path:
    """A fresh leaf certificate for localhost and the config directory that uses it."""
    directory = state / "config"
    (directory / "sites").mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*LAB_HOSTS)
    (directory / "localhost.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    _write_private(directory / "localhost-key.pem", leaf.private_key_pem.bytes())
    (directory / "proxy.toml").write_text(
        textwrap.dedent(
            f"""\
            # Written by `crm-proxy lab` at each start; edit a copy, not this file.
            [listen]
            https = ["127.0.0.1:{https_port}"]
            http = ["127.0.0.1:{http_port}"]
            public_port = {https_port}

            [tls]                       # also the certificate for 127.0.0.1 (no SNI for IP addresses)
            cert = "localhost.pem"
            key = "localhost-key.pem"

            [admin]
            listen = ""

            [log]
            format = "text"
            """
        )
    )
    (directory / "sites" / "crm.toml").write_text(
        textwrap.dedent(
            f"""\
            # The built-in Sage CRM stand-in, as a real IIS would be configured.
            hosts = ["localhost", "127.0.0.1"]
            upstream = "{upstream}"

            [tls]
            cert = "../localhost.pem"
            key = "../localhost-key.pem"

            [headers]
            profile = "sage-guide"

            [hsts]
            max_age = {LAB_HSTS_MAX_AGE}          # short in the lab; 31536000 (the default) in production
            """
        )
    )
    return directory


def _decoded(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


async def fetch_headers(url: str, ssl_context: ssl.SSLContext | None) -> list[tuple[str, str]]:
    """Every header line of one response, in order, duplicates kept."""
    async with (
        aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(url, allow_redirects=False, ssl=ssl_context if ssl_context else True) as response,
    ):
        await response.read()
        return _decoded(response.raw_headers)


_BORING = {"content-length", "content-type", "date"}


def header_table(without: list[tuple[str, str]], with_proxy: list[tuple[str, str]]) -> str:
    """Side by side: each header name with its value(s) from the stand-in directly and through the proxy."""
    names: dict[str, str] = {}
    for name, _ in [*without, *with_proxy]:
        if name.lower() not in _BORING:
            names.setdefault(name.lower(), name)

    def values(lines: list[tuple[str, str]], name: str) -> list[str]:
        return [v if len(v) <= 90 else v[:87] + "..." for k, v in lines if k.lower() == name] or ["-"]

    rows = [("header", "without the proxy", "with the proxy")]
    for lower, name in names.items():
        left, right = values(without, lower), values(with_proxy, lower)
        for i in range(max(len(left), len(right))):
            rows.append((name if i == 0 else "", left[i] if i < len(left) else "", right[i] if i < len(right) else ""))
    widths = [max(len(row[c]) for row in rows) for c in range(2)]
    lines = [f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]
    lines.insert(1, "  " + "-" * (widths[0] + widths[1] + 4 + max(len(r[2]) for r in rows)))
    return "\n".join(lines)


@dataclass(frozen=True)
class LabOptions:
    https_port: int = 8443
    http_port: int = 8080
    state: Path | None = None


async def run_lab(options: LabOptions, stop: asyncio.Event) -> None:
    """Start everything, print what to open, wait for `stop`, then close it all down."""
    state = options.state or default_state_dir()
    ca = lab_ca(state)
    ca_file = state / "ca.pem"
    standin = await run_standin("127.0.0.1", 0)
    service: ProxyService | None = None
    try:
        upstream = f"http://127.0.0.1:{standin.addresses[0][1]}"
        https_port = options.https_port or free_port("127.0.0.1")
        http_port = options.http_port or free_port("127.0.0.1")
        directory = write_lab_config(state, ca, upstream, https_port, http_port)
        service = ProxyService(load_config(directory))
        await service.start()
        trust = ssl.create_default_context(cafile=str(ca_file))
        without = await fetch_headers(upstream + PAGE, None)
        with_proxy = await fetch_headers(f"https://localhost:{https_port}{PAGE}", trust)
        print(
            textwrap.dedent(
                f"""\
                crm-proxy lab: the Sage CRM stand-in behind the proxy, with HTTPS from a local CA

                  open       https://localhost:{https_port}{PAGE}
                  redirect   http://localhost:{http_port}/  ->  https://localhost:{https_port}/
                  CA file    {ca_file}
                             (import it into your browser or OS as a trusted authority to open the page
                             without a warning; it is reused on the next start)
                  stand-in   {upstream}{PAGE}  (the same page without the proxy)
                  config     {directory}

                response headers of GET {PAGE}:
                """
            )
            + header_table(without, with_proxy)
            + "\n\nPress Ctrl-C to stop.",
            flush=True,
        )
        await stop.wait()
    finally:
        if service is not None:
            await service.stop()
        await standin.cleanup()
        print("crm-proxy lab: stopped", flush=True)
