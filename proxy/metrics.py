"""In-process metrics and their Prometheus text exposition (format 0.0.4).

A small registry instead of `prometheus_client`: the proxy needs counters, gauges and one
histogram, rendered on one admin endpoint; about a hundred lines do that without a dependency,
a global registry, or threads. Label values are bounded by the configuration (site names) or
by fixed sets (methods, status classes, error kinds), so no client can grow the registry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from . import __version__

#: Seconds; spans a cached static file to a minutes-long report export.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Methods counted by name; anything else (a client can send any token) is counted as "other".
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "PROPFIND", "MKCOL"}
)
NO_SITE = "-"  # requests that matched no site: unknown host, malformed request

Labels = tuple[str, ...]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


@dataclass
class Metric:
    """One metric family: name, help, type, label names, and a value per label tuple."""

    name: str
    help: str
    type: str  # counter | gauge
    labels: Labels = ()
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, *labels: str, by: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + by

    def dec(self, *labels: str, by: float = 1) -> None:
        self.inc(*labels, by=-by)

    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = value

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0)

    def samples(self) -> Iterable[tuple[str, Labels, Labels, float]]:
        for key, value in sorted(self.values.items()):
            yield self.name, self.labels, key, value


@dataclass
class Histogram(Metric):
    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: dict[Labels, list[int]] = field(default_factory=dict)

    def observe(self, *labels: str, value: float) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1  # +Inf, which is also the count
        self.values[labels] = self.values.get(labels, 0) + value  # the sum

    def samples(self) -> Iterable[tuple[str, Labels, Labels, float]]:
        for key, counts in sorted(self.counts.items()):
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                yield f"{self.name}_bucket", (*self.labels, "le"), (*key, number(bound)), count
            yield f"{self.name}_sum", self.labels, key, self.values[key]
            yield f"{self.name}_count", self.labels, key, counts[-1]


M = TypeVar("M", bound=Metric)


class Metrics:
    """Everything `/metrics` shows; one instance per running proxy."""

    def __init__(self) -> None:
        self.families: list[Metric] = []
        #: Called at scrape time for values that are cheaper to read than to track (open connections).
        self.collectors: list[Callable[[], None]] = []
        counter, gauge = self._counter, self._gauge
        self.requests = counter("crm_proxy_requests_total", "Requests answered.", "site", "method", "status_class")
        self.duration = self._add(
            Histogram(
                "crm_proxy_request_duration_seconds",
                "Time from request head received to response finished.",
                "histogram",
                ("site",),
            )
        )
        self.received = counter("crm_proxy_received_bytes_total", "Request body bytes received from clients.", "site")
        self.sent = counter("crm_proxy_sent_bytes_total", "Bytes written to clients (head and body).", "site")
        self.upstream_errors = counter(
            "crm_proxy_upstream_errors_total", "Upstream failures: refused, timeout, tls, protocol.", "site", "kind"
        )
        self.connections = gauge("crm_proxy_open_connections", "Client connections open on the proxy listeners.")
        self.websockets = gauge("crm_proxy_open_websockets", "WebSocket tunnels open.", "site")
        self.cert_expiry = gauge(
            "crm_proxy_certificate_expiry_timestamp_seconds", "Unix time the site's certificate expires.", "site"
        )
        self.upstream_up = gauge(
            "crm_proxy_upstream_up", "1 when the last readiness probe of the site's upstream succeeded.", "site"
        )
        self.reloads = counter("crm_proxy_reloads_total", "Configuration reloads by result.", "result")
        self.reload_ok = gauge(
            "crm_proxy_config_last_reload_successful", "1 when the last reload was applied, 0 when it was refused."
        )
        self.info = gauge("crm_proxy_build_info", "Version of the running proxy.", "version")
        self.started = gauge("process_start_time_seconds", "Unix time the proxy started.")
        self.info.set(__version__, value=1)
        self.started.set(value=time.time())
        self.reload_ok.set(value=1)
        for result in ("success", "failure"):
            self.reloads.inc(result, by=0)

    def _add(self, metric: M) -> M:
        self.families.append(metric)
        return metric

    def _counter(self, name: str, help: str, *labels: str) -> Metric:
        return self._add(Metric(name, help, "counter", labels))

    def _gauge(self, name: str, help: str, *labels: str) -> Metric:
        return self._add(Metric(name, help, "gauge", labels))

    def set_certificate_expiry(self, site: str, not_after: float) -> None:
        """For the TLS loader: the Unix time a site's certificate stops being valid."""
        self.cert_expiry.set(site, value=not_after)

    def family(self, name: str) -> Metric:
        return next(f for f in self.families if f.name == name)

    def request(self, site: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.requests.inc(site, method, f"{status // 100}xx")
        self.duration.observe(site, value=seconds)
        self.received.inc(site, by=received)
        self.sent.inc(site, by=sent)

    def render(self) -> str:
        for collect in self.collectors:
            collect()
        lines: list[str] = []
        for family in self.families:
            lines.append(f"# HELP {family.name} {escape_help(family.help)}")
            lines.append(f"# TYPE {family.name} {family.type}")
            for name, names, values, value in family.samples():
                pairs = ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True))
                lines.append(f"{name}{{{pairs}}} {number(value)}" if pairs else f"{name} {number(value)}")
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
