"""A real PostgreSQL on loopback, for BuildGrid's execution scheduler.

BuildGrid keeps its job queue, bot sessions and leases in PostgreSQL, so the remote
execution tests start Debian's ``postgresql`` server in a temporary directory: ``initdb``
with trust authentication on 127.0.0.1 only, ``pg_ctl start`` on a free port, and
``pg_ctl stop -m immediate`` at teardown (nothing in it outlives the test module).

PostgreSQL refuses to run as root, and CI runs the suite as root: there the server runs as
``nobody`` (``setpriv``), its data directory chowned to it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.nginx import free_port

UNPRIVILEGED = "nobody"
DATABASE = "bgd"


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<N>/bin`` holding initdb and pg_ctl (Debian's layout),
    else the directory of ``pg_ctl`` on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                        else 0, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        bindir = Path(candidate)
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


@dataclass
class Postgres:
    bindir: Path
    datadir: Path
    port: int
    user: str  # the database superuser (initdb's --username)

    def url(self, database: str = DATABASE, scheme: str = "postgresql") -> str:
        """A libpq URL; ``scheme`` can name an SQLAlchemy driver (``postgresql+psycopg2``)."""
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.datadir.parent / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """pg_ctl's immediate stop; the postmaster killed outright when that fails, so no
        server outlives its test module (a CI run must not leave one behind)."""
        result = _run_as_owner([str(self.bindir / "pg_ctl"), "stop", "-m", "immediate", "-w",
                                "-t", "30", "-D", str(self.datadir)], check=False)
        pidfile = self.datadir / "postmaster.pid"
        if result.returncode != 0 and pidfile.exists():
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


def _demote() -> list[str]:
    """The prefix that runs a command as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("running as root and setpriv is missing: PostgreSQL refuses root")
    return [setpriv, f"--reuid={UNPRIVILEGED}", f"--regid={pwd.getpwnam(UNPRIVILEGED).pw_gid}",
            "--clear-groups"]


def _run_as_owner(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/tmp"}
    result = subprocess.run([*_demote(), *argv], env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=120, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}): "
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def start_postgres(workdir: Path, bindir: Path) -> Postgres:
    """initdb + pg_ctl start on a free loopback port, and a ``bgd`` database."""
    workdir.mkdir(parents=True, exist_ok=True)
    datadir = workdir / "data"
    if os.geteuid() == 0:
        owner = pwd.getpwnam(UNPRIVILEGED)
        # the server must reach its data dir through the temp dirs above it
        for parent in workdir.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    user = "postgres"
    _run_as_owner([str(bindir / "initdb"), "-D", str(datadir), "-U", user, "-A", "trust",
                   "-E", "UTF8", "--no-sync"])
    last = ""
    for _ in range(3):  # the free port can be taken between choosing and binding it
        port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        result = _run_as_owner([str(bindir / "pg_ctl"), "start", "-w", "-t", "60",
                                "-D", str(datadir), "-l", str(workdir / "postgres.log"),
                                "-o", options], check=False)
        if result.returncode == 0:
            server = Postgres(bindir, datadir, port, user)
            try:
                _run_as_owner([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                               "-U", user, DATABASE])
            except BaseException:
                server.stop()
                raise
            return server
        last = (workdir / "postgres.log").read_text(errors="replace") \
            if (workdir / "postgres.log").exists() else result.stderr
        if "address" not in last.lower():
            break
        time.sleep(0.2)
    raise RuntimeError(f"PostgreSQL did not start: {last[-3000:]}")


def require_postgres() -> Path:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL not found (Debian package postgresql: initdb, pg_ctl) — "
                    "the remote execution tests need it for BuildGrid's scheduler")
    return bindir


@pytest.fixture(name="postgres", scope="module")
def postgres_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"), require_postgres())
    try:
        yield server
    finally:
        server.stop()
