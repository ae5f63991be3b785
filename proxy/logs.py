"""Logging: one JSON object per line for machines, or plain text for people, with secrets kept out.

Three kinds of line: the access log (`crm_proxy.access`, one per request), operational events
(`event`: start, reload, certificate, ...) and ordinary messages. Every line passes `scrub`, so a
session id in a logged URL or a CR/LF in a client-supplied value can neither leak nor forge a line,
whichever module logged it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .redact import escape, scrub
from .redact import target as redact_target

MAX_FIELD = 2048

events = logging.getLogger("crm_proxy.events")


def access_fields(
    *,
    site: str,
    client: str,
    forwarded_for: str | None,
    method: str,
    target: str,
    status: int,
    sent: int,
    received: int,
    seconds: float,
    upstream_status: int | None,
    upstream_seconds: float | None,
    upstream_error: str | None,
) -> dict[str, Any]:
    """The access-log object; names documented in docs/operations.md."""
    fields: dict[str, Any] = {
        "event": "access",
        "site": site,
        "client": client,
        "method": escape(method, 32),
        "path": redact_target(target, MAX_FIELD),
        "status": status,
        "bytes": sent,
        "bytes_in": received,
        "duration_ms": round(seconds * 1000, 3),
        "upstream_status": upstream_status,
        "upstream_ms": None if upstream_seconds is None else round(upstream_seconds * 1000, 3),
    }
    if upstream_error:
        fields["upstream_error"] = upstream_error
    if forwarded_for:
        fields["forwarded_for"] = escape(forwarded_for, 256)
    return fields


def event(name: str, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """An operational event (start, reload, certificate, ...): a JSON line with `"event": name`."""
    events.log(level, "%s", message, extra={"fields": {"event": name, **fields}})


_second: tuple[int, str] = (-1, "")


def timestamp(created: float, msecs: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once per second, not per line."""
    global _second
    whole = int(created)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """For people: one line per record; access lines in a combined-log-like order."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        head = f"{timestamp(record.created, record.msecs)} {record.levelname:<7}"
        if fields.get("event") == "access":
            upstream = (
                f" upstream {fields['upstream_status']} {fields['upstream_ms']}ms"
                if fields["upstream_status"] is not None
                else (f" upstream {fields['upstream_error']}" if "upstream_error" in fields else "")
            )
            return (
                f'{head} {fields["site"]} {fields["client"]} "{fields["method"]} {fields["path"]}" '
                f"{fields['status']} {fields['bytes']}B {fields['duration_ms']}ms{upstream}"
            )
        extra = " ".join(f"{k}={scrub(str(v))}" for k, v in fields.items() if k != "event")
        text = f"{head} {record.name}: {scrub(record.getMessage())}" + (f" [{extra}]" if extra else "")
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + scrub(self.formatException(record.exc_info)).replace("\\n", "\n  ")
        return text


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Replace any earlier set-up, so a reload that changes the format takes effect."""
    handler = logging.StreamHandler(sys.stdout if log_format == "json" else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    # No line shows the caller, thread or process: skip collecting them for every record (logging's own
    # "Optimization" advice); the access log writes one record per request.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
