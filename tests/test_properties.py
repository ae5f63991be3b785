"""Property-based tests: the header policy and the configuration loader on arbitrary input.

`Policy.apply` must never raise, must be idempotent and must leave exactly the configured values;
`load_config` must return a valid configuration or raise `ConfigError` naming `FILE: ...`, whatever
the files hold.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.config import Config, ConfigError, load_config
from proxy.policy import HSTS, CookieFlags, Policy, ResponseContext
from proxy.profiles import PROFILES

# --- the header policy -------------------------------------------------------------------

KNOWN_NAMES = [
    "X-Frame-Options", "x-frame-options", "X-XSS-Protection", "X-Content-Type-Options", "Content-Security-Policy",
    "Referrer-Policy", "Permissions-Policy", "Strict-Transport-Security", "Set-Cookie", "set-cookie", "Location",
    "Content-Location", "Refresh", "Server", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version",
    "Content-Type", "Content-Length", "Cache-Control", "X-Custom",
]  # fmt: skip
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~", min_size=1)
NAMES = st.sampled_from(KNOWN_NAMES) | TOKEN
#: What a header value from an upstream can hold after aiohttp's client parsed it: no CR, LF or NUL.
VALUES = st.text(st.characters(blacklist_characters="\r\n\x00", max_codepoint=0x2FF), max_size=60) | st.sampled_from(
    ["SAMEORIGIN", "DENY", "sameorigin, SAMEORIGIN", "1; mode=block", "nosniff", "a=b; Path=/; Secure",
     "http://iis.internal/crm/", "0; url=http://iis.internal/x", "max-age=5", ""]
)  # fmt: skip
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=12)
CONTEXTS = st.builds(
    ResponseContext,
    https=st.booleans(),
    public_origin=st.sampled_from([None, "https://crm.example.com", "http://crm.example.com:8080"]),
    upstream_hosts=st.sampled_from([frozenset(), frozenset({"iis.internal"}), frozenset({"iis.internal", "crm"})]),
)
POLICIES = st.builds(
    lambda profile, remove, set_, default, hsts, cookies: Policy.build(
        profile=profile, remove=remove, set=set_, default=default, hsts=hsts, cookies=cookies
    ),
    st.sampled_from(sorted(PROFILES)),
    st.lists(st.sampled_from(["X-Custom", "X-Asp*", "Cache-Control", "X-*"]), max_size=3),
    st.dictionaries(st.sampled_from(["X-Frame-Options", "Referrer-Policy", "X-Custom"]), st.just("DENY"), max_size=2),
    st.dictionaries(st.sampled_from(["X-Content-Type-Options", "Cache-Control"]), st.just("nosniff"), max_size=2),
    st.sampled_from([None, "max-age=31536000"]),
    st.sampled_from([None, CookieFlags(), CookieFlags(secure=False, http_only=False, same_site="")]),
)


@settings(max_examples=300, deadline=None)
@given(policy=POLICIES, pairs=HEADERS, ctx=CONTEXTS)
def test_policy_apply_never_raises_and_is_idempotent(
    policy: Policy, pairs: list[tuple[str, str]], ctx: ResponseContext
) -> None:
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    policy.apply(headers, ctx)
    once = list(headers.items())
    policy.apply(headers, ctx)
    assert list(headers.items()) == once
    for name, value in policy.set:
        assert headers.getall(name) == [value]
    for name, _ in policy.default:
        assert len(headers.getall(name)) == 1
    assert headers.getall(HSTS, []) == ([policy.hsts] if ctx.https and policy.hsts else [])
    for name in headers:
        assert not policy.removes(name.lower())


# --- the configuration loader ------------------------------------------------------------

PLAUSIBLE = st.sampled_from(
    ["127.0.0.1:0", "[::1]:0", "0.0.0.0:99999", "http://127.0.0.1:1", "https://iis.internal", "sage-guide", "owasp",
     "none", "TLSv1.3", "auto", "Lax", "None", "crm.example.com", "*.example.com", "/", "/sdata/", "10.0.0.0/8",
     "DENY", "max-age=1", "X-AspNet*", "json", "text", ".", "..", "missing.pem", ""]
)  # fmt: skip
SCALARS = (
    PLAUSIBLE
    | st.text(max_size=20)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
VALUES_TOML = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8)


def table(keys: list[str], nested: dict[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    extra = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), VALUES_TOML, max_size=len(keys) + 1)
    if not nested:
        return extra
    return st.tuples(extra, st.fixed_dictionaries({}, optional=nested)).map(lambda p: {**p[0], **p[1]})


PROXY = table(
    ["listen", "tls", "forwarded", "acme", "server", "timeouts", "limits", "admin", "log"],
    {
        "listen": table(["https", "http", "plain", "public_port", "redirect_status"]),
        "tls": table(["min_version", "cert", "key"]),
        "forwarded": table(["trusted_proxies"]),
        "server": table(["workers"]),
        "timeouts": table(["client_header", "upstream_connect", "upstream_read", "shutdown_grace", "keep_alive"]),
        "limits": table(["max_header_bytes", "max_body_bytes", "max_connections"]),
        "admin": table(["listen"]),
        "log": table(["format"]),
    },
)
SITE = table(
    ["hosts", "upstream", "paths", "preserve_host", "websocket_origins"],
    {
        "tls": table(["cert", "key", "pfx", "pfx_password_env"]),
        "upstream_tls": table(["verify", "ca", "server_name"]),
        "headers": table(
            ["profile", "remove"],
            {"set": table(["X-Frame-Options", "Content-Length", "Set-Cookie", "Bad Name"]), "default": table(["A"])},
        ),
        "hsts": table(["max_age", "include_subdomains", "preload", "force"]),
        "cookies": table(["secure", "http_only", "same_site"]),
    },
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)  # beyond 64 bits is invalid TOML: a parse error the loader must report
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON strings are TOML basic strings (lone surrogates make invalid TOML)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in data.items())


def load(proxy_text: str | bytes, sites: list[str | bytes]) -> Config | ConfigError:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        (directory / "sites").mkdir()
        for path, text in [(directory / "proxy.toml", proxy_text)] + [
            (directory / "sites" / f"s{i}.toml", t) for i, t in enumerate(sites)
        ]:
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            return load_config(directory)
        except ConfigError as exc:
            return exc


def check_outcome(outcome: Config | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        assert outcome.problems
        for problem in outcome.problems:
            assert str(problem).startswith(("proxy.toml: ", "sites/")), str(problem)
    else:
        assert outcome.sites


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proxy=PROXY, sites=st.lists(SITE, max_size=2))
def test_load_config_gives_a_config_or_a_clean_error(proxy: dict[str, Any], sites: list[dict[str, Any]]) -> None:
    check_outcome(load(toml_document(proxy), [toml_document(s) for s in sites]))


@settings(max_examples=80, deadline=None)
@given(proxy=st.binary(max_size=200), site=st.binary(max_size=200))
def test_load_config_survives_random_bytes(proxy: bytes, site: bytes) -> None:
    check_outcome(load(proxy, [site]))


HEADER_NAMES = st.sampled_from(["X-Frame-Options", "Referrer-Policy", "X-Custom", "Set-Cookie", "content-length"])
HEADER_VALUES = st.sampled_from(["DENY", "SAMEORIGIN", "no-referrer", "x", "caf\u00e9", "1; mode=block", "a\nb", ""])
SITE_EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "paths": st.lists(st.sampled_from(["/", "/sdata/", "crm", "/CRM/"]), max_size=3),
        "preserve_host": st.booleans() | SCALARS,
        "headers": st.fixed_dictionaries(
            {},
            optional={
                "profile": st.sampled_from(["sage-guide", "owasp", "none", "strict"]),
                "remove": st.lists(st.sampled_from(["X-A", "X-Asp*", "Content-Type", "Server", "X-Frame-Options"])),
                "set": st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3),
                "default": st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3),
            },
        ),
        "hsts": st.fixed_dictionaries(
            {},
            optional={"max_age": st.integers(-1, 10**9), "include_subdomains": st.booleans(), "preload": st.booleans()},
        ),
        "cookies": st.fixed_dictionaries(
            {}, optional={"same_site": st.sampled_from(["Lax", "Strict", "None", "", "lax"]), "secure": st.booleans()}
        ),
    },
)


@settings(max_examples=120, deadline=None)
@given(
    hosts=st.lists(PLAUSIBLE | st.text(max_size=12), max_size=3)
    | st.sampled_from([["crm.example.com"], ["crm.example.com", "*.example.com"]])
    | st.just(["127.0.0.1"]),
    upstream=PLAUSIBLE | st.text(max_size=20) | st.just("http://127.0.0.1:1") | st.just("https://iis.internal:8443"),
    extras=SITE_EXTRAS,
    pairs=HEADERS,
)
def test_a_nearly_valid_site_loads_or_is_refused_cleanly(
    hosts: list[str], upstream: str, extras: dict[str, Any], pairs: list[tuple[str, str]]
) -> None:
    site = toml_document({"hosts": hosts, "upstream": upstream, **extras})
    outcome = load('[listen]\nplain = ["127.0.0.1:0"]\nhttps = []\nhttp = []\n', [site])
    check_outcome(outcome)
    if isinstance(outcome, Config):  # whatever loaded, its policy applies cleanly to any upstream headers
        for loaded in outcome.sites:
            headers: CIMultiDict[str] = CIMultiDict(pairs)
            loaded.policy.apply(headers, ResponseContext(https=True, public_origin="https://crm.example.com"))
