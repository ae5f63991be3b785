"""Helpers for the operations tests: a proxy with its admin listener, and a strict /metrics reader."""

from __future__ import annotations

import re

import aiohttp

from tests.conftest import PLAIN_ONLY, PUBLIC_HOST, Proxy, RawResponse, raw_request

WITH_ADMIN = PLAIN_ONLY + '\n[admin]\nlisten = "127.0.0.1:0"\n'


def with_admin(address: str) -> str:
    return PLAIN_ONLY + f'\n[admin]\nlisten = "{address}"\n'


_SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r" (?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?|Inf|NaN))"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def admin_url(proxy: Proxy, path: str) -> str:
    assert proxy.service.admin is not None
    return f"http://127.0.0.1:{proxy.service.admin.port}{path}"


def parse_exposition(text: str) -> Samples:
    """Parse Prometheus text format 0.0.4 strictly: every line a HELP, a TYPE or a sample of the announced family."""
    assert text.endswith("\n")
    samples: Samples = {}
    helped: set[str] = set()
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"HELP twice for {name}"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name in helped and name not in types, f"TYPE of {name} out of order"
            types[name] = kind
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} before its TYPE"
        if types[family] == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        labels = frozenset((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                           for k, v in _LABEL.findall(match["labels"] or ""))  # fmt: skip
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(match["value"].replace("Inf", "inf"))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(proxy: Proxy) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(admin_url(proxy, "/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse_exposition(await response.text())


async def get(port: int, path: str, host: str = PUBLIC_HOST) -> RawResponse:
    """One GET on its own connection, as raw bytes."""
    return await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
