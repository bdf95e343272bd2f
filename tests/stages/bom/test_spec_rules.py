"""copy_bom rules from the spec that the vectors do not cover, on real directory trees.

Spec: ../shared/specs/copy-bom.md. The cases that showed these rules with the real tool
(11_excludes, 23_files_entry_is_dir) are not among the vectors, so the expectations below come
from the spec text (cited per test) and, where the rule is plain rsync, from running rsync.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from occlum_rules.stages.bom import apply_plan, plan_bom

from .helpers import need_tool


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tree_of(root: Path) -> list[str]:
    """Every path below ``root`` (dirs end in '/'), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out.append(os.path.normpath(os.path.join(rel, d)) + "/")
        for f in filenames:
            out.append(os.path.normpath(os.path.join(rel, f)))
    return sorted(out)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    write(s / "tree" / "keep.txt", "k\n")
    write(s / "tree" / "sub" / "a.log", "log\n")
    write(s / "tree" / "b.tmp", "tmp\n")
    write(s / "adir" / "f.txt", "f\n")
    write(s / "adir" / "sub" / "g.txt", "g\n")
    return s


# copy-bom.md §2 (`excludes`: "only for `dirs` copies of THIS file") and §5 ("an including
# BOM's excludes do not apply to included BOMs and vice versa").
def test_excludes_apply_only_to_dirs_copies_of_the_declaring_bom(tmp_path: Path, src: Path) -> None:
    write(tmp_path / "bom.yaml", """
includes: [child.yaml]
excludes: ['*.log']
targets:
  - target: /top
    copy:
      - from: src
        dirs: [tree]
""")
    write(tmp_path / "child.yaml", """
excludes: ['*.tmp']
targets:
  - target: /child
    copy:
      - from: src
        dirs: [tree]
""")
    plan = plan_bom(tmp_path / "bom.yaml", loader_config=None)
    apply_plan(plan, tmp_path / "image")
    img = tmp_path / "image"
    # the top BOM's pattern removes *.log from its own copy only ...
    assert not (img / "top/tree/sub/a.log").exists()
    assert (img / "child/tree/sub/a.log").is_file()
    # ... and the included BOM's pattern removes *.tmp from its own copy only
    assert not (img / "child/tree/b.tmp").exists()
    assert (img / "top/tree/b.tmp").is_file()
    assert (img / "top/tree/keep.txt").is_file() and (img / "child/tree/keep.txt").is_file()
    # an excluded file leaves its (now empty) directory in place (§7: non-matching empty dirs stay)
    assert (img / "top/tree/sub").is_dir()


# copy-bom.md §2: excludes are for `dirs` copies; a `files` entry is copied with `rsync -aL`
# without --exclude (§7), so a directory listed under `files` keeps matching names.
def test_excludes_do_not_touch_files_entries(tmp_path: Path, src: Path) -> None:
    write(src / "adir" / "x.log", "x\n")
    write(tmp_path / "bom.yaml", """
excludes: ['*.log']
targets:
  - target: /t
    copy:
      - from: src
        files: [adir]
""")
    apply_plan(plan_bom(tmp_path / "bom.yaml", loader_config=None), tmp_path / "image")
    assert (tmp_path / "image/t/adir/adir/x.log").is_file()


# copy-bom.md §7: "a directory given in `files` is copied RECURSIVELY and one level deeper
# (`T/adir/adir/...`)" -- that is rsync -aL SRC T/adir for a directory SRC.
@pytest.mark.parametrize("premade", [False, True], ids=["dest-absent", "dest-is-a-dir"])
def test_directory_under_files_lands_one_level_deeper(tmp_path: Path, src: Path, premade: bool) -> None:
    mk = "    mkdirs: [adir]\n" if premade else ""
    write(tmp_path / "bom.yaml", f"""
targets:
  - target: /t
{mk}    copy:
      - from: src
        files: [adir]
""")
    apply_plan(plan_bom(tmp_path / "bom.yaml", loader_config=None), tmp_path / "image")
    ours = tree_of(tmp_path / "image" / "t")
    assert "adir/adir/f.txt" in ours and "adir/adir/sub/g.txt" in ours
    assert not any(p.startswith("adir/adir/adir") for p in ours), ours

    # the same as rsync itself does
    need_tool("rsync")
    ref = tmp_path / "ref"
    (ref / "adir" if premade else ref).mkdir(parents=True)
    subprocess.run(["rsync", "-aL", str(src / "adir"), str(ref / "adir")], check=True)
    assert ours == tree_of(ref)


# copy-bom.md §3 (basenames ignore a trailing '/') and §7 (a src with '/' copies its contents):
# `files: [adir/]` fills T/adir with the contents of adir.
def test_directory_under_files_with_trailing_slash_copies_its_contents(tmp_path: Path, src: Path) -> None:
    write(tmp_path / "bom.yaml", """
targets:
  - target: /t
    copy:
      - from: src
        files: [adir/]
""")
    apply_plan(plan_bom(tmp_path / "bom.yaml", loader_config=None), tmp_path / "image")
    ours = tree_of(tmp_path / "image" / "t")
    assert ours == ["adir/", "adir/f.txt", "adir/sub/", "adir/sub/g.txt"]
    need_tool("rsync")
    ref = tmp_path / "ref"
    ref.mkdir()
    subprocess.run(["rsync", "-aL", str(src / "adir") + "/", str(ref / "adir")], check=True)
    assert ours == tree_of(ref)
