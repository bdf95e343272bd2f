"""The stacked file system of an image: later layers win, whiteouts delete, links resolve
inside the container root."""

from __future__ import annotations

from occlum_rules.stages.oci.fsview import ImageFS


def _fs(*layers: list[list]) -> ImageFS:
    fs = ImageFS()
    for i, entries in enumerate(layers):
        fs.apply(i, entries)
    return fs


def test_links_resolve_inside_the_container_root():
    fs = _fs([["lib", "symlink", 0o777, "usr/lib"],
              ["usr/lib/x86_64-linux-gnu/libc.so.6", "file", 0o755, ""],
              ["lib64", "symlink", 0o777, "/usr/lib/x86_64-linux-gnu"],
              ["escape", "symlink", 0o777, "../../../usr/lib"],
              ["loop", "symlink", 0o777, "loop"]])
    assert fs.resolve("lib/x86_64-linux-gnu/libc.so.6") == "usr/lib/x86_64-linux-gnu/libc.so.6"
    assert fs.find_file("lib64/libc.so.6")[0] == "usr/lib/x86_64-linux-gnu/libc.so.6"
    assert fs.resolve("escape/x86_64-linux-gnu") == "usr/lib/x86_64-linux-gnu"  # '..' stops at /
    assert fs.resolve("loop") is None
    assert fs.find_file("usr/lib") is None  # a directory, not a file
    assert fs.resolve("usr/lib/nothing") is None


def test_later_layers_replace_and_whiteouts_delete():
    base = [["etc/a", "file", 0o644, ""], ["etc/b", "file", 0o644, ""],
            ["opt/x/1", "file", 0o644, ""], ["bin/sh", "file", 0o755, ""]]
    fs = _fs(base, [["etc/.wh.a", "file", 0o644, ""], ["opt/x/.wh..wh..opq", "file", 0, ""],
                    ["opt/x/2", "file", 0o644, ""], ["bin/sh", "symlink", 0o777, "dash"],
                    ["bin/dash", "file", 0o755, ""]])
    assert fs.kind("etc/a") is None and fs.kind("etc/b") == "file"
    assert fs.kind("opt/x/1") is None and fs.kind("opt/x/2") == "file"
    assert fs.find_file("bin/sh")[0] == "bin/dash"
    assert fs.entries["bin/dash"].layer == 1
