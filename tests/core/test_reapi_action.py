"""Actions as REAPI actions: the Command and input root run anywhere and make our bytes.

A real local build of examples/hello_c, then each remote-eligible action's input root is
materialized in a fresh directory and its Command run there as a worker runs it; its
outputs must equal the local build's byte for byte."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from occlum_rules.core.action import Action
from occlum_rules.core.action_state import read_state, recorded_dynamic
from occlum_rules.core.build_env import digest_cache
from occlum_rules.core.doit_bridge import build_env, load_graph
from occlum_rules.core.keys import input_digests
from occlum_rules.core.reapi_action import (
    DISCOVERED_PATH,
    PARAMS_PATH,
    remote_action,
    remote_ineligible,
)
from occlum_rules.core.reapi_platform import action_properties
from occlum_rules.core.reapi_stubs import load_stubs
from tests.support.reapi_worker_run import materialize, run_command
from tests.support.workspace import REPO, copy_examples, run_doit

pb = load_stubs()


def _built(root: Path, cache: Path) -> Path:
    copy_examples(root, ["hello_c"])
    result = run_doit(root, "build", cache=cache)
    assert result.returncode == 0, result.output
    return root


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("reapi-action")
    return (_built(base / "a", base / "store-a"),
            _built(base / "elsewhere" / "deeper" / "b", base / "store-b"))


def _remote(root: Path) -> dict[str, tuple[Action, object]]:
    ws, graph = load_graph(root)
    env = build_env(ws)
    found = {}
    for action in graph.actions:
        if action.label.startswith("//examples/hello_c") and remote_ineligible(action) is None:
            found[action.id] = (action, remote_action(pb, action, env.root,
                                                      input_digests(action, env),
                                                      digest_cache(env), env.source_date_epoch))
    return found


def _bytes_of(path: Path) -> object:
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return {str(p.relative_to(path)): _bytes_of(p) for p in sorted(path.rglob("*"))}
    return (path.read_bytes(), path.stat().st_mode & 0o111)


def test_eligibility_keeps_secrets_and_in_place_stages_local(checkouts) -> None:
    ws, graph = load_graph(checkouts[0])
    reasons = {a.id.rsplit(":", 1)[1]: remote_ineligible(a) for a in graph.actions
               if a.label.startswith("//examples/hello_c")}
    assert reasons["sign"] == "it uses a secret"
    assert "in place" in reasons["pack-image"] and "in place" in reasons["image"]
    for name in ("compile-hello.c", "link", "standin", "occlum-json", "config", "protect",
                 "patch", "layout", "initfs"):
        assert reasons[name] is None, (name, reasons[name])
    host = Action(id="//x:y:z", label="//x:y", name="z", kind="k", inputs=["/etc/hostname"],
                  outputs=["out/z"], output_types=["file"], func="m:f")
    assert remote_ineligible(host) == "it reads the host file /etc/hostname"
    host.inputs = ["out/x"]
    assert remote_ineligible(host) is None
    host.local_only = "it reads more than its inputs"
    assert remote_ineligible(host) == "it reads more than its inputs"


def test_an_oci_image_stays_local() -> None:
    """Its runtime check reads the whole built instance, which a worker would not have."""
    ws, graph = load_graph(REPO)
    images = [a for a in graph.actions if a.kind == "oci.image"]
    assert images
    for action in images:
        assert remote_ineligible(action) in ("its runtime check reads the whole built instance",
                                             "its outputs are not cacheable"), action.id


def test_commands_run_in_their_input_root_give_local_bytes(checkouts, tmp_path) -> None:
    root = checkouts[0]
    remote = _remote(root)
    env = build_env(load_graph(root)[0])
    kinds = {a.kind for a, _ in remote.values()}
    assert {"cc.compile", "cc.link", "config", "standin"} <= kinds, kinds
    for n, (action, ra) in enumerate(sorted(remote.values(), key=lambda x: x[0].id)):
        work = tmp_path / f"worker-{n}"
        materialize(pb, ra, work)
        # the root holds the declared workspace inputs and the parameters, nothing else
        shipped = {str(p.relative_to(work)) for p in work.rglob("*") if not p.is_dir()}
        assert PARAMS_PATH in shipped
        for path in action.inputs:
            if not os.path.isabs(path):
                assert (work / path).exists(), (action.id, path)
        assert not any(p.startswith("out/") and not any(p == i or p.startswith(i + "/")
                                                        for i in action.inputs)
                       for p in shipped), (action.id, shipped)
        proc = run_command(pb, ra, work)
        assert proc.returncode == 0, (action.id, proc.stderr)
        for rel in action.outputs:
            assert _bytes_of(work / rel) == _bytes_of(root / rel), (action.id, rel)
        # what it discovered is what the local run recorded
        discovered = json.loads((work / DISCOVERED_PATH).read_bytes())
        assert discovered == recorded_dynamic(read_state(env, action.id)), action.id


def test_input_roots_do_not_depend_on_the_checkout_path(checkouts) -> None:
    a, b = (_remote(root) for root in checkouts)
    assert a.keys() == b.keys() and a
    for action_id in a:
        assert a[action_id][1].root_digest == b[action_id][1].root_digest, action_id
        assert a[action_id][1].action_bytes == b[action_id][1].action_bytes, action_id


def test_the_action_asks_for_its_toolchains(checkouts) -> None:
    remote = _remote(checkouts[0])
    action, ra = next(v for v in remote.values() if v[0].kind == "cc.compile")
    message = pb.re.Action()
    message.ParseFromString(ra.action_bytes)
    assert [(p.name, p.value) for p in message.platform.properties] == \
        action_properties(action.toolchains)
    assert not message.do_not_cache
    command = pb.re.Command()
    command.ParseFromString(ra.command_bytes)
    assert list(command.arguments) == ["occlum-rules", "run-action", PARAMS_PATH]
    assert set(command.output_paths) == {*action.outputs, DISCOVERED_PATH}
    assert [(p.name, p.value) for p in command.platform.properties] == \
        action_properties(action.toolchains)


def test_a_package_file_that_differs_on_the_worker_is_refused(checkouts, tmp_path) -> None:
    remote = _remote(checkouts[0])
    action, ra = next(v for v in remote.values() if v[0].kind == "standin")
    work = tmp_path / "w"
    materialize(pb, ra, work)
    doc = json.loads((work / PARAMS_PATH).read_bytes())
    name = next(iter(doc["package_inputs"]))
    doc["package_inputs"][name] = "0" * 64
    (work / PARAMS_PATH).write_text(json.dumps(doc))
    proc = run_command(pb, ra, work)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {action.label}: {name} of this occlum-rules install differs from the "
        "client's; install the same release on the worker"]
