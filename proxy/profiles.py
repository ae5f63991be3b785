"""The shipped header profiles, as data.

A profile is a starting point a site's `[headers]` table builds on: headers it sets, and headers it
removes. The README explains each value; `crm-proxy audit` explains how the two profiles differ.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    set: tuple[tuple[str, str], ...]
    remove: tuple[str, ...]
    summary: str


#: Upstream banners that tell an attacker which IIS, ASP.NET and Tomcat versions to look up.
SAGE_REMOVE = ("Server", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version")

#: OWASP Secure Headers Project, headers_remove.json, in its order.
OWASP_REMOVE = (
    "$wsep", "Host-Header", "K-Proxy-Request", "Liferay-Portal", "OracleCommerceCloud-Version", "Pega-Host",
    "Powered-By", "Product", "Server", "SourceMap", "X-AspNet-Version", "X-AspNetMvc-Version",
    "X-Atmosphere-error", "X-Atmosphere-first-request", "X-Atmosphere-tracking-id", "X-B3-ParentSpanId",
    "X-B3-Sampled", "X-B3-SpanId", "X-B3-TraceId", "X-BEServer", "X-Backside-Transport", "X-CF-Powered-By",
    "X-CMS", "X-CalculatedBETarget", "X-Cocoon-Version", "X-Content-Encoded-By", "X-Datadog-Origin",
    "X-Datadog-Parent-Id", "X-Datadog-Sampling-Priority", "X-Datadog-Tags", "X-Datadog-Trace-Id",
    "X-DiagInfo", "X-Envoy-Attempt-Count", "X-Envoy-External-Address", "X-Envoy-Internal",
    "X-Envoy-Original-Dst-Host", "X-Envoy-Upstream-Service-Time", "X-FEServer", "X-Framework",
    "X-Generated-By", "X-Generator", "X-Gitlab-Meta", "X-Jitsi-Release", "X-Joomla-Version",
    "X-Kong-Admin-Latency", "X-Kong-Client-Latency", "X-Kong-Proxy-Latency", "X-Kong-Request-Id",
    "X-Kong-Response-Latency", "X-Kong-Third-Party-Latency", "X-Kong-Total-Latency",
    "X-Kong-Upstream-Latency", "X-Kong-Upstream-Status", "X-Kubernetes-PF-FlowSchema-UI",
    "X-Kubernetes-PF-PriorityLevel-UID", "X-LiteSpeed-Cache", "X-LiteSpeed-Purge", "X-LiteSpeed-Tag",
    "X-LiteSpeed-Vary", "X-Litespeed-Cache-Control", "X-Mod-Pagespeed", "X-Nextjs-Cache",
    "X-Nextjs-Matched-Path", "X-Nextjs-Page", "X-Nextjs-Redirect", "X-OWA-Version", "X-Old-Content-Length",
    "X-OneAgent-JS-Injection", "X-Page-Speed", "X-Php-Version", "X-Powered-By", "X-Powered-By-Plesk",
    "X-Powered-CMS", "X-Redirect-By", "X-Server-Powered-By", "X-SourceFiles", "X-SourceMap",
    "X-Turbo-Charged-By", "X-Tyk-Trace-Id", "X-Umbraco-Version", "X-Varnish-Backend", "X-Varnish-Server",
    "X-Woodpecker-Version", "X-dtAgentId", "X-dtHealthCheck", "X-dtInjectedServlet", "X-ruxit-JS-Agent",
)  # fmt: skip

#: Features Sage CRM never uses; denying them limits what an injected script or a framed page can do.
OWASP_PERMISSIONS = (
    "accelerometer=(), autoplay=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), "
    "magnetometer=(), microphone=(), midi=(), payment=(), usb=(), xr-spatial-tracking=()"
)

PROFILES: dict[str, Profile] = {
    "sage-guide": Profile(
        name="sage-guide",
        set=(
            ("X-Frame-Options", "SAMEORIGIN"),
            ("X-XSS-Protection", "1; mode=block"),
            ("X-Content-Type-Options", "nosniff"),
        ),
        remove=SAGE_REMOVE,
        summary="Sage's 'Implementation of a Secure System' values, exactly",
    ),
    "owasp": Profile(
        name="owasp",
        set=(
            ("X-Frame-Options", "SAMEORIGIN"),
            ("X-XSS-Protection", "0"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "frame-ancestors 'self'"),
            ("Referrer-Policy", "same-origin"),
            ("Permissions-Policy", OWASP_PERMISSIONS),
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("X-Permitted-Cross-Domain-Policies", "none"),
        ),
        remove=OWASP_REMOVE,
        summary="current OWASP Secure Headers guidance, adapted so Sage CRM keeps working",
    ),
    "none": Profile(name="none", set=(), remove=(), summary="no headers set or removed by the profile"),
}
