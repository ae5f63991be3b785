"""TLS contexts: the client side towards https:// upstreams (server contexts per site come with SNI)."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi


def upstream_context(*, verify: bool, ca: Path | None) -> ssl.SSLContext | bool:
    """Verified against certifi's bundle, or the internal CA an IIS binding is signed by.

    `False` is aiohttp's spelling for "do not verify"; configuration warns loudly about it.
    """
    if not verify:
        return False
    context = ssl.create_default_context(cafile=str(ca) if ca else certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
