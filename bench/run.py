"""Side-by-side benchmark on loopback: crm-proxy, nginx as a proxy, and no proxy at all.

Runs everything it needs as child processes, stops them all by itself, and prints tables:

1. Large transfers (default 512 MiB) with curl: a download of a static file served by an origin
   nginx, a chunked download from the Sage CRM stand-in, an upload with Content-Length (curl sends
   `Expect: 100-continue`) and a chunked upload into the stand-in, which hashes what it receives.
   Each goes direct, through crm-proxy and through nginx; crm-proxy's resident memory (VmRSS) is
   sampled every 20 ms while it runs.
   Then a WebSocket echo (the stand-in's /ws/echo): small-message round trips, 1 MiB frames.
2. Small requests with wrk: a 1 KiB static page, direct, through nginx and through crm-proxy with
   1 and 2 workers, with asyncio's loop and (if importable) uvloop. Ratios are crm-proxy / nginx
   with the same number of worker processes.

Linux only (reads /proc). Needs nginx, curl and wrk on PATH. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "crm.example.com"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Peak VmRSS of one process while a block runs, sampled in a thread every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.baseline, self.peak = pid, rss_of(pid), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_of(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Processes:
    """Every child started here, stopped (TERM, then KILL) at the end whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.children = logs, []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in list(reversed(self.children)):
            self.stop(child)


NGINX_COMMON = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    sendfile on; tcp_nopush on; keepalive_requests 100000;
    {body}
}}
"""

ORIGIN = """
server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}
"""

FRONT = """
upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
upstream standin {{ server 127.0.0.1:{standin}; keepalive 64; }}
server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_max_temp_file_size 0;  # buffering on (the default), but in memory only
    proxy_request_buffering off;  # stream uploads as crm-proxy does
    add_header X-Frame-Options SAMEORIGIN always;
    add_header X-Content-Type-Options nosniff always;
    add_header X-XSS-Protection "1; mode=block" always;
    location /upload {{ proxy_pass http://standin; }}
    location /large {{ proxy_pass http://standin; }}
    location /ws/ {{
        proxy_pass http://standin;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 300s;
    }}
    location / {{ proxy_pass http://origin; }}
}}
"""


def start_nginx(procs: Processes, work: Path, name: str, workers: int, body: str) -> subprocess.Popen[bytes]:
    directory = work / name
    directory.mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(workers=workers, dir=directory, body=body))
    return procs.start(name, ["nginx", "-c", str(conf), "-g", "daemon off;"])


def write_proxy_config(directory: Path, port: int, origin: int, standin: int, workers: int) -> Path:
    (directory / "sites").mkdir(parents=True, exist_ok=True)
    (directory / "proxy.toml").write_text(
        textwrap.dedent(f"""\
        [listen]
        https = []
        http = []
        plain = ["127.0.0.1:{port}"]
        [server]
        workers = {workers}
        [timeouts]
        shutdown_grace = 2
        [admin]
        listen = ""
        [log]
        format = "text"
        """)
    )
    (directory / "sites" / "files.toml").write_text(
        f'hosts = ["{HOST}", "127.0.0.1"]\nupstream = "http://127.0.0.1:{origin}"\n'
    )
    (directory / "sites" / "upload.toml").write_text(
        f'hosts = ["{HOST}", "127.0.0.1"]\nupstream = "http://127.0.0.1:{standin}"\n'
        'paths = ["/upload", "/large", "/ws/"]\n'
    )
    return directory


@dataclass
class Proxy:
    port: int
    child: subprocess.Popen[bytes]


def start_crm_proxy(
    procs: Processes, work: Path, origin: int, standin: int, workers: int, uvloop_path: str | None
) -> Proxy:
    port = free_port()
    name = f"crm-proxy-w{workers}{'-uvloop' if uvloop_path else ''}"
    config = write_proxy_config(work / name, port, origin, standin, workers)
    paths = [str(ROOT)] + ([uvloop_path] if uvloop_path else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    child = procs.start(name, [sys.executable, "-m", "proxy", "serve", "--config", str(config)], env)
    wait_for_port(port)
    return Proxy(port, child)


def curl(args: list[str], timeout: float) -> dict[str, float | str]:
    fmt = '\\n@@curl@@{"code":%{http_code},"time":%{time_total},"down":%{size_download},"up":%{size_upload}}\\n'
    out = subprocess.run(
        ["curl", "-sS", "--max-time", str(int(timeout)), "-H", f"Host: {HOST}", "-w", fmt, *args],
        capture_output=True,
        check=True,
        timeout=timeout + 10,
    ).stdout.decode()
    body, _, stats = out.rpartition("\n@@curl@@")
    result = json.loads(stats)
    result["body"] = body
    return result


def make_payload(path: Path, size: int) -> None:
    """Deterministic, incompressible bytes (the stand-in's pattern), written in 4 MiB blocks."""
    sys.path.insert(0, str(ROOT))
    from proxy.standin import pattern_bytes

    block = pattern_bytes(0, 4 * MIB)
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])


WRK_LATENCY = re.compile(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}", url],
        capture_output=True,
        check=True,
        timeout=seconds + 30,
    ).stdout.decode()
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    result = {f"p{p}": float(v) * scale[u] for p, v, u in WRK_LATENCY.findall(out)}
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    result["errors"] = 1.0 if errors else 0.0
    return result


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def transfers(procs: Processes, work: Path, ports: dict[str, int], size: int, payload: Path) -> None:
    proxy = start_crm_proxy(procs, work, ports["origin"], ports["standin"], 1, None)
    time.sleep(0.5)
    targets = {
        "direct": (ports["origin"], ports["standin"]),
        "crm-proxy": (proxy.port, proxy.port),
        "nginx": (ports["nginx1"], ports["nginx1"]),
    }
    runs = {
        "download, Content-Length": lambda down, up: ["-o", "/dev/null", f"http://127.0.0.1:{down}/payload.bin"],
        "download, chunked": lambda down, up: ["-o", "/dev/null", f"http://127.0.0.1:{up}/large?bytes={size}&chunked=1"],
        "upload, Content-Length": lambda down, up: ["-T", str(payload), f"http://127.0.0.1:{up}/upload"],
        "upload, chunked": lambda down, up: [
            "-T", str(payload), "-H", "Transfer-Encoding: chunked", f"http://127.0.0.1:{up}/upload"
        ],
    }  # fmt: skip
    rows = []
    for kind, argv in runs.items():
        for via, (down, up) in targets.items():
            curl(["-o", "/dev/null", f"http://127.0.0.1:{down}/small.html"], 30)  # warm up the path
            sampler = RssSampler(proxy.child.pid)
            with sampler if via == "crm-proxy" else contextlib.nullcontext():
                result = curl(argv(down, up), 300)
            if kind.startswith("download"):
                moved = int(result["down"])
            else:  # curl counts chunk framing as uploaded bytes; the stand-in counts the body
                moved = json.loads(str(result["body"]) or "{}").get("body_length", -1)
            ok = result["code"] == 200 and moved == size
            growth = f"{(sampler.peak - sampler.baseline) / MIB:.1f}" if via == "crm-proxy" else ""
            base = f"{sampler.baseline / MIB:.0f}" if via == "crm-proxy" else ""
            t = float(result["time"])
            rows.append([kind, via, f"{size / MIB / t:.0f}", f"{t:.2f}", base, growth, "ok" if ok else "FAILED"])
    ws_rows = [
        [via, *websocket_figures(up, proxy.child.pid if via == "crm-proxy" else None)]
        for via, (_, up) in targets.items()
    ]
    procs.stop(proxy.child)
    table(
        "WebSocket echo through the stand-in's /ws/echo (aiohttp client)",
        ["via", "round trip p50 ms", "p99 ms", "1 MiB frames MiB/s", "proxy RSS growth MiB", "bytes"],
        ws_rows,
    )
    table(
        f"{size // MIB} MiB transfers (curl, loopback)",
        ["transfer", "via", "MiB/s", "seconds", "proxy RSS MiB", "RSS growth MiB", "bytes"],
        rows,
    )


def websocket_figures(port: int, pid: int | None, rounds: int = 2000, frames: int = 256) -> list[str]:
    """Small-message round trips one at a time, then 1 MiB binary frames echoed 8 in flight."""
    import asyncio

    import aiohttp

    sys.path.insert(0, str(ROOT))
    from proxy.standin import pattern_bytes

    big = pattern_bytes(0, MIB)

    async def measure() -> tuple[list[float], float, bool]:
        async with (
            aiohttp.ClientSession(headers={"Host": HOST}) as session,
            session.ws_connect(f"http://127.0.0.1:{port}/ws/echo", max_msg_size=0, compress=0) as ws,
        ):
            times = []
            for i in range(rounds):
                start = time.perf_counter()
                await ws.send_str(f"ping {i}")
                await ws.receive_str()
                times.append((time.perf_counter() - start) * 1000)
            ok, start = True, time.perf_counter()
            for i in range(frames):
                await ws.send_bytes(big)
                if i >= 8:
                    ok &= await ws.receive_bytes() == big
            for _ in range(min(8, frames)):
                ok &= await ws.receive_bytes() == big
            return sorted(times), frames / (time.perf_counter() - start), ok

    sampler = RssSampler(pid) if pid else None
    with sampler or contextlib.nullcontext():
        times, rate, ok = asyncio.run(measure())
    growth = f"{(sampler.peak - sampler.baseline) / MIB:.1f}" if sampler else ""
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    return [f"{p50:.3f}", f"{p99:.3f}", f"{rate:.0f}", growth, "ok" if ok else "FAILED"]


def small_requests(
    procs: Processes, work: Path, ports: dict[str, int], seconds: int, connections: int, uvloop_path: str | None
) -> None:
    url = "http://127.0.0.1:{}/small.html"
    results: dict[str, dict[str, float]] = {
        "direct (origin nginx)": wrk(url.format(ports["origin"]), seconds, connections)
    }
    for workers in (1, 2):
        results[f"nginx, {workers} worker(s)"] = wrk(url.format(ports[f"nginx{workers}"]), seconds, connections)
    loops = [("asyncio", None)] + ([("uvloop", uvloop_path)] if uvloop_path else [])
    for loop_name, path in loops:
        for workers in (1, 2):
            proxy = start_crm_proxy(procs, work, ports["origin"], ports["standin"], workers, path)
            time.sleep(0.5)
            wrk(url.format(proxy.port), 1, connections)  # warm up the pool
            results[f"crm-proxy, {workers} worker(s), {loop_name}"] = wrk(url.format(proxy.port), seconds, connections)
            procs.stop(proxy.child)
    rows = []
    for name, r in results.items():
        workers = 2 if "2 worker" in name else 1
        ref = results[f"nginx, {workers} worker(s)"]
        is_crm = name.startswith("crm-proxy")
        rows.append(
            [
                name,
                f"{r['rps']:.0f}",
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
                f"{r['rps'] / ref['rps']:.2f}" if is_crm else "",
                f"{r['p50'] / ref['p50']:.1f}" if is_crm else "",
                f"{r['p99'] / ref['p99']:.1f}" if is_crm else "",
                "errors" if r["errors"] else "",
            ]
        )
    table(
        f"small requests: wrk -t2 -c{connections} -d{seconds}s, GET of a 1 KiB page",
        ["via", "req/s", "p50 ms", "p99 ms", "req/s vs nginx", "p50 vs nginx", "p99 vs nginx", ""],
        rows,
    )


def find_uvloop(given: str | None) -> str | None:
    candidates = [given] if given else ["/tmp/uvloop-lib"]
    for path in candidates:
        if path and (Path(path) / "uvloop").is_dir():
            return path
    return None


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """A hard stop for the whole run, whatever hangs."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"benchmark exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512, help="size of the large transfers (512)")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run (5)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--uvloop-path", help="a folder holding uvloop (pip install --target DIR uvloop)")
    parser.add_argument("--skip", choices=("transfers", "small"), action="append", default=[])
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("bench: Linux only (reads /proc/PID/status)", file=sys.stderr)
        return 2
    missing = [tool for tool in ("nginx", "curl", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"bench: missing {', '.join(missing)} (apt-get install {' '.join(missing)})", file=sys.stderr)
        return 2
    uvloop_path = find_uvloop(args.uvloop_path)
    work = Path(tempfile.mkdtemp(prefix="crm-proxy-bench-"))
    work.chmod(0o755)
    procs = Processes(work)
    size = args.size_mib * MIB
    print(f"crm-proxy bench: {os.cpu_count()} cores, python {sys.version.split()[0]}, work dir {work}")
    print(f"uvloop: {uvloop_path or 'not found (pass --uvloop-path)'}")
    try:
        with deadline(900):
            root = work / "www"
            root.mkdir()
            payload = root / "payload.bin"
            make_payload(payload, size)
            (root / "small.html").write_bytes(b"<!DOCTYPE html><p>" + b"x" * 1000 + b"</p>\n")
            for p in (root, payload, root / "small.html"):
                p.chmod(0o755 if p.is_dir() else 0o644)
            ports = {name: free_port() for name in ("origin", "standin", "nginx1", "nginx2")}
            start_nginx(procs, work, "origin", 1, ORIGIN.format(port=ports["origin"], root=root))
            standin_code = (
                "import asyncio, sys; from proxy.standin import run_standin\n"
                "async def main():\n    await run_standin('127.0.0.1', int(sys.argv[1]))\n"
                "    await asyncio.Event().wait()\n"
                "asyncio.run(main())"
            )
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            procs.start("standin", [sys.executable, "-c", standin_code, str(ports["standin"])], env)
            for workers in (1, 2):
                body = FRONT.format(port=ports[f"nginx{workers}"], origin=ports["origin"], standin=ports["standin"])
                start_nginx(procs, work, f"nginx{workers}", workers, body)
            for name in ports:
                wait_for_port(ports[name])
            if "transfers" not in args.skip:
                transfers(procs, work, ports, size, payload)
            if "small" not in args.skip:
                small_requests(procs, work, ports, args.seconds, args.connections, uvloop_path)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
