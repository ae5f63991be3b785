"""`crm-proxy lab` as a user runs it: a subprocess that prints its URLs, answers over HTTPS, stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import raw_request
from tests.tlskit import tls_get

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to stop the lab")


async def start_lab(state: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "lab", "--https-port", "0", "--http-port", "0", "--state", str(state),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    while not lines or "Press Ctrl-C to stop." not in lines[-1]:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, "lab exited early:\n" + "".join(lines)
        lines.append(line.decode())
    return process, "".join(lines)


async def stop_lab(process: asyncio.subprocess.Process) -> bytes:
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 20) == 0
    assert process.stdout is not None
    return await process.stdout.read()


async def test_lab_answers_over_https_and_redirects_http(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process, output = await start_lab(state)
    try:
        url = re.search(r"open\s+https://localhost:(\d+)(/\S+)", output)
        redirect = re.search(r"redirect\s+http://localhost:(\d+)/", output)
        ca_file = re.search(r"CA file\s+(\S+)", output)
        assert url and redirect and ca_file, output
        https_port, page, http_port = int(url[1]), url[2], int(redirect[1])
        assert Path(ca_file[1]) == state / "ca.pem"

        trust = ssl.create_default_context(cafile=ca_file[1])  # verified: chain and the name localhost
        got = await tls_get(https_port, "localhost", path=page, context=trust)
        assert got.response.status == 200
        assert got.response.get_all("X-Frame-Options") == ["SAMEORIGIN"]
        assert got.response.get_all("Strict-Transport-Security") == ["max-age=300"]
        assert got.response.get_all("Server") == [] and got.response.get_all("X-Powered-By") == []
        assert b"LoginForm" in got.response.body

        moved = await raw_request(http_port, f"GET {page}?a=1 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert moved.status == 308
        assert moved.get_all("Location") == [f"https://localhost:{https_port}{page}?a=1"]

        # the table compares the same page without and with the proxy
        assert re.search(r"X-Frame-Options\s+SAMEORIGIN\s+SAMEORIGIN\n\s+SAMEORIGIN\n", output), output
        assert re.search(r"Server\s+Microsoft-IIS/10\.0\s+-", output), output
    finally:
        rest = await stop_lab(process)
    assert b"crm-proxy lab: stopped" in rest

    # the CA is kept and reused on the next start
    ca_before = (state / "ca.pem").read_bytes()
    process, _ = await start_lab(state)
    await stop_lab(process)
    assert (state / "ca.pem").read_bytes() == ca_before
