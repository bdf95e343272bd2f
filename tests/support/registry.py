"""A real OCI registry for tests: Debian's ``docker-registry`` (the CNCF distribution
registry) on 127.0.0.1, storage in a temporary directory, optionally behind htpasswd auth.

The htpasswd file needs bcrypt: ``htpasswd -B`` from apache2-utils (debian-packages.txt
installs it), else the C library's ``crypt`` (glibc/libxcrypt on Debian make ``$2b$``
hashes), which Python up to 3.12 still exposes.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")
needs_registry = pytest.mark.skipif(
    REGISTRY is None, reason="docker-registry is not installed (apt-get install docker-registry;"
                             " debian-packages.txt lists it)")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed "
                                  "(apt-get install skopeo; debian-packages.txt lists it)")


@dataclass
class RunningRegistry:
    host: str        # 127.0.0.1:PORT
    storage: Path
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bcrypt_htpasswd(user: str, password: str) -> str:
    """One ``user:$2…`` line, made by ``htpasswd -B`` or libc's bcrypt."""
    tool = shutil.which("htpasswd")
    if tool:
        out = subprocess.run([tool, "-nbB", user, password], check=True, capture_output=True,
                             text=True).stdout
        return out.strip() + "\n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:  # Python 3.13 removed the module
        pytest.skip("no bcrypt available for an htpasswd file: install apache2-utils "
                    "(htpasswd), as debian-packages.txt does")
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("no bcrypt available for an htpasswd file (install apache2-utils)")
    return f"{user}:{hashed}\n"


@contextmanager
def run_registry(root: Path, users: dict[str, str] | None = None) -> Iterator[RunningRegistry]:
    """Start ``docker-registry serve`` on a free port; stop it (and wait) afterwards."""
    assert REGISTRY is not None
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ""
    if users:
        htpasswd = root / "htpasswd"
        htpasswd.write_text("".join(bcrypt_htpasswd(u, p) for u, p in users.items()))
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    config = root / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root / 'storage'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{auth}""")
    log = root / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield RunningRegistry(f"127.0.0.1:{port}", root / "storage", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
