# crm-proxy container image (docs/container-sidecar.md).
#
#   docker build -t crm-proxy .
#   docker run -d --name crm-proxy -p 80:8080 -p 443:8443 \
#     -v "$PWD/examples/docker/config:/etc/crm-proxy:ro" crm-proxy
#
# The configuration directory (proxy.toml, sites/, certs/) is mounted read-only at /etc/crm-proxy;
# its listeners must be the unprivileged ports 8080 (HTTP) and 8443 (HTTPS), published as 80 and 443.

ARG PYTHON_VERSION=3.13

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
# Dependencies from wheels only: aiohttp must bring its compiled HTTP parser (the pure-Python
# fallback behaves differently on malformed requests); the build fails if it did not.
RUN python -m venv /opt/crm-proxy \
    && /opt/crm-proxy/bin/pip install --no-cache-dir --only-binary=:all: . \
    && /opt/crm-proxy/bin/python -c "import sys, aiohttp.http_parser as p; \
sys.exit(p.HttpRequestParser.__module__ != 'aiohttp._http_parser')"

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 crm-proxy \
    && useradd --system --uid 10001 --gid crm-proxy --no-create-home --shell /usr/sbin/nologin crm-proxy
COPY --from=build /opt/crm-proxy /opt/crm-proxy
ENV PATH=/opt/crm-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CRM_PROXY_HEALTHZ=http://127.0.0.1:9100/healthz
USER 10001:10001
EXPOSE 8080 8443
# No curl in the image: the health check is Python's own HTTP client, bypassing any HTTP_PROXY setting.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(os.environ['CRM_PROXY_HEALTHZ'], timeout=4)"]
ENTRYPOINT ["crm-proxy"]
CMD ["serve", "--config", "/etc/crm-proxy"]
