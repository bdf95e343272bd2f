"""Output manifests as REAPI ActionResults: round trips, parsing with the stubs, refusals."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from occlum_rules.core import action_result as ar
from occlum_rules.core.digests import tree_digest, tree_entries
from occlum_rules.core.reapi_stubs import load_stubs

pb = load_stubs()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sample_manifest(tmp_path: Path) -> dict:
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "deep").mkdir(parents=True)
    (root / "bin" / "app").write_bytes(b"\x7fELF app")
    os.chmod(root / "bin" / "app", 0o755)
    (root / "lib" / "deep" / "libx.so").write_bytes(b"lib")
    (root / "lib" / "a.txt").write_bytes(b"a")
    os.chmod(root / "lib" / "deep", 0o700)
    os.symlink("deep/libx.so", root / "lib" / "libx.so.1")
    (root / "empty").mkdir()
    entries = tree_entries(root, None)
    data = b"file output"
    return {
        "outputs": [
            {"path": "out/bin/x/app", "type": "file", "mode": 0o555, "size": len(data),
             "sha256": sha(data), "digest": sha(data)},
            {"path": "out/bin/x/tree", "type": "dir", "entries": entries,
             "digest": "tree:" + tree_digest(entries)},
            {"path": "out/bin/x/link", "type": "symlink", "target": "app", "digest": "link:app"},
        ],
        "label": "//x:app", "kind": "cc_link", "dynamic": [["/usr/include/stdio.h", "ab" * 32]],
    }


def round_trip(manifest: dict) -> tuple[dict, dict[str, int]]:
    result, trees = ar.to_action_result(pb, manifest, {})
    parsed = pb.re.ActionResult()
    parsed.ParseFromString(ar.serialize(result))
    decoded, sizes = ar.from_action_result(pb, parsed, {sha(t): t for t in trees})
    return ar.order_outputs(decoded, [o["path"] for o in manifest["outputs"]]), sizes


def test_manifest_round_trips_through_an_action_result(tmp_path: Path) -> None:
    manifest = sample_manifest(tmp_path)
    decoded, sizes = round_trip(manifest)
    assert decoded == manifest
    assert sizes[manifest["outputs"][0]["sha256"]] == len(b"file output")


def test_action_result_is_standard_reapi(tmp_path: Path) -> None:
    manifest = sample_manifest(tmp_path)
    result, trees = ar.to_action_result(pb, manifest, {})
    parsed = pb.re.ActionResult.FromString(ar.serialize(result))
    (file_out,) = parsed.output_files
    assert file_out.path == "out/bin/x/app" and file_out.is_executable
    assert file_out.node_properties.unix_mode.value == 0o555
    (symlink,) = parsed.output_symlinks
    assert (symlink.path, symlink.target) == ("out/bin/x/link", "app")
    (directory,) = parsed.output_directories
    tree = pb.re.Tree.FromString(trees[0])
    assert directory.tree_digest.hash == sha(trees[0])
    assert directory.tree_digest.size_bytes == len(trees[0])
    assert [d.name for d in tree.root.directories] == ["bin", "empty", "lib"]
    children = {sha(c.SerializeToString(deterministic=True)): c for c in tree.children}
    lib = children[[d for d in tree.root.directories if d.name == "lib"][0].digest.hash]
    assert [f.name for f in lib.files] == ["a.txt"]
    assert [(s.name, s.target) for s in lib.symlinks] == [("libx.so.1", "deep/libx.so")]
    bin_dir = children[tree.root.directories[0].digest.hash]
    assert bin_dir.files[0].is_executable and bin_dir.files[0].digest.hash == sha(b"\x7fELF app")


def test_same_outputs_give_the_same_bytes(tmp_path: Path) -> None:
    manifest = sample_manifest(tmp_path)
    first = ar.to_action_result(pb, manifest, {})
    second = ar.to_action_result(pb, manifest, {})
    assert ar.serialize(first[0]) == ar.serialize(second[0]) and first[1] == second[1]


def test_action_digest_is_a_function_of_the_key() -> None:
    key = sha(b"key")
    action, command = ar.action_messages(pb, key)
    assert ar.action_messages(pb, key) == (action, command)
    assert ar.action_messages(pb, sha(b"other"))[0] != action
    parsed = pb.re.Action.FromString(action)
    assert parsed.command_digest.hash == sha(command) and parsed.salt == ar.SALT
    assert list(pb.re.Command.FromString(command).arguments) == [
        "occlum-rules", "cached-action", key]


def test_sizes_come_from_the_store_when_a_record_has_none() -> None:
    data = b"old manifest"
    manifest = {"outputs": [{"path": "o", "type": "file", "mode": 0o644, "sha256": sha(data),
                             "digest": sha(data)}]}
    result, _ = ar.to_action_result(pb, manifest, {sha(data): len(data)})
    assert result.output_files[0].digest.size_bytes == len(data)


@pytest.mark.parametrize("damage", ["missing child", "bad name", "failed action", "garbage tree"])
def test_results_that_are_not_ours_are_refused(tmp_path: Path, damage: str) -> None:
    manifest = sample_manifest(tmp_path)
    result, trees = ar.to_action_result(pb, manifest, {})
    tree = pb.re.Tree.FromString(trees[0])
    if damage == "missing child":
        del tree.children[0]
    elif damage == "bad name":
        tree.root.files.add(name="../escape", digest=pb.re.Digest(hash=sha(b""), size_bytes=0))
    elif damage == "failed action":
        result.exit_code = 1
    data = b"\xff\xff not a tree" if damage == "garbage tree" else ar.serialize(tree)
    result.output_directories[0].tree_digest.CopyFrom(ar.blob_digest(pb, data))
    with pytest.raises(ar.BadActionResult):
        ar.from_action_result(pb, result, {sha(data): data})


@pytest.mark.parametrize("digest", [("../../etc/passwd", 3), ("A" * 64, 3), ("ab" * 32, -1)])
def test_malformed_digests_are_refused(digest: tuple[str, int]) -> None:
    result = pb.re.ActionResult(output_files=[pb.re.OutputFile(
        path="out/f", digest=pb.re.Digest(hash=digest[0], size_bytes=digest[1]))])
    with pytest.raises(ar.BadActionResult, match="malformed digest"):
        ar.from_action_result(pb, result, {})
    result = pb.re.ActionResult(output_directories=[pb.re.OutputDirectory(
        path="out/d", tree_digest=pb.re.Digest(hash=digest[0], size_bytes=digest[1]))])
    with pytest.raises(ar.BadActionResult, match="malformed digest"):
        ar.tree_digests(result)
