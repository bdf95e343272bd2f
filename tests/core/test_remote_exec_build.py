"""Remote execution end to end: real BuildGrid (scheduler on PostgreSQL) and two
``occlum-rules worker`` processes build the examples; the result is the local build's."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from occlum_rules.core.doit_bridge import load_graph
from occlum_rules.core.reapi_action import remote_ineligible
from occlum_rules.core.remote_exec import ENV_INSTANCE, ENV_URL
from tests.core.test_remote_build import files_of
from tests.support.buildgrid import BuildGrid, buildgrid_execution_fixture  # noqa: F401
from tests.support.examples import buildable_examples
from tests.support.postgres import postgres_fixture  # noqa: F401
from tests.support.reapi_worker import lease_started, running_workers
from tests.support.workspace import REPO, copy_examples, report, run_cli, run_doit

EXAMPLES = buildable_examples()
SIGNING_KEY = REPO / "occlum_rules" / "templates" / "dev-signing-key.pem"


def _with_image_key(root: Path, key: bytes) -> None:
    """hello_c with an encrypted image: the image key is a secret of its pack and initfs."""
    (root / "examples" / "hello_c" / "image_key").write_bytes(key)
    build = root / "examples" / "hello_c" / "BUILD.py"
    build.write_text(build.read_text().replace(
        'bom = ":image",', 'bom = ":image",\n    image_key = "image_key",'))


def _remote_build(server: BuildGrid, root: Path, tmp: Path) -> tuple[dict, object]:
    env = {ENV_URL: server.url, ENV_INSTANCE: server.instance}
    with running_workers(server, tmp / "workers", workspace=root) as workers:
        result = run_doit(root, "-n", "2", cache=tmp / "store-remote", env=env)
    logs = "".join(w.log() for w in workers)
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


def test_a_worker_killed_mid_build_costs_a_retry_not_the_build(
        buildgrid_execution: BuildGrid, tmp_path: Path) -> None:
    """hello_rust's cargo build (seconds long) is the first action sent: the worker that takes
    it is killed while it runs; BuildGrid hands the lease to the other worker, the build
    finishes, and what it produced is the local build's, byte for byte."""
    names = ["hello_rust"]
    local, remote = (copy_examples(tmp_path / side, names) for side in ("local", "remote"))
    for root in (local, remote):  # an action the module's server has not cached yet
        main = root / "examples" / "hello_rust" / "src" / "main.rs"
        main.write_text(main.read_text() + "// a worker is killed building this\n")
    result = run_doit(local, cache=tmp_path / "store-local")
    assert result.returncode == 0, result.output

    env = {ENV_URL: buildgrid_execution.url, ENV_INSTANCE: buildgrid_execution.instance}
    with running_workers(buildgrid_execution, tmp_path / "workers", workspace=remote) as workers, \
            ThreadPoolExecutor(1) as pool:
        pending = pool.submit(run_doit, remote, cache=tmp_path / "store-remote", env=env)
        victim, lease = lease_started(workers, time.monotonic() + 120)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        result = pending.result(timeout=600)
    (survivor,) = [w for w in workers if w is not victim]
    assert result.returncode == 0, result.output + survivor.log()
    assert f"lease {lease}: completed" not in victim.log()
    assert f"lease {lease}: completed" in survivor.log(), survivor.log()
    outcomes = {a["id"]: a["outcome"] for a in report(remote)["actions"]}
    _, eligible, _ = _actions(remote)
    assert {i for i, o in outcomes.items() if o == "run_remote"} == eligible
    assert files_of(remote) == files_of(local)
