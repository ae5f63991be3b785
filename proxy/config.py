"""Load `proxy.toml` and `sites/*.toml` into frozen dataclasses, reporting every problem at once.

Each problem names the file (relative to the config directory), the dotted key and what is wrong,
so `crm-proxy check` reads like a compiler's error list. Nothing here is consulted per request
except the finished dataclasses.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import ssl
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from yarl import URL

from . import tls
from .header_values import bad_value_chars, check, is_token
from .policy import CookieFlags, Policy
from .profiles import PROFILES
from .tls import Certificates, upstream_context

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECT_STATUSES = (301, 302, 307, 308)
SAME_SITE = ("Strict", "Lax", "None", "")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
#: Headers whose value the proxy computes itself; configuring them in [headers] would fight that.
_COMPUTED = {"strict-transport-security": "[hsts]", "set-cookie": "[cookies]"}
#: Headers that frame or describe the body (or the connection): setting or removing them corrupts responses.
_FRAMING = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "content-length", "content-encoding", "content-type"}
)  # fmt: skip


@dataclass(frozen=True, order=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Listen:
    https: tuple[Address, ...] = (Address("0.0.0.0", 443),)
    http: tuple[Address, ...] = (Address("0.0.0.0", 80),)
    plain: tuple[Address, ...] = ()
    public_port: int = 443
    redirect_status: int = 308


@dataclass(frozen=True)
class DefaultTls:
    min_version: str = "TLSv1.2"
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class Timeouts:
    client_header: float = 10
    upstream_connect: float = 5
    upstream_read: float = 300
    shutdown_grace: float = 30
    keep_alive: float = 75  # idle seconds before a kept-alive client connection is closed
    client_body: float = 60  # seconds of client silence in the middle of a request body


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 16384
    max_body_bytes: int = 0
    max_connections: int = 0


@dataclass(frozen=True)
class ProxySettings:
    listen: Listen = Listen()
    tls: DefaultTls = DefaultTls()
    trusted_proxies: tuple[Network, ...] = ()
    acme_challenge_dir: Path | None = None
    workers: int | str = 1
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    admin_listen: Address | None = Address("127.0.0.1", 9100)
    log_format: str = "json"


@dataclass(frozen=True)
class SiteTls:
    cert: Path | None = None
    key: Path | None = None
    pfx: Path | None = None
    pfx_password_env: str = ""


@dataclass(frozen=True)
class UpstreamTls:
    verify: bool = True
    ca: Path | None = None
    server_name: str = ""


@dataclass(frozen=True)
class Hsts:
    max_age: int = 31536000
    include_subdomains: bool = False
    preload: bool = False
    force: bool = False

    @property
    def value(self) -> str:
        flags = "; includeSubDomains" * self.include_subdomains + "; preload" * self.preload
        return f"max-age={self.max_age}{flags}"


@dataclass(frozen=True)
class Site:
    name: str
    file: str
    hosts: tuple[str, ...]
    upstream: URL
    paths: tuple[str, ...] = ("/",)
    preserve_host: bool = True
    websocket_origins: tuple[str, ...] = ()
    tls: SiteTls = SiteTls()
    upstream_tls: UpstreamTls = UpstreamTls()
    profile: str = "sage-guide"
    hsts: Hsts = Hsts()
    policy: Policy = field(default_factory=lambda: Policy.build(profile="sage-guide"))
    #: `scheme://host[:port]` of the upstream, precomputed for the hot path.
    upstream_origin: str = ""
    upstream_ssl: ssl.SSLContext | bool = field(default=True, compare=False)

    @property
    def upstream_host(self) -> str:
        return (self.upstream.host or "").lower()


@dataclass(frozen=True)
class Config:
    directory: Path
    proxy: ProxySettings
    sites: tuple[Site, ...]
    warnings: tuple[str, ...] = ()
    #: The loaded server certificates, by SNI name; swapped with the rest of the configuration on reload.
    certificates: Certificates = field(default_factory=Certificates)


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ConfigError(Exception):
    """Every problem found, in file order; the running configuration stays as it was."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def show(value: Any) -> str:
    """A value as the user wrote it in TOML, for error messages."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


class Table:
    """Typed, recorded access to one TOML table; unknown keys are reported at `finish`."""

    def __init__(self, problems: list[Problem], file: str, data: dict[str, Any], prefix: str = "") -> None:
        self.problems, self.file, self.data, self.prefix = problems, file, data, prefix
        self.known: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.key(name), message))

    def get(self, name: str, default: Any) -> Any:
        self.known.append(name)
        return self.data.get(name, default)

    def table(self, name: str) -> Table:
        value = self.get(name, {})
        if not isinstance(value, dict):
            self.error(name, f"must be a table ([{self.key(name)}]), got {show(value)}")
            value = {}
        return Table(self.problems, self.file, value, f"{self.key(name)}.")

    def string(self, name: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self.get(name, default)
        if not isinstance(value, str):
            self.error(name, f"must be a string, got {show(value)}")
            return default
        if choices and value not in choices:
            self.error(name, f"must be one of {', '.join(show(c) for c in choices)}, got {show(value)}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            self.error(name, f"must be true or false, got {show(value)}")
            return default
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.get(name, default)
        in_range = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not in_range or (maximum is not None and value > maximum):
            span = "a non-negative integer" if minimum == 0 else f"an integer of at least {minimum}"
            if maximum is not None:
                span = f"an integer from {minimum} to {maximum}"
            self.error(name, f"must be {span}, got {show(value)}")
            return default
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 86400 * 365:
            self.error(name, f"must be a positive number of seconds, got {show(value)}")
            return default
        return float(value)

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(name, f"must be a list of strings, got {show(value)}")
            return default
        return tuple(value)

    def path(self, name: str, base: Path, want: str = "file") -> Path | None:
        """An existing file (or, with `want="directory"`, folder), relative to the file that names it."""
        value = self.string(name, "")
        if not value:
            return None
        if "\0" in value:
            self.error(name, "must not contain a NUL character")
            return None
        path = (base / value).resolve()
        if not path.exists():
            self.error(name, f"{want} not found: {path}")
        elif (want == "file") != path.is_file():
            self.error(name, f"not a {want}: {path}")
        return path

    def finish(self) -> None:
        for name in self.data:
            if name not in self.known:
                close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.6)
                hint = f" (did you mean {show(close[0])}?)" if close else ""
                where = f"[{self.prefix[:-1]}]" if self.prefix else "the top level"
                self.problems.append(Problem(self.file, self.key(name), f"unknown key in {where}{hint}"))


def read_toml(path: Path, label: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        where = _TOML_POSITION.search(text)
        reason = _TOML_POSITION.sub("", text).strip()
        position = f"line {where[1]}, column {where[2]}" if where else ""
        problems.append(Problem(label, position, f"invalid TOML: {reason}"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(label, "", f"cannot read: {exc}"))
    return None


def parse_address(text: str) -> Address | None:
    """`host:port`, `[v6]:port`; None when it is not one."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not match:
        return None
    host, port = (match[1], match[2]) if match[1] is not None else (match[3], match[4])
    if match[1] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return Address(host, int(port)) if 0 <= int(port) <= 65535 else None


def addresses(table: Table, name: str, default: tuple[Address, ...]) -> tuple[Address, ...]:
    found = []
    for text in table.strings(name, tuple(map(str, default))):
        address = parse_address(text)
        if address is None:
            table.error(name, f'must be "host:port" or "[ipv6]:port", got {show(text)}')
        else:
            found.append(address)
    return tuple(found)


def load_proxy(path: Path, problems: list[Problem]) -> ProxySettings:
    label = path.name
    data = read_toml(path, label, problems) if path.exists() else {}
    if data is None:
        return ProxySettings()
    top = Table(problems, label, data)
    base = path.parent

    t = top.table("listen")
    listen = Listen(
        https=addresses(t, "https", Listen.https),
        http=addresses(t, "http", Listen.http),
        plain=addresses(t, "plain", Listen.plain),
        public_port=t.integer("public_port", 443, 1, 65535),
        redirect_status=t.integer("redirect_status", 308),
    )
    if listen.redirect_status not in REDIRECT_STATUSES:
        t.error("redirect_status", f"must be one of 301, 302, 307, 308, got {listen.redirect_status}")
    bound = [a for a in listen.https + listen.http + listen.plain if a.port != 0]
    for address in sorted({a for a in bound if bound.count(a) > 1}):
        problems.append(Problem(label, "listen", f"{address} is listed more than once"))
    t.finish()

    t = top.table("tls")
    tls = DefaultTls(t.string("min_version", "TLSv1.2", TLS_VERSIONS), t.path("cert", base), t.path("key", base))
    if (tls.cert is None) != (tls.key is None):
        t.error("key" if tls.key is None else "cert", "cert and key go together")
    t.finish()

    t = top.table("forwarded")
    networks = []
    for text in t.strings("trusted_proxies", ()):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            t.error("trusted_proxies", f"not an IP network (like 10.0.0.0/8 or 192.0.2.7), got {show(text)}")
    t.finish()

    t = top.table("acme")
    challenge_dir = t.path("challenge_dir", base, want="directory")
    t.finish()

    t = top.table("server")
    workers = t.get("workers", 1)
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256):
        t.error("workers", f'must be an integer from 1 to 256 or "auto", got {show(workers)}')
        workers = 1
    t.finish()

    t = top.table("timeouts")
    timeouts = Timeouts(*(t.seconds(n, getattr(Timeouts, n)) for n in Timeouts.__dataclass_fields__))
    t.finish()

    t = top.table("limits")
    limits = Limits(
        max_header_bytes=t.integer("max_header_bytes", 16384, 1024, 1 << 20),
        max_body_bytes=t.integer("max_body_bytes", 0),
        max_connections=t.integer("max_connections", 0),
    )
    t.finish()

    t = top.table("admin")
    admin_text = t.string("listen", "127.0.0.1:9100")
    admin = parse_address(admin_text) if admin_text else None
    if admin_text and admin is None:
        t.error("listen", f'must be "host:port" or "" (off), got {show(admin_text)}')
    t.finish()

    t = top.table("log")
    log_format = t.string("format", "json", ("json", "text"))
    t.finish()
    top.finish()
    return ProxySettings(
        listen=listen,
        tls=tls,
        trusted_proxies=tuple(networks),
        acme_challenge_dir=challenge_dir,
        workers=workers,
        timeouts=timeouts,
        limits=limits,
        admin_listen=admin,
        log_format=log_format,
    )


def header_table(table: Table, name: str) -> dict[str, str]:
    """A `[headers.set]` or `[headers.default]` table, each entry checked as a header would be."""
    sub = table.table(name)
    found: dict[str, str] = {}
    for header, value in sub.data.items():
        sub.known.append(header)
        if not is_token(header):
            sub.error(header, "not a valid header name (RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)")
            continue
        if header.lower() in _COMPUTED:
            sub.error(header, f"set by the proxy itself: configure it in {_COMPUTED[header.lower()]}")
            continue
        if header.lower() in _FRAMING:
            sub.error(header, "frames or describes the body; setting it would corrupt responses")
            continue
        if not isinstance(value, str):
            sub.error(header, f"must be a string, got {show(value)}")
            continue
        bad = bad_value_chars(value)
        verdict = check(header, [value])
        if bad is not None or verdict.value is None:
            sub.error(header, f"invalid value {show(value)}: {bad or verdict.problem}")
            continue
        if header.lower() in {n.lower() for n in found}:
            sub.error(header, "given twice (header names are case-insensitive)")
            continue
        found[header] = value
    return found


#: A DNS name or an IP address literal as yarl gives it (IPv6 without brackets).
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?|[0-9a-fA-F:.]+")


def _valid_server_name(name: str) -> bool:
    """A name TLS can send as SNI and verify: DNS syntax, and labels IDNA accepts (at most 63 bytes)."""
    if not _NAME.fullmatch(name):
        return False
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


def load_site(path: Path, problems: list[Problem]) -> Site | None:
    label = f"sites/{path.name}"
    data = read_toml(path, label, problems)
    if data is None:
        return None
    before = len(problems)
    top = Table(problems, label, data)
    base = path.parent

    hosts = tuple(h.lower().rstrip(".") for h in top.strings("hosts", ()))
    if "hosts" not in data:
        top.error("hosts", 'missing: list the host names this site answers, e.g. hosts = ["crm.example.com"]')
    elif not hosts:
        top.error("hosts", "must name at least one host")
    for host in hosts:
        if not re.fullmatch(
            r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\]", host
        ):
            top.error("hosts", f"not a host name (no scheme, port or path), got {show(host)}")

    upstream_text = top.string("upstream", "")
    upstream = URL("http://invalid")
    if "upstream" not in data:
        top.error("upstream", 'missing: the address of IIS or Tomcat, e.g. upstream = "http://iis.internal:80"')
    elif upstream_text:
        try:
            upstream = URL(upstream_text)
            valid = upstream.scheme in ("http", "https") and _NAME.fullmatch(upstream.host or "") is not None
            valid = valid and upstream.port != 0
        except (ValueError, TypeError):
            valid = False
        if not valid:
            top.error("upstream", f"must be an http:// or https:// URL with a host, got {show(upstream_text)}")
        elif upstream.user is not None or upstream.password is not None:
            top.error("upstream", "must not hold a user name or password (the client's Authorization passes through)")
        elif upstream.raw_path not in ("", "/") or upstream.query_string or upstream.fragment:
            top.error("upstream", f"must be an origin without path or query, got {show(upstream_text)}")
        upstream = upstream.with_path("/") if valid else URL("http://invalid")

    paths = top.strings("paths", ("/",))
    for prefix in paths:
        if not prefix.startswith("/"):
            top.error("paths", f'each prefix must start with "/", got {show(prefix)}')
    if not paths:
        top.error("paths", 'must hold at least one prefix, e.g. ["/"]')
    preserve_host = top.boolean("preserve_host", True)
    origins = top.strings("websocket_origins", ())
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            top.error("websocket_origins", f"must be origins like https://crm.example.com, got {show(origin)}")

    t = top.table("tls")
    site_tls = SiteTls(t.path("cert", base), t.path("key", base), t.path("pfx", base), t.string("pfx_password_env", ""))
    if site_tls.pfx is not None and site_tls.cert is not None:
        t.error("pfx", "give either cert and key, or pfx, not both")
    if (site_tls.cert is None) != (site_tls.key is None):
        t.error("key" if site_tls.key is None else "cert", "cert and key go together")
    if site_tls.pfx_password_env and site_tls.pfx is None:
        t.error("pfx_password_env", "only applies with pfx")
    t.finish()

    t = top.table("upstream_tls")
    upstream_tls = UpstreamTls(t.boolean("verify", True), t.path("ca", base), t.string("server_name", ""))
    if upstream_tls.server_name and not _valid_server_name(upstream_tls.server_name):
        t.error("server_name", f"not a host name, got {show(upstream_tls.server_name)}")
    t.finish()

    t = top.table("headers")
    profile = t.string("profile", "sage-guide", tuple(PROFILES))
    remove = t.strings("remove", ())
    for name in remove:
        stem = name[:-1] if name.endswith("*") else name
        if not is_token(stem):
            t.error("remove", f'not a header name or a prefix like "X-AspNet*", got {show(name)}')
        elif any(f.startswith(stem.lower()) if name.endswith("*") else f == stem.lower() for f in _FRAMING):
            t.error("remove", f"{show(name)} frames the response body; removing it would corrupt responses")
    set_headers = header_table(t, "set")
    default_headers = header_table(t, "default")
    t.finish()

    t = top.table("hsts")
    hsts = Hsts(
        max_age=t.integer("max_age", 31536000),
        include_subdomains=t.boolean("include_subdomains", False),
        preload=t.boolean("preload", False),
        force=t.boolean("force", False),
    )
    if hsts.preload and (hsts.max_age < 31536000 or not hsts.include_subdomains):
        t.error("preload", "the preload list requires max_age >= 31536000 and include_subdomains = true")
    t.finish()

    t = top.table("cookies")
    cookies = CookieFlags(
        t.boolean("secure", True), t.boolean("http_only", True), t.string("same_site", "Lax", SAME_SITE)
    )
    if cookies.same_site == "None" and not cookies.secure:
        t.error("same_site", "SameSite=None needs secure = true (browsers reject such cookies otherwise)")
    t.finish()
    top.finish()
    if len(problems) > before:
        return None
    upstream_ssl: ssl.SSLContext | bool = True
    if upstream.scheme == "https":
        try:
            upstream_ssl = upstream_context(verify=upstream_tls.verify, ca=upstream_tls.ca)
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(label, "upstream_tls.ca", f"not a usable PEM CA bundle: {exc}"))
            return None
    policy = Policy.build(
        profile=profile, set=set_headers, default=default_headers, remove=remove, hsts=hsts.value, cookies=cookies
    )
    return Site(
        name=path.stem,
        file=label,
        hosts=hosts,
        upstream=upstream,
        paths=paths,
        preserve_host=preserve_host,
        websocket_origins=origins,
        tls=site_tls,
        upstream_tls=upstream_tls,
        profile=profile,
        hsts=hsts,
        policy=policy,
        upstream_origin=str(upstream.origin()),
        upstream_ssl=upstream_ssl,
    )


def claims(site: Site) -> Iterator[tuple[str, str]]:
    for host in site.hosts:
        for prefix in site.paths:
            yield host, prefix


def load_config(directory: Path | str) -> Config:
    """Read and validate everything; raise ConfigError listing every problem."""
    directory = Path(directory)
    problems: list[Problem] = []
    if not directory.is_dir():
        raise ConfigError([Problem(str(directory), "", "not a directory (give --config DIR)")])
    proxy = load_proxy(directory / "proxy.toml", problems)
    site_files = sorted((directory / "sites").glob("*.toml"))
    if not site_files:
        problems.append(Problem("sites/", "", "no site files (sites/*.toml): nothing to serve"))
    sites = [s for s in (load_site(p, problems) for p in site_files) if s is not None]
    owners: dict[tuple[str, str], Site] = {}
    for site in sites:
        for claim in claims(site):
            other = owners.setdefault(claim, site)
            if other is not site:
                problems.append(
                    Problem(
                        site.file,
                        "paths",
                        f"host {show(claim[0])} with prefix {show(claim[1])} is also claimed by {other.file}",
                    )
                )
    hsts_of: dict[str, Site] = {}
    for site in sites:
        for host in site.hosts:
            first = hsts_of.setdefault(host, site)
            if first.hsts != site.hsts:  # a browser keeps whichever it saw last: one host, one policy
                problems.append(Problem(site.file, "hsts", f"host {show(host)} has a different [hsts] in {first.file}"))
    certificates, certificate_warnings = load_certificates(proxy, sites, problems)
    if problems:
        raise ConfigError(problems)
    warnings = []
    for site in sites:
        if site.upstream.scheme == "https" and not site.upstream_tls.verify:
            warnings.append(f"{site.file}: upstream_tls.verify: false: the upstream's certificate is NOT checked")
    warnings += certificate_warnings
    sites = hsts_guard(proxy, sites, certificates, warnings)
    return Config(
        directory=directory, proxy=proxy, sites=tuple(sites), warnings=tuple(warnings), certificates=certificates
    )


def _source(file: str, cert: Path | None, key: Path | None, pfx: Path | None = None, env: str = "") -> tls.Source:
    """A declaration whose files exist (missing ones are already reported by `Table.path`), else an empty one."""
    paths = [p for p in (cert, key, pfx) if p is not None]
    if not all(p.is_file() for p in paths):
        return tls.Source(file)
    return tls.Source(file, cert, key, pfx, env)


def load_certificates(
    proxy: ProxySettings, sites: list[Site], problems: list[Problem]
) -> tuple[Certificates, list[str]]:
    """Load and check every certificate: errors go to `problems`, expiring ones come back as warnings."""
    default = _source("proxy.toml", proxy.tls.cert, proxy.tls.key)
    declared = [(_source(s.file, s.tls.cert, s.tls.key, s.tls.pfx, s.tls.pfx_password_env), s.hosts) for s in sites]
    certificates, errors, notes = tls.load_all(default, declared, proxy.tls.min_version)
    problems.extend(Problem(*error) for error in errors)
    warnings = [str(Problem(*note)) for note in notes]
    if proxy.listen.https and not certificates.all() and not errors:
        warnings.append(
            "proxy.toml: listen.https: no certificate is configured ([tls] cert/key here, or [tls] in a site file): "
            "the https listeners refuse every TLS handshake until one is added and the configuration reloaded"
        )
    return certificates, warnings


def hsts_guard(proxy: ProxySettings, sites: list[Site], certificates: Certificates, warnings: list[str]) -> list[Site]:
    """Withhold HSTS while a site's certificate would not validate (Sage: HSTS only once a valid one is installed).

    Only when this proxy terminates TLS: behind a balancer (`listen.plain` only) the certificate is not ours to judge.
    `max_age = 0`, the kill switch, is always sent.
    """
    if not proxy.listen.https:
        return sites
    guarded = []
    for site in sites:
        trouble = tls.hsts_trouble(certificates, site.hosts)
        if trouble is None or site.hsts.max_age == 0 or site.policy.hsts is None:
            guarded.append(site)
        elif site.hsts.force:
            warnings.append(f"{site.file}: hsts.force: sending Strict-Transport-Security although {trouble}")
            guarded.append(site)
        else:
            warnings.append(
                f"{site.file}: hsts: Strict-Transport-Security withheld: {trouble} (hsts.force = true sends it anyway)"
            )
            guarded.append(replace(site, policy=replace(site.policy, hsts=None)))
    return guarded
