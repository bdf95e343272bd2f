"""actions/go.py: go build with the engine's shared state directory as its cache."""

from __future__ import annotations

import shutil

import pytest

from occlum_rules.actions.go import build
from occlum_rules.errors import UserError
from occlum_rules.stages.elfcheck import pie_kind
from tests.actions.support import make_ctx

PARAMS = {"ldflags": [], "tags": [], "args": ["."], "cwd": "", "module": True, "cgo": False}


def test_go_build_makes_a_pie_and_caches_in_the_shared_state_dir(tmp_path):
    go = shutil.which("go")
    if go is None:
        pytest.skip("no go toolchain on this machine (a missing tool, not a missing module)")
    (tmp_path / "go.mod").write_text("module example.com/hello\n\ngo 1.19\n")
    (tmp_path / "main.go").write_text('package main\n\nfunc main() { println("hi") }\n')
    ctx = make_ctx(tmp_path, outputs=["out/hello"], params={**PARAMS, "go": go})
    build(ctx)
    assert pie_kind(tmp_path / "out/hello") in ("pie", "static-pie")
    assert (ctx.shared_state_dir / "cache").is_dir()  # GOCACHE: engine-chosen, per toolchain
    assert not any(ctx.state_dir.iterdir())  # nothing private


def test_a_missing_go_is_the_actions_error(tmp_path):
    ctx = make_ctx(tmp_path, outputs=["out/hello"], label="//go:hello",
                   params={**PARAMS, "go": "go", "missing": "no go toolchain found"})
    with pytest.raises(UserError, match="//go:hello: no go toolchain found"):
        build(ctx)
