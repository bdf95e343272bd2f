"""actions/cargo.py: the target directory lives in the action's private state directory
and starts over when a dependency crate changed under the same version."""

from __future__ import annotations

from occlum_rules.actions import cargo
from occlum_rules.state_file import read_state
from tests.actions.support import make_ctx


def test_changed_dependency_files_drop_the_target_dir(tmp_path):
    ctx = make_ctx(tmp_path, outputs=["out/app"])
    dep = tmp_path / "registry" / "dep-1.0.0" / "src" / "lib.rs"
    dep.parent.mkdir(parents=True)
    dep.write_text("pub fn f() {}\n")
    target = ctx.state_dir / "target-x"
    target.mkdir()
    (target / "object.rlib").write_text("compiled from the old dep")
    cargo._record_deps(ctx, target, [str(dep)])
    # kept in the shared state framing
    assert isinstance(read_state(target / cargo._DEPS_RECORD, cargo._DEPS_KIND,
                                 cargo._DEPS_VERSION), memoryview)
    cargo._drop_stale_target(ctx, target)
    assert (target / "object.rlib").exists()  # nothing changed: kept
    dep.write_text("pub fn f() { /* patched */ }\n")
    ctx.digests = type(ctx.digests)(None)  # a new build (the digest cache is per process)
    cargo._drop_stale_target(ctx, target)
    assert not target.exists()


def test_a_damaged_record_is_ignored(tmp_path):
    ctx = make_ctx(tmp_path, outputs=["out/app"])
    target = ctx.state_dir / "target-x"
    target.mkdir()
    (target / cargo._DEPS_RECORD).write_bytes(b"garbage")
    cargo._drop_stale_target(ctx, target)
    assert target.exists()
