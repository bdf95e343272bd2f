"""Looking up a node of the image model: the direct lookup planning uses for plain paths
gives what the general walk (links followed chroot-style, "." and "..") gives."""

from __future__ import annotations

import itertools

import pytest

from occlum_rules.stages.bom.vtree import VFile, VTree


def _tree() -> VTree:
    tree = VTree()
    tree.mkdir_p("usr/lib/deep")
    tree.mkdir_p("etc")
    tree.copy_file("usr/lib/libc.so", "libc.so", VFile("/host/libc.so", 0o755), "test")
    tree.copy_file("etc/hosts", "hosts", VFile("/host/hosts", 0o644), "test")
    tree.symlink("lib", "usr/lib")  # relative, to a directory
    tree.symlink("usr/lib/abs", "/etc")  # absolute, from the image root
    tree.symlink("usr/lib/libc.so.6", "libc.so")  # to a file
    tree.symlink("loop", "loop")
    tree.symlink("dangling", "nowhere/at/all")
    return tree


NAMES = ["usr", "lib", "deep", "libc.so", "libc.so.6", "abs", "hosts", "etc", "loop",
         "dangling", "missing", ".", "..", ""]


@pytest.mark.parametrize("follow_last", [True, False])
def test_every_lookup_is_the_general_walks(follow_last):
    tree = _tree()
    for depth in (1, 2, 3):
        for parts in itertools.product(NAMES, repeat=depth):
            try:
                expected = tree._walk(list(parts), follow_last)[1]
            except LookupError:
                expected = None
            assert tree.node(list(parts), follow_last) is expected, parts
            assert tree.node("/".join(parts), follow_last) is tree.node(
                [p for p in parts if p], follow_last), parts


def test_plain_paths_find_files_and_miss_cleanly():
    tree = _tree()
    assert isinstance(tree.node("usr/lib/libc.so"), VFile)
    assert tree.node("usr/lib/libc.so/x") is None  # a file is not a directory
    assert tree.node("usr/nothing/x") is None
    assert tree.node("lib/libc.so") is tree.node("usr/lib/libc.so")  # through the link
    assert tree.node("usr/lib/abs/hosts") is tree.node("etc/hosts")
