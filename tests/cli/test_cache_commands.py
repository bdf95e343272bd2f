"""`occlum-rules cache stats|gc|verify`, `explain` and `graph` on a real build."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.core.test_build import checkout
from tests.support.workspace import run_cli, run_doit


@pytest.fixture
def built(tmp_path):
    ws = checkout(tmp_path / "ws")
    cache = tmp_path / "cache"
    result = run_doit(ws, "build", cache=cache)
    assert result.returncode == 0, result.output
    return ws, cache


def cli(ws, cache, *args):
    return run_cli(*args, cwd=ws, env={"OCCLUM_RULES_CACHE": str(cache)})


def test_stats_counts_entries_and_reports_hit_rate(built):
    ws, cache = built
    result = cli(ws, cache, "cache", "stats")
    assert result.returncode == 0, result.output
    assert "action entries: 8" in result.stdout
    assert "last build:     8 run, 0 local hits" in result.stdout


def test_verify_finds_and_removes_a_corrupted_blob(built):
    ws, cache = built
    assert cli(ws, cache, "cache", "verify").returncode == 0
    blob = next(p for p in (cache / "cas").rglob("*") if p.is_file())
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes() + b"!")
    result = cli(ws, cache, "cache", "verify")
    assert result.returncode == 1
    assert f"corrupt blob removed: {blob.name}" in result.stdout
    assert not blob.exists()
    assert cli(ws, cache, "cache", "verify").returncode == 0


def test_gc_keeps_what_kept_entries_need(built):
    ws, cache = built
    result = cli(ws, cache, "cache", "gc", "--max-size", "20K")
    assert result.returncode == 0, result.output
    kept = [json.loads(p.read_bytes()) for p in (cache / "ac").rglob("*") if p.is_file()]
    assert 0 < len(kept) < 8
    for entry in kept:
        for out in entry["outputs"]:
            if out["type"] == "file":
                blob = cache / "cas" / out["sha256"][:2] / out["sha256"]
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == out["sha256"]
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert size <= 20 * 1024
    assert cli(ws, cache, "cache", "gc", "--max-size", "lots").returncode == 1


def test_explain_names_the_changed_input(built):
    ws, cache = built
    src = ws / "examples/hello_c/hello.c"
    src.write_text(src.read_text().replace("Hello", "Hullo"))
    pending = cli(ws, cache, "explain", "//examples/hello_c:hello")
    assert "compile-hello.c: will re-run:" in pending.stdout
    assert "input changed: examples/hello_c/hello.c" in pending.stdout
    assert run_doit(ws, "build", cache=cache).returncode == 0
    after = cli(ws, cache, "explain", "//examples/hello_c:hello:compile-hello.c")
    assert "up to date" in after.stdout and "last re-run because:" in after.stdout
    assert "input changed: examples/hello_c/hello.c" in after.stdout
    assert cli(ws, cache, "explain", "//nope:x").returncode == 1


def test_graph_is_dot(built):
    ws, cache = built
    result = cli(ws, cache, "graph")
    assert result.returncode == 0
    assert result.stdout.startswith("digraph occlum_rules {")
    assert '"//examples/multi_c:adder" -> "//examples/multi_c:greet";' in result.stdout
