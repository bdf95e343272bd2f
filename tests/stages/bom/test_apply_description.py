"""apply_plan's own description of the image (what the engine takes instead of walking it)
is what walking it says, after a first build and after each kind of change."""

from __future__ import annotations

import hashlib
import marshal
import os
import shutil
from pathlib import Path

import pytest

from occlum_rules.core.digests import DigestCache, tree_entries
from occlum_rules.stages.bom import apply_plan, plan_bom
from occlum_rules.stages.bom.apply import tree_entries_of_image

from .test_plan_apply import HOST_CONFIG, write

BOM = """
targets:
  - target: /
    mkdirs: [bin/empty, etc]
    createlinks:
      - {src: /proc/self/mounts, linkname: etc/mtab}
      - {src: run.sh, linkname: bin/run}
    copy:
      - from: src
        dirs: [a, a-c]
      - dirs: [src/tree]
"""


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    write(tmp_path / "src" / "a" / "b.txt", "b\n")  # "a/b" sorts after "a-c" as bytes
    write(tmp_path / "src" / "a-c" / "d.txt", "d\n")
    write(tmp_path / "src" / "tree" / "x.txt", "x\n")
    write(tmp_path / "src" / "tree" / "run.sh", "#!/bin/sh\n", 0o755)
    write(tmp_path / "src" / "tree" / "ünï.bin", "u\n")
    (tmp_path / "src" / "tree" / "link").symlink_to("x.txt")
    write(tmp_path / "bom.yaml", BOM)
    return tmp_path


def _described(proj: Path, cache: DigestCache) -> tuple[list[dict], dict]:
    root = proj / "image"
    stamps: dict = {}
    cut = len(str(proj)) + 1
    result = apply_plan(plan_bom(proj / "bom.yaml", loader_config=HOST_CONFIG, env={}), root,
                        digests=cache, stamps=stamps, stamp_cut=cut)
    return tree_entries_of_image(result.manifest), stamps


def _walked(proj: Path, cache: DigestCache) -> tuple[list[dict], dict]:
    stamps: dict = {}
    entries = tree_entries(proj / "image", cache, stamps=stamps, stamp_cut=len(str(proj)) + 1)
    return entries, stamps


def _edit_source(proj: Path) -> None:
    write(proj / "src" / "tree" / "x.txt", "x, longer now\n")


def _chmod_output(proj: Path) -> None:
    os.chmod(proj / "image" / "tree" / "x.txt", 0o600)
    os.chmod(proj / "image" / "bin" / "empty", 0o700)


def _replace_outputs(proj: Path) -> None:
    image = proj / "image"
    (image / "tree" / "x.txt").unlink()
    (image / "tree" / "x.txt").mkdir()  # a directory where a file belongs
    shutil.rmtree(image / "a")
    (image / "a").write_text("a file where a directory belongs\n")
    (image / "etc" / "mtab").unlink()
    (image / "etc" / "mtab").symlink_to("elsewhere")
    (image / "extra").mkdir()
    (image / "extra" / "stale.txt").write_text("not in the plan\n")
    os.mkfifo(image / "bin" / "fifo")


def _remove_source(proj: Path) -> None:
    (proj / "src" / "tree" / "ünï.bin").unlink()


@pytest.mark.parametrize("change", [None, _edit_source, _chmod_output, _replace_outputs,
                                    _remove_source])
def test_the_description_is_the_walk(proj: Path, change) -> None:
    cache = DigestCache(None)
    entries, stamps = _described(proj, cache)
    assert (entries, stamps) == _walked(proj, cache)
    if change is not None:
        change(proj)
        entries, stamps = _described(proj, cache)
        assert (entries, stamps) == _walked(proj, cache)
    marshal.dumps(entries, 4)  # what an action record keeps: plain values only
    assert {e["type"] for e in entries} == {"file", "dir", "symlink"}


def test_a_chmod_alone_is_seen_in_the_stamps(proj: Path) -> None:
    cache = DigestCache(None)
    _, before = _described(proj, cache)
    _chmod_output(proj)
    _, after = _described(proj, cache)  # apply puts the modes back: the stamps say so
    assert after == _walked(proj, cache)[1]
    assert after["image/bin/empty"][2] == before["image/bin/empty"][2]



def test_copies_are_exact_and_see_the_elf_magic_only_where_it_is(tmp_path: Path) -> None:
    """Files are copied through one reused buffer: a short file after a long one must not
    see the long one's bytes."""
    from occlum_rules.stages.bom.apply import _write_file

    contents = [b"\x7fELF" + bytes(range(256)) * 5000, b"\x7fELF", b"\x7fEL", b"", b"x",
                os.urandom((1 << 20) + 3)]
    for i, data in enumerate(contents):
        src = tmp_path / f"src{i}"
        src.write_bytes(data)
        copied = _write_file(str(src), str(tmp_path), f"dst{i}", 0o644, new=True)
        assert (tmp_path / f"dst{i}").read_bytes() == data
        assert copied.sha256 == hashlib.sha256(data).hexdigest() and copied.size == len(data)
        assert copied.elf == data.startswith(b"\x7fELF")


def test_an_image_bigger_than_the_copy_queue_is_recorded_file_by_file(tmp_path: Path) -> None:
    """New files are copied on worker threads in batches and recorded on the caller's: with
    more files than the queue holds, every file still has its own digest, stamp and place in
    the written list (in walk order), and the description is the walk."""
    from occlum_rules.stages.bom.apply import COPY_BATCH, copy_threads

    rng = __import__("random").Random(7)
    count = COPY_BATCH * (2 * copy_threads() + 3) + 5
    for i in range(count):
        data = (b"\x7fELF" if i % 97 == 0 else b"") + rng.randbytes(rng.randrange(0, 9000))
        path = tmp_path / "src" / "tree" / f"d{i % 7}" / f"f{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    write(tmp_path / "bom.yaml", "targets:\n  - target: /\n    copy:\n      - dirs: [src/tree]\n")
    cache = DigestCache(None)
    root = tmp_path / "image"
    stamps: dict = {}
    result = apply_plan(plan_bom(tmp_path / "bom.yaml", loader_config=HOST_CONFIG, env={}), root,
                        digests=cache, stamps=stamps, stamp_cut=len(str(tmp_path)) + 1)
    files = [i for i in result.manifest if i["type"] == "file"]
    assert len(files) == count
    for item in files:
        source = tmp_path / "src" / item["path"]
        data = source.read_bytes()
        assert (root / item["path"]).read_bytes() == data
        assert item["sha256"] == hashlib.sha256(data).hexdigest() and item["size"] == len(data)
        assert cache.known(str(root / item["path"])) == item["sha256"]
        assert result.sources_read[str(source)] == item["sha256"]
    walked = [e["path"] for e in tree_entries(root, DigestCache(None))]
    assert result.written == walked  # directories and files, each once, in walk order
    entries = tree_entries_of_image(result.manifest)
    assert (entries, stamps) == _walked(tmp_path, cache)
