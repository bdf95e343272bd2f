"""Nothing escapes: labels, sources, BOM targets, renames, links, cached manifests and package
members that point outside their tree are refused, and nothing is written outside the output
directory (the whole parent directory is snapshotted before and after).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.package import read_package
from tests.reliability.support import (
    build,
    diff,
    no_traceback,
    outputs,
    snapshot,
)
from tests.support.workspace import copy_examples, outcomes, run_doit

HELLO = "examples/hello_c/BUILD.py"


# doit imports dodo.py, so the interpreter caches its bytecode beside it (unless
# PYTHONDONTWRITEBYTECODE is set); that is Python's doing, not the build's.
_DODO_BYTECODE = re.compile(r"ws/__pycache__(/dodo\.cpython-\d+\.pyc)?")


def _changed(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k)
                  and not _DODO_BYTECODE.fullmatch(k)
                  and not any(k == a or k.startswith(a + "/") for a in allowed))


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory beside the workspace that nothing may ever write into."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.c").write_text("int main(void) { return 7; }\n")
    (d / "defs.py").write_text("X = 1\n")
    return d


# --------------------------------------------------------------------------- labels and sources

BAD_BUILD = {
    "source with ..": 'occlum_cc_binary(name = "x", srcs = ["../multi_c/adder.c"])',
    "source climbing inside": 'occlum_cc_binary(name = "x", srcs = ["a/../../multi_c/adder.c"])',
    "absolute source": 'occlum_cc_binary(name = "x", srcs = ["/etc/hostname"])',
    "header with ..": 'occlum_cc_library(name = "x", srcs = ["hello.c"], hdrs = ["../multi_c/greet.h"])',
    "label with ..": 'occlum_cc_binary(name = "x", srcs = ["hello.c"], deps = ["//../outside:x"])',
    "label with inner ..": 'occlum_cc_binary(name = "x", srcs = ["hello.c"], deps = ["//examples/../examples/multi_c:greet"])',
    "absolute label": 'occlum_cc_binary(name = "x", srcs = ["hello.c"], deps = ["/examples/multi_c:greet"])',
    "label name with ..": 'occlum_cc_binary(name = "x", srcs = ["hello.c"], deps = ["//examples/multi_c:../greet"])',
    "target name with ..": 'occlum_cc_binary(name = "../x", srcs = ["hello.c"])',
    "target name with /": 'occlum_cc_binary(name = "a/../../x", srcs = ["hello.c"])',
    "absolute target name": 'occlum_cc_binary(name = "/tmp/x", srcs = ["hello.c"])',
    "load with ..": 'load("//../outside:defs.py", "X")',
    "load absolute": 'load("/tmp/defs.py", "X")',
    "glob with ..": 'occlum_cc_binary(name = "x", srcs = glob(["../*/*.c"]))',
    "glob absolute": 'occlum_cc_binary(name = "x", srcs = glob(["/etc/*"]))',
    "bom source with ..": 'occlum_bom(name = "x", src = "../../WORKSPACE.yaml")',
    "bom image dir with ..": 'occlum_bom(name = "x", src = "hello.yaml", deps = {"/../../etc": ["hello.c"]})',
    "bom relative image dir": 'occlum_bom(name = "x", src = "hello.yaml", deps = {"bin": ["hello.c"]})',
    "absolute signing key": 'occlum_bom(name = "i", src = "hello.yaml")\n'
                            'occlum_instance(name = "x", bom = ":i", sign_key = "/etc/ssl/k.pem")',
    "signing key with ..": 'occlum_bom(name = "i", src = "hello.yaml")\n'
                           'occlum_instance(name = "x", bom = ":i", sign_key = "../k.pem")',
    "absolute image key": 'occlum_bom(name = "i", src = "hello.yaml")\n'
                          'occlum_instance(name = "x", bom = ":i", image_key = "/etc/machine-id")',
}


@pytest.fixture(scope="module")
def label_ws(tmp_path_factory):
    from occlum_rules.core.doit_bridge import load_graph

    ws = copy_examples(tmp_path_factory.mktemp("labels") / "ws", ["hello_c", "multi_c"])
    load_graph(ws)
    return ws


@pytest.mark.parametrize("case", sorted(BAD_BUILD))
def test_escaping_labels_and_sources_are_refused(label_ws, case):
    from occlum_rules.core.doit_bridge import load_graph

    (label_ws / HELLO).write_text(BAD_BUILD[case] + "\n")
    with pytest.raises(UserError) as info:
        load_graph(label_ws)
    assert "\n" not in str(info.value).strip(), str(info.value)


def test_symlinked_package_dir_and_glob_stay_inside(tmp_path, outside):
    """A glob does not follow a symlinked directory out of the workspace."""
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    os.symlink(outside, ws / "examples/hello_c/linked")
    (ws / HELLO).write_text('occlum_cc_binary(name = "x", srcs = glob(["**/*.c"]))\n')
    from occlum_rules.core.doit_bridge import load_graph

    _, graph = load_graph(ws)
    srcs = [a for a in graph.actions if a.kind == "cc.compile"]
    assert srcs and all("secret" not in " ".join(a.inputs) for a in srcs), \
        [a.inputs for a in srcs]


def test_refused_build_writes_nothing_outside_out(tmp_path, outside):
    """Through `doit build`: exit 1, one error line, the parent directory untouched."""
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    for text in (BAD_BUILD["source with .."], BAD_BUILD["bom image dir with .."],
                 'occlum_bom(name = "x", src = "evil.yaml")'):
        (ws / HELLO).write_text(text + "\n")
        (ws / "examples/hello_c/evil.yaml").write_text(
            "targets:\n  - target: /../../../../outside\n    mkdirs: [pwned]\n")
        before = snapshot(tmp_path)
        r = run_doit(ws, "build", cache=tmp_path / "cache")
        assert r.returncode == 1, r.output
        assert no_traceback(r.output) and "error" in r.output, r.output
        after = snapshot(tmp_path)
        assert not _changed(before, after, ("ws/out", "cache")), _changed(before, after,
                                                                       ("ws/out", "cache"))
    assert not (outside / "pwned").exists()


# --------------------------------------------------------------------------- BOMs

@pytest.fixture
def bom_work(tmp_path, outside):
    work = tmp_path / "work"
    src = work / "src"
    (src / "tree").mkdir(parents=True)
    (src / "conf.txt").write_text("conf\n")
    (src / "tree" / "a.txt").write_text("a\n")
    os.symlink(str(outside), src / "tree" / "out-link")  # an absolute link leaving the tree
    return work


BAD_BOMS = {
    "target climbing": "targets:\n  - target: /../../outside\n    mkdirs: [pwned]\n",
    "mkdir climbing": "targets:\n  - target: /\n    mkdirs: [../../outside/pwned]\n",
    "rename climbing": "targets:\n  - target: /bin\n    copy:\n      - files:\n"
                       "          - name: src/conf.txt\n            rename: ../../../outside/pwned\n",
    "absolute rename": "targets:\n  - target: /bin\n    copy:\n      - files:\n"
                       "          - name: src/conf.txt\n            rename: /tmp/pwned\n",
    "link name climbing": "targets:\n  - target: /\n    createlinks:\n"
                          "      - src: /bin\n        linkname: ../../outside/pwned\n",
    "relative link escaping": "targets:\n  - target: /etc\n    createlinks:\n"
                              "      - src: ../../../../outside\n        linkname: pwned\n",
}


def _copy_bom(bom: Path, image: Path, sync: bool = True):
    from occlum_rules.stages.bom import apply_plan, plan_bom

    plan = plan_bom(str(bom), [], None, env={}, root=str(image))
    return apply_plan(plan, str(image), sync=sync)


@pytest.mark.parametrize("case", sorted(BAD_BOMS))
def test_escaping_bom_entries_are_refused(tmp_path, bom_work, outside, case):
    bom = bom_work / "top.yaml"
    bom.write_text(BAD_BOMS[case])
    before = snapshot(tmp_path)
    with pytest.raises(UserError):
        _copy_bom(bom, bom_work / "image")
    after = snapshot(tmp_path)
    assert not _changed(before, after, ("work/image",)), _changed(before, after, ("work/image",))
    assert not list(outside.glob("pwned*")) and not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("sync", [True, False])
def test_bom_never_writes_through_links(tmp_path, bom_work, outside, sync):
    """A copied directory holding a link out of the tree, a later copy into that link's
    path, and a stale link already in the image: all stay inside the image."""
    image = bom_work / "image"
    image.mkdir()
    os.symlink(str(outside), image / "etc")  # left over from an earlier image
    bom = bom_work / "top.yaml"
    bom.write_text(
        "targets:\n"
        "  - target: /opt\n    copy:\n      - dirs: [src/tree]\n"
        "  - target: /opt/tree/out-link\n    copy:\n      - files: [src/conf.txt]\n"
        "  - target: /etc\n    copy:\n      - files: [src/conf.txt]\n")
    before = snapshot(tmp_path)
    try:
        _copy_bom(bom, image, sync=sync)
    except UserError:
        pass  # refusing is fine; writing outside is not
    after = snapshot(tmp_path)
    assert not _changed(before, after, ("work/image",)), _changed(before, after, ("work/image",))
    assert sorted(p.name for p in outside.iterdir()) == ["defs.py", "secret.c"]


# --------------------------------------------------------------------------- cached manifests

def _entry_of(cache: Path, kind: str) -> Path:
    for p in (cache / "ac").glob("*/*"):
        if json.loads(p.read_bytes()).get("kind") == kind:
            return p
    raise AssertionError(f"no {kind} entry in {cache}")


def _poison(entry: Path, change) -> None:
    data = json.loads(entry.read_bytes())
    change(data)
    data.pop("checksum", None)
    os.chmod(entry, 0o644)
    from occlum_rules.core.store import LocalStore

    # written the way the store writes entries, as a poisoned remote cache would deliver them
    LocalStore(entry.parents[2]).put_action(entry.name, data)


POISON = {
    "dir entry climbing": ("copy_bom", lambda m, blob: m["outputs"][0]["entries"].append(
        {"path": "../../../../../../pwned.txt", "type": "file", "mode": 420, "size": 1,
         "sha256": blob})),
    "file under a link": ("copy_bom", lambda m, blob: m["outputs"][0]["entries"].extend([
        {"path": "zz-link", "type": "symlink", "target": "OUTSIDE"},
        {"path": "zz-link/pwned.txt", "type": "file", "mode": 420, "size": 1, "sha256": blob}])),
    "output path climbing": ("cc.link", lambda m, blob: m["outputs"][0].update(
        path="../pwned.txt")),
    "absolute output path": ("cc.link", lambda m, blob: m["outputs"][0].update(
        path="OUTSIDE/pwned.txt")),
}


@pytest.fixture(scope="module")
def warm_hello(tmp_path_factory):
    base = tmp_path_factory.mktemp("poison-ref")
    first = copy_examples(base / "first", ["hello_c"])
    build(first, base / "cache")
    return base / "cache", outputs(first)


@pytest.mark.parametrize("case", sorted(POISON))
def test_poisoned_cache_manifest_cannot_write_outside(tmp_path, outside, warm_hello, case):
    """An action entry (e.g. from a shared remote cache) naming paths outside the action's
    outputs is refused and the action rebuilt; nothing lands outside out/."""
    cache = tmp_path / "cache"
    shutil.copytree(warm_hello[0], cache)
    clean = warm_hello[1]
    kind, change = POISON[case]
    blob = next(p.name for p in (cache / "cas").glob("*/*") if not p.name.startswith("."))

    def edit(manifest):
        change(manifest, blob)
        text = json.dumps(manifest).replace("OUTSIDE", str(outside))
        manifest.clear()
        manifest.update(json.loads(text))

    _poison(_entry_of(cache, kind), edit)
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    before = snapshot(tmp_path)
    result = run_doit(ws, "build", cache=cache)
    after = snapshot(tmp_path)
    assert not _changed(before, after, ("ws/out", "cache")), _changed(before, after,
                                                                   ("ws/out", "cache"))
    assert not list(outside.glob("pwned*")) and not (ws / "pwned.txt").exists()
    assert result.returncode == 0 and no_traceback(result.output), result.output
    assert outputs(ws) == clean, diff(clean, outputs(ws))
    assert any(o == "run" for a, o in outcomes(ws).items()), "the poisoned entry was used"


# --------------------------------------------------------------------------- package members

def _tar(tmp_path: Path, members: list[tuple[str, str, str]]) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra.encode()))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "dev": tarfile.CHRTYPE}[kind]
            info.linkname = extra
            tar.addfile(info)
    return path


BAD_PACKAGES = {
    "dotdot member": [("top", "dir", ""), ("top/../../pwned", "file", "x")],
    "absolute member": [("/tmp/pwned", "file", "x")],
    "second top": [("top", "dir", ""), ("other/pwned", "file", "x")],
    "link escaping": [("top", "dir", ""), ("top/image", "sym", "../../../etc")],
    "absolute link": [("top", "dir", ""), ("top/etc", "sym", "/etc")],
    "hard link out": [("top", "dir", ""), ("top/passwd", "hard", "/etc/passwd")],
    "device": [("top", "dir", ""), ("top/mem", "dev", "")],
}


@pytest.mark.parametrize("case", sorted(BAD_PACKAGES))
def test_escaping_package_members_are_refused(tmp_path, case):
    path = _tar(tmp_path, BAD_PACKAGES[case])
    before = snapshot(tmp_path)
    with pytest.raises(UserError):
        read_package(path)
    assert snapshot(tmp_path) == before


def test_checks_see_an_escape(tmp_path):
    """The snapshot comparison used above does report a file written beside the tree."""
    before = snapshot(tmp_path)
    (tmp_path / "pwned").write_text("x")
    assert _changed(before, snapshot(tmp_path), ("ws/out",)) == ["pwned"]
    shutil.rmtree(tmp_path / "pwned", ignore_errors=True)
