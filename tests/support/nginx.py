"""A real nginx, started unprivileged in a temporary directory, serving a WebDAV cache.

The remote-cache tests talk to the same server a team would deploy (nginx with
``dav_methods PUT``), not to a mock. Everything nginx writes (pid, logs, request-body temp
files, the stored blobs) stays under one temp directory, and it listens on a free
loopback port, so tests can run in parallel and leave nothing behind.

Locations served under ``root``:

- ``/cache/``    open read/write cache;
- ``/private/``  read/write behind basic auth (``basic_auth=(user, password)``);
- ``/readonly/`` anonymous read, basic auth for writes (a common CI setup);
- ``/token/``    read/write only with ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Credentials the fixture server accepts; random per test session.
NGINX_TEST_USER = "ci"
NGINX_TEST_PASSWORD = "s3cret-Pa55-" + secrets.token_hex(6)
NGINX_TEST_TOKEN = "tok-" + secrets.token_hex(12)

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

_LOG_FORMAT = '$connection $connection_requests $request_method "$uri" $status $request_length'
_LOG_LINE = re.compile(r'^(\d+) (\d+) (\S+) "([^"]*)" (\d{3}) (\d+)$')


def find_nginx() -> str | None:
    """Path of an nginx binary, or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry nginx understands: salted SHA-1 (``{SSHA}``), made in Python."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return f"{user}:{{SSHA}}{base64.b64encode(digest + salt).decode('ascii')}\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AccessEntry:
    connection: int
    connection_requests: int
    method: str
    uri: str
    status: int
    request_length: int


@dataclass
class NginxCache:
    """A running nginx cache server and where its files are."""

    port: int
    workdir: Path
    root: Path
    process: subprocess.Popen[bytes]
    access_log: Path
    error_log: Path
    locations: tuple[str, ...] = field(default=("cache",))

    def url(self, location: str = "cache") -> str:
        return f"http://127.0.0.1:{self.port}/{location}"

    def stored_path(self, kind: str, key: str, location: str = "cache") -> Path:
        """Where nginx keeps ``/<location>/<kind>/<key>`` on disk."""
        return self.root / location / kind / key

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def access_entries(self, at_least: int = 0, timeout: float = 2.0) -> list[AccessEntry]:
        """The access log, parsed. nginx logs a request just *after* answering it, so a
        test that has its answer may have to wait ``at_least`` entries into the log."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self._read_access_log()
            if len(entries) >= at_least or time.monotonic() > deadline:
                return entries
            time.sleep(0.01)

    def _read_access_log(self) -> list[AccessEntry]:
        entries = []
        if not self.access_log.exists():
            return entries
        for line in self.access_log.read_text().splitlines():
            match = _LOG_LINE.match(line)
            if match:
                conn, nreq, method, uri, status, length = match.groups()
                entries.append(
                    AccessEntry(int(conn), int(nreq), method, uri, int(status), int(length))
                )
        return entries

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config(
    workdir: Path,
    root: Path,
    port: int,
    *,
    htpasswd: Path | None,
    bearer_token: str | None,
) -> str:
    tmp = workdir / "tmp"
    dav = "dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw;"
    lines = []
    if os.geteuid() == 0:
        # Workers would otherwise drop to "nobody" and could not write the temp dir.
        import grp
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        lines.append(f"user {user} {group};")
    lines += [
        "worker_processes 1;",
        "daemon off;",
        f"pid {_quote(workdir / 'nginx.pid')};",
        f"error_log {_quote(workdir / 'error.log')} notice;",
        "events { worker_connections 256; }",
        "http {",
        "    default_type application/octet-stream;",
        f"    log_format occlum '{_LOG_FORMAT}';",
        f"    access_log {_quote(workdir / 'access.log')} occlum;",
        f"    client_body_temp_path {_quote(tmp / 'client_body')};",
        f"    proxy_temp_path {_quote(tmp / 'proxy')};",
        f"    fastcgi_temp_path {_quote(tmp / 'fastcgi')};",
        f"    uwsgi_temp_path {_quote(tmp / 'uwsgi')};",
        f"    scgi_temp_path {_quote(tmp / 'scgi')};",
        "    client_max_body_size 0;",
        "    keepalive_timeout 30s;",
        "    server {",
        f"        listen 127.0.0.1:{port};",
        "        server_name localhost;",
        f"        root {_quote(root)};",
        f"        location /cache/ {{ {dav} }}",
    ]
    if htpasswd is not None:
        auth = f'auth_basic "occlum cache"; auth_basic_user_file {_quote(htpasswd)};'
        lines += [
            f"        location /private/ {{ {dav} {auth} }}",
            f"        location /readonly/ {{ {dav} limit_except GET HEAD {{ {auth} }} }}",
        ]
    if bearer_token is not None:
        if not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", bearer_token):
            raise ValueError("test bearer token must be a plain token68 string")
        lines.append(
            f'        location /token/ {{ {dav} if ($http_authorization != "Bearer {bearer_token}")'
            " { return 401; } }"
        )
    lines += ["    }", "}", ""]
    return "\n".join(lines)


def _wait_listening(port: int, process: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@functools.cache
def _knows_error_log_option(nginx: str) -> bool:
    """nginx 1.19.5 added ``-e`` (Ubuntu 22.04 ships 1.18, which refuses it)."""
    proc = subprocess.run([nginx, "-h"], capture_output=True, text=True, errors="replace")
    return "-e filename" in proc.stdout + proc.stderr


def _early_error_log(nginx: str, error_log: Path) -> list[str]:
    """Where nginx logs before it reads the config (its built-in path may not be writable)."""
    return ["-e", str(error_log)] if _knows_error_log_option(nginx) else []


def start_nginx(
    workdir: Path,
    *,
    basic_auth: tuple[str, str] | None = None,
    bearer_token: str | None = None,
    startup_timeout: float = 5.0,
) -> NginxCache:
    """Start nginx serving a WebDAV cache from ``workdir``; stop it with ``.stop()``."""
    nginx = find_nginx()
    if nginx is None:
        raise FileNotFoundError("nginx is not installed")
    workdir = Path(workdir)
    root = workdir / "data"
    root.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    htpasswd = None
    if basic_auth is not None:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(htpasswd_line(*basic_auth))
    locations = ["cache"]
    if basic_auth is not None:
        locations += ["private", "readonly"]
    if bearer_token is not None:
        locations.append("token")
    conf = workdir / "nginx.conf"
    error_log = workdir / "error.log"
    last_error = ""
    for _ in range(3):  # the free port can be taken between choosing and binding it
        port = free_port()
        conf.write_text(_config(workdir, root, port, htpasswd=htpasswd, bearer_token=bearer_token))
        stderr_path = workdir / "stderr.log"
        with open(stderr_path, "wb") as stderr_file:
            process = subprocess.Popen(
                [nginx, "-p", str(workdir), "-c", str(conf), *_early_error_log(nginx, error_log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr_file,
            )
        if _wait_listening(port, process, time.monotonic() + startup_timeout):
            return NginxCache(
                port=port,
                workdir=workdir,
                root=root,
                process=process,
                access_log=workdir / "access.log",
                error_log=error_log,
                locations=tuple(locations),
            )
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
        stderr = stderr_path.read_text(errors="replace")
        log = error_log.read_text(errors="replace") if error_log.exists() else ""
        last_error = (stderr + log).strip()
        if "Address already in use" not in last_error:
            break
    raise RuntimeError(f"nginx did not start: {last_error[-2000:]}")


def require_nginx() -> str:
    """The nginx path, or skip the test saying why."""
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx) — real-server tests skipped")
    return nginx


@pytest.fixture(name="nginx_cache")
def nginx_cache_fixture(tmp_path: Path) -> Iterator[NginxCache]:
    """A fresh nginx WebDAV cache for one test (basic auth and bearer token set up).

    Import it into a test module (``from tests.support.nginx import nginx_cache_fixture``)
    and ask for ``nginx_cache``. Skips, saying why, when nginx is not installed.
    """
    require_nginx()
    server = start_nginx(
        tmp_path / "nginx",
        basic_auth=(NGINX_TEST_USER, NGINX_TEST_PASSWORD),
        bearer_token=NGINX_TEST_TOKEN,
    )
    try:
        yield server
    finally:
        server.stop()
