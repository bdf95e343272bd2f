"""Remote execution end to end: real BuildGrid (scheduler on PostgreSQL) and two
``occlum-rules worker`` processes build the examples; the result is the local build's."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from occlum_rules.core.doit_bridge import load_graph
from occlum_rules.core.reapi_action import remote_ineligible
from occlum_rules.core.remote_exec import ENV_INSTANCE, ENV_URL
from tests.core.test_remote_build import files_of
from tests.rules.test_cargo_debian import DEBIAN_CARGO, MISSING
from tests.support.buildgrid import BuildGrid, buildgrid_execution_fixture  # noqa: F401
from tests.support.postgres import postgres_fixture  # noqa: F401
from tests.support.workspace import REPO, copy_examples, report, run_cli, run_doit

# Every example this machine can build locally (the README's quick start installs what all of
# them need); the ones needing Go, Debian's redis-server or Debian's Rust crates only where
# those are installed, so a test run without them still covers the rest.
EXAMPLES = ["hello_c", "multi_c", "hello_rust", "enclave_lib", "python_host"] + \
    (["hello_go"] if shutil.which("go") else []) + \
    (["redis_host"] if Path("/usr/bin/redis-server").is_file() else []) + \
    (["seed_service"] if DEBIAN_CARGO.is_file() and not MISSING else [])
SIGNING_KEY = REPO / "occlum_rules" / "templates" / "dev-signing-key.pem"


@contextlib.contextmanager
def workers(server: BuildGrid, workspace: Path, tmp: Path, count: int = 2) -> Iterator[None]:
    procs = []
    try:
        for i in range(count):
            log = open(tmp / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "occlum_rules", "worker", "--server", server.url,
                 "--instance", server.instance, "--workspace", str(workspace), "--jobs", "1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log), log))
        yield
    finally:
        for proc, log in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _with_image_key(root: Path, key: bytes) -> None:
    """hello_c with an encrypted image: the image key is a secret of its pack and initfs."""
    (root / "examples" / "hello_c" / "image_key").write_bytes(key)
    build = root / "examples" / "hello_c" / "BUILD.py"
    build.write_text(build.read_text().replace(
        'bom = ":image",', 'bom = ":image",\n    image_key = "image_key",'))


def _remote_build(server: BuildGrid, root: Path, tmp: Path) -> tuple[dict, object]:
    env = {ENV_URL: server.url, ENV_INSTANCE: server.instance}
    with workers(server, root, tmp):
        result = run_doit(root, "-n", "2", cache=tmp / "store-remote", env=env)
    logs = "".join((tmp / f"worker-{i}.log").read_text(errors="replace") for i in range(2))
    assert result.returncode == 0, result.output + logs
    assert "switched off" not in result.output and "not taken" not in result.output, \
        result.output + logs
    assert "run remotely" in result.stdout
    return report(root), result


def _actions(root: Path) -> tuple[dict[str, object], set[str], set[str]]:
    _, graph = load_graph(root)
    actions = {a.id: a for a in graph.actions}
    eligible = {i for i, a in actions.items() if remote_ineligible(a) is None}
    secret = {i for i, a in actions.items() if a.secrets}
    return actions, eligible, secret


def test_examples_build_remotely_byte_identical_to_local(buildgrid_execution: BuildGrid,
                                                         tmp_path: Path) -> None:
    local = copy_examples(tmp_path / "local", EXAMPLES)
    result = run_doit(local, "-n", "2", cache=tmp_path / "store-local")
    assert result.returncode == 0, result.output

    remote = copy_examples(tmp_path / "elsewhere" / "remote", EXAMPLES)
    rep, _ = _remote_build(buildgrid_execution, remote, tmp_path)
    outcomes = {a["id"]: a["outcome"] for a in rep["actions"]}
    _, eligible, secret = _actions(remote)
    assert {i for i, o in outcomes.items() if o == "run_remote"} == eligible
    assert rep["actions_run_remote"] == len(eligible) > 0
    assert secret and all(outcomes[i] == "run" for i in secret)
    assert files_of(remote) == files_of(local)


def test_no_secret_and_no_action_holding_one_reaches_the_server(
        buildgrid_execution: BuildGrid, tmp_path: Path) -> None:
    """hello_c with an encrypted image (its SEFS pack uses random IVs, as Occlum's does, so
    this build is not compared byte for byte): the image key and the signing key stay here."""
    made = run_cli("gen-image-key", str(tmp_path / "image_key"))
    assert made.returncode == 0, made.output
    image_key = (tmp_path / "image_key").read_bytes()
    remote = copy_examples(tmp_path / "remote", EXAMPLES)
    _with_image_key(remote, image_key)
    rep, _ = _remote_build(buildgrid_execution, remote, tmp_path)
    outcomes = {a["id"]: a["outcome"] for a in rep["actions"]}
    _, eligible, secret = _actions(remote)
    assert "//examples/hello_c:instance:pack-image" in secret
    assert all(outcomes[i] == "run" for i in secret)

    sent: set[str] = set()
    signing = SIGNING_KEY.read_bytes()
    for path in buildgrid_execution.blob_paths():
        data = path.read_bytes()
        assert image_key.strip() not in data, path
        assert signing.strip() not in data and signing.split(b"\n")[1] not in data, path
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            doc = json.loads(data)
            if isinstance(doc, dict) and "package_inputs" in doc:
                sent.add(doc["id"])
    # (the module's server also holds the plain build's actions: the same ids are eligible)
    assert sent and sent <= eligible and not sent & secret
