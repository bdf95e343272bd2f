"""A real BuildGrid server on loopback: CAS, ByteStream, ActionCache and Capabilities, and
with ``postgres`` also Execution, Operations and Bots (remote execution).

The gRPC cache tests talk to the REAPI server a team would deploy, not to a mock. Those
services need no database: blobs go to a ``!disk-storage`` directory in the test's temp
dir (so a test can damage one on the server's disk), action results to an in-memory LRU.

The execution variant (``buildgrid_execution``) adds BuildGrid's SQL scheduler on a real
PostgreSQL (``tests/support/postgres.py``), with a short bot keepalive so that the lease of
a bot that stops answering is requeued within seconds. Its dynamic property set matches
the keys of ``core/reapi_platform.py``.

``bgd`` comes from the test virtualenv (``pip install -e '.[test]'`` installs BuildGrid on
Python 3.11+) or from ``OCCLUM_RULES_TEST_BGD``, the path of a ``bgd`` installed elsewhere
(BuildGrid needs Python 3.11; ``.ci/run`` prepares one for the 3.10 run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.nginx import free_port
from tests.support.postgres import Postgres, postgres_fixture  # noqa: F401 (a fixture)

ENV_BGD = "OCCLUM_RULES_TEST_BGD"
INSTANCE = "main"

CONFIG = """\
server:
  - !channel
    address: "127.0.0.1:{port}"
{channel}
storages:
  - !disk-storage &cas
    path: {storage}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
instances:
  - name: "{instance}"
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""


EXECUTION_CONNECTIONS = """\
connections:
  - !sql-connection &sql
    connection-string: {database}
    pool-size: 5
    max-overflow: 10
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    property-set: !dynamic-property-set
      match-property-keys: [{match_keys}]
    bot-session-keepalive-timeout: {keepalive}
    session-expiry-timer-interval: 1.0
    poll-interval: 0.2
    bot-poll-interval: 0.2
    max-job-attempts: 5
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.05
        jitter-factor: 0.01
"""

EXECUTION_SERVICE = """\
      - !execution
        scheduler: *scheduler
        operation-stream-keepalive-timeout: 5
"""

# How long a bot may stay silent before BuildGrid reaps it and requeues its leases.
BOT_KEEPALIVE = 6

INSECURE = "    insecure-mode: true"
MTLS = """\
    insecure-mode: false
    credentials:
      tls-server-key: {dir}/server.key
      tls-server-cert: {dir}/server.pem
      tls-client-certs: {dir}/ca.pem"""


@dataclass
class TlsMaterial:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"


def make_tls(directory: Path) -> TlsMaterial:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(f"test {role}"))
                   .issuer_name(ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if role == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, directory / f"{role}.key")
    return TlsMaterial(directory)


def find_bgd() -> str | None:
    """The ``bgd`` to run: $OCCLUM_RULES_TEST_BGD, else the one beside this Python."""
    configured = os.environ.get(ENV_BGD, "").strip()
    if configured:
        return configured
    beside = Path(sys.executable).parent / "bgd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("bgd")


@dataclass
class BuildGrid:
    port: int
    workdir: Path
    storage: Path
    process: subprocess.Popen[bytes]
    instance: str = INSTANCE
    tls: TlsMaterial | None = None

    @property
    def url(self) -> str:
        scheme = "grpcs" if self.tls else "grpc"
        return f"{scheme}://127.0.0.1:{self.port}"

    def blob_path(self, digest: str) -> Path:
        """Where ``!disk-storage`` keeps a blob (``cas/objects/<2>/<62>``)."""
        return self.storage / "cas" / "objects" / digest[:2] / digest[2:]

    def blob_paths(self) -> list[Path]:
        return sorted(p for p in (self.storage / "cas" / "objects").rglob("*") if p.is_file())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.workdir / "bgd.log").read_text(errors="replace")

    def stop(self) -> None:
        """Kill the server: it keeps nothing worth a graceful stop (SIGTERM takes seconds)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _ready(port: int, process: subprocess.Popen[bytes], deadline: float,
           tls: TlsMaterial | None) -> bool:
    """True once GetCapabilities answers (the port alone opens before the services)."""
    import grpc
    from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
        remote_execution_pb2,
        remote_execution_pb2_grpc,
    )

    address = f"127.0.0.1:{port}"
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(
            tls.ca.read_bytes(), tls.client_key.read_bytes(), tls.client_cert.read_bytes()))
    with channel:
        stub = remote_execution_pb2_grpc.CapabilitiesStub(channel)
        request = remote_execution_pb2.GetCapabilitiesRequest(instance_name=INSTANCE)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                stub.GetCapabilities(request, timeout=1.0, wait_for_ready=True)
                return True
            except grpc.RpcError:
                time.sleep(0.1)
    return False


def execution_config(database: str, keepalive: int = BOT_KEEPALIVE) -> tuple[str, str]:
    """(top-level sections, instance service) that add remote execution to :data:`CONFIG`."""
    from occlum_rules.core import reapi_platform

    keys = ", ".join(f'"{k}"' for k in (reapi_platform.OS_FAMILY, reapi_platform.ISA,
                                        reapi_platform.ENGINE, reapi_platform.TOOLCHAIN))
    return (EXECUTION_CONNECTIONS.format(database=database, match_keys=keys,
                                         keepalive=keepalive), EXECUTION_SERVICE)


def start_buildgrid(workdir: Path, bgd: str, startup_timeout: float = 60.0,
                    tls: TlsMaterial | None = None, database: str | None = None) -> BuildGrid:
    """BuildGrid on a free loopback port; with ``tls``, only mTLS clients get in; with
    ``database`` (a PostgreSQL URL), also Execution + Bots on BuildGrid's SQL scheduler."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra_sections = extra_service = ""
    if database is not None:
        migrate = subprocess.run([bgd, "migrate", "apply", database], capture_output=True,
                                 text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)
        if migrate.returncode != 0:
            raise RuntimeError(f"bgd migrate apply failed: {migrate.stdout}{migrate.stderr}")
        extra_sections, extra_service = execution_config(database)
    channel = MTLS.format(dir=tls.dir) if tls else INSECURE
    storage = workdir / "storage"
    last = ""
    for _ in range(3):  # the free port can be taken between choosing and binding it
        port = free_port()
        config = workdir / "bgd.yml"
        text = CONFIG.format(port=port, storage=storage, instance=INSTANCE, channel=channel)
        text = text.replace("instances:\n", extra_sections + "instances:\n", 1) + extra_service
        config.write_text(text)
        with open(workdir / "bgd.log", "wb") as log:
            process = subprocess.Popen([bgd, "server", "start", str(config)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       cwd=workdir)
        if _ready(port, process, time.monotonic() + startup_timeout, tls):
            return BuildGrid(port, workdir, storage, process, tls=tls)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        last = (workdir / "bgd.log").read_text(errors="replace")
        if "address" not in last.lower():
            break
    raise RuntimeError(f"BuildGrid did not start: {last[-3000:]}")


def require_bgd() -> str:
    bgd = find_bgd()
    if bgd is None:
        pytest.skip("BuildGrid's bgd not found (pip install -e '.[test]' on Python 3.11+, or set "
                    f"{ENV_BGD}) — REAPI tests skipped")
    return bgd


@pytest.fixture(name="buildgrid", scope="module")
def buildgrid_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildGrid]:
    """A BuildGrid for the tests of one module (it takes a few seconds to start): tests
    use keys and blobs of their own."""
    server = start_buildgrid(tmp_path_factory.mktemp("buildgrid"), require_bgd())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="buildgrid_execution", scope="module")
def buildgrid_execution_fixture(tmp_path_factory: pytest.TempPathFactory,
                                postgres: Postgres) -> Iterator[BuildGrid]:
    """A BuildGrid that executes: CAS, ByteStream, ActionCache, Execution, Operations and
    Bots, its scheduler on the module's PostgreSQL. It has no workers of its own: tests
    start ``occlum-rules worker`` processes against it."""
    server = start_buildgrid(tmp_path_factory.mktemp("buildgrid-exec"), require_bgd(),
                             # psycopg2: BuildGrid's notifier LISTENs with its poll()
                             database=postgres.url(scheme="postgresql+psycopg2"))
    try:
        yield server
    finally:
        server.stop()
