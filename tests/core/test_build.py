"""The engine end to end on the C examples, through `doit` as a user runs it."""

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from occlum_rules.stages.elfcheck import pie_kind
from tests.support.workspace import copy_examples, outcomes, report, run_doit

EXAMPLES = ["hello_c", "multi_c"]
BINARIES = ["out/bin/examples/hello_c/hello/hello", "out/bin/examples/multi_c/greeter/greeter",
            "out/bin/examples/multi_c/adder/adder"]


def c_only(root: Path) -> Path:
    """The engine tests use the C part of the examples only (no instance, no package), so
    they count compile/archive/link actions exactly."""
    (root / "examples/hello_c/BUILD.py").write_text(
        'occlum_cc_binary(\n    name = "hello",\n    srcs = ["hello.c"],\n)\n')
    return root


def checkout(path: Path) -> Path:
    return c_only(copy_examples(path, EXAMPLES))


@pytest.fixture
def ws(tmp_path):
    return checkout(tmp_path / "checkout")


def build(root: Path, cache: Path, *options: str):
    result = run_doit(root, *options, "build", cache=cache)
    assert result.returncode == 0, result.output
    return result


def ran(root: Path) -> list[str]:
    return sorted(k for k, v in outcomes(root).items() if v == "run")


def test_build_null_build_touch_and_edit(ws, tmp_path):
    cache = tmp_path / "cache"
    first = build(ws, cache)
    rep = report(ws)
    assert rep["actions_run"] == 8 and rep["up_to_date"] == 0
    for binary in BINARIES:
        assert pie_kind(ws / binary) in ("pie", "static-pie"), binary
    assert "8 actions run" in first.stdout

    second = build(ws, cache)
    rep = report(ws)
    assert (rep["actions_run"], rep["cache_hits_local"], rep["up_to_date"]) == (0, 0, 8)
    assert "0 actions run, 0 cache hits (local), 0 cache hits (remote), 8 up to date" in second.stdout

    # same content, new mtime: nothing compiles
    src = ws / "examples/hello_c/hello.c"
    time.sleep(0.01)
    os.utime(src)
    build(ws, cache)
    assert report(ws)["actions_run"] == 0

    # one byte changes: exactly that compile and its link re-run
    src.write_text(src.read_text().replace("Hello", "Jello"))
    build(ws, cache)
    assert ran(ws) == ["//examples/hello_c:hello:compile-hello.c", "//examples/hello_c:hello:link"]

    # a shared header changes: both users recompile, the unrelated example does not
    hdr = ws / "examples/multi_c/greet.h"
    hdr.write_text(hdr.read_text() + "\n/* changed */\n")
    build(ws, cache)
    assert all(a.startswith("//examples/multi_c") for a in ran(ws))
    assert "//examples/multi_c:greet:compile-greet.c" in ran(ws)


def test_deleting_outputs_restores_from_cache(ws, tmp_path):
    cache = tmp_path / "cache"
    build(ws, cache)
    before = {b: (ws / b).read_bytes() for b in BINARIES}
    shutil.rmtree(ws / "out")
    build(ws, cache)
    rep = report(ws)
    assert rep["actions_run"] == 0 and rep["cache_hits_local"] == 8
    assert {b: (ws / b).read_bytes() for b in BINARIES} == before
    assert os.access(ws / BINARIES[0], os.X_OK)


def test_two_checkout_paths_give_identical_binaries_and_share_the_cache(tmp_path):
    a = checkout(tmp_path / "one" / "checkout")
    b = checkout(tmp_path / "two" / "deeper" / "place")
    build(a, tmp_path / "cache-a")
    build(b, tmp_path / "cache-b")
    for binary in BINARIES:
        assert hashlib.sha256((a / binary).read_bytes()).digest() == \
            hashlib.sha256((b / binary).read_bytes()).digest(), binary
    # keys do not contain the checkout path: a third checkout hits b's cache for everything
    c = checkout(tmp_path / "three")
    build(c, tmp_path / "cache-b")
    assert report(c)["cache_hits_local"] == 8


def test_corrupted_blob_is_detected_and_rebuilt(ws, tmp_path):
    cache = tmp_path / "cache"
    build(ws, cache)
    binary = ws / BINARIES[0]
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    blob = cache / "cas" / digest[:2] / digest
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    shutil.rmtree(ws / "out")
    result = build(ws, cache)
    assert "corrupted" in result.output
    assert outcomes(ws)["//examples/hello_c:hello:link"] == "run"
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest  # stored again, correct


def test_compile_error_is_one_message_and_keeps_previous_outputs(ws, tmp_path):
    cache = tmp_path / "cache"
    build(ws, cache)
    good = (ws / BINARIES[1]).read_bytes()
    (ws / "examples/multi_c/greet.c").write_text("int broken( {\n")
    result = run_doit(ws, "build", cache=cache)
    assert result.returncode == 1
    assert "error: //examples/multi_c:greet: cc.compile failed (exit 1):" in result.stdout
    assert "Traceback" not in result.output
    assert (ws / BINARIES[1]).read_bytes() == good
    assert (ws / BINARIES[0]).exists()


def test_doit_commands(ws, tmp_path):
    cache = tmp_path / "cache"
    listing = run_doit(ws, "list", cache=cache)
    assert listing.returncode == 0
    assert "//examples/hello_c:hello" in listing.stdout and "build" in listing.stdout
    build(ws, cache, "-n", "2")
    assert report(ws)["actions_run"] == 8
    info = run_doit(ws, "info", "//examples/hello_c:hello:link", cache=cache)
    assert "status     : up-to-date" in info.stdout
    clean = run_doit(ws, "clean", cache=cache)
    assert clean.returncode == 0 and not (ws / BINARIES[0]).exists()
    build(ws, cache)
    assert report(ws)["cache_hits_local"] == 8
    forget = run_doit(ws, "forget", cache=cache)
    assert forget.returncode == 0
    build(ws, cache)
    rep = report(ws)
    assert rep["actions_run"] == 0 and rep["up_to_date"] == 8
