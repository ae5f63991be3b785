"""`[server] workers`: processes sharing one port through SO_REUSEPORT, run as `crm-proxy serve` is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from proxy.workers import worker_count
from tests.conftest import PUBLIC_HOST, Upstream, site_toml, write_config


def test_worker_count() -> None:
    assert worker_count(1) == 1
    assert worker_count(3, shareable=True) == 3
    assert worker_count("auto", shareable=True) == (os.cpu_count() or 1)


def test_worker_count_falls_back_to_one_where_ports_cannot_be_shared(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "crm_proxy"):
        assert worker_count(4, shareable=False) == 1
    assert "needs Linux SO_REUSEPORT; running 1 worker" in caplog.text


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


class Serve:
    """`crm-proxy serve` as a subprocess, with its stderr log lines read as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, directory: Path) -> AsyncIterator[Serve]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(directory),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        serve = cls(process)
        try:
            yield serve
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pid in serve.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"worker \d started, pid (\d+)", self.log)]

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def until(self, text: str, count: int, wait: float = 15) -> None:
        assert self.process.stderr is not None
        while self.count(text) < count:
            line = (await asyncio.wait_for(self.process.stderr.readline(), wait)).decode()
            assert line, self.log
            self.lines.append(line)

    async def settle(self, quiet: float = 0.2) -> None:
        """Read what else is logged until the log has been quiet for `quiet` seconds."""
        assert self.process.stderr is not None
        with contextlib.suppress(TimeoutError):
            while True:
                self.lines.append((await asyncio.wait_for(self.process.stderr.readline(), quiet)).decode())


def workers_toml(admin: str = "") -> str:
    return (
        "[listen]\nhttps = []\nhttp = []\nplain = ['127.0.0.1:0']\n[server]\nworkers = 2\n"
        f"[timeouts]\nshutdown_grace = 1\n[log]\nformat = 'text'\n[admin]\nlisten = '{admin}'\n"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux only")
async def test_two_workers_share_the_port_reload_and_stop(upstream: Upstream, tmp_path: Path) -> None:
    directory = write_config(tmp_path / "config", workers_toml(), {"crm": site_toml(upstream)})
    async with Serve.run(directory) as serve:
        await serve.until("listening on", 2)
        ports = set(re.findall(r"listening on http://127\.0\.0\.1:(\d+)", serve.log))
        pids = serve.pids
        assert len(ports) == 1 and len(pids) == 2, serve.log
        port = int(ports.pop())
        shared = listening_inodes(port)
        assert len(shared) == 2  # two listening sockets on one port, one in each worker
        assert all(socket_inodes(pid) & shared for pid in pids)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            for _ in range(8):  # a new connection each time, spread over the workers by the kernel
                async with client.get(f"http://127.0.0.1:{port}/echo", headers={"Host": PUBLIC_HOST}) as response:
                    assert response.status == 200 and response.headers["X-Frame-Options"] == "SAMEORIGIN"
        serve.process.send_signal(signal.SIGHUP)
        await serve.until("configuration reloaded from", 2, wait=10)  # one line per worker
        serve.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.process.wait(), 10) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux only")
async def test_admin_reload_reaches_every_worker_and_orphans_stop(upstream: Upstream, tmp_path: Path) -> None:
    admin = free_port()
    directory = write_config(tmp_path / "config", workers_toml(f"127.0.0.1:{admin}"), {"crm": site_toml(upstream)})
    async with Serve.run(directory) as serve:
        await serve.until("listening on", 2)
        pids = serve.pids
        async with aiohttp.ClientSession() as client:
            for _ in range(50):  # the admin listener starts after the proxy listeners
                try:
                    async with client.post(f"http://127.0.0.1:{admin}/reload") as response:
                        assert response.status == 200, await response.text()
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
        await serve.until("configuration reloaded from", 2)  # the admin's worker, then the other through the parent
        await asyncio.sleep(0.5)
        await serve.settle()  # and no third reload follows
        assert serve.count("configuration reloaded from") == 2, serve.log
        serve.process.kill()  # the supervisor dies without a word: its workers must not linger
        await serve.process.wait()
        for _ in range(100):
            if not any(Path(f"/proc/{pid}").exists() for pid in pids):
                break
            await asyncio.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
