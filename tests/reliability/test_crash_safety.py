"""kill -9 a build anywhere; the next build must equal a clean one, byte for byte.

Three kinds of interrupted build: from scratch (compiles, stand-in LibOS, packs, signing all
run), restoring from a warm cache, and incremental after an edit (where the SEFS packs and
the BOM update their previous outputs in place). Kill delays come from a seeded RNG over the
measured length of the same kind of build. After every kill the store must also stay
consistent (no blob with the wrong bytes, no action entry naming a missing blob).

``OCCLUM_RULES_CRASH_POINTS`` (default 20) sets the total number of kills.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.reliability.support import (
    build,
    check_store,
    diff,
    false_up_to_date,
    fresh_workspace,
    kill_after,
    outputs,
    scale,
    seeded_delays,
    start_build,
    timed_build,
)
from tests.support.workspace import report

POINTS = scale("OCCLUM_RULES_CRASH_POINTS", 20)
SEED = 1104
EDITS = {
    "examples/hello_c/hello.c": ("Hello", "Crash-tested hello"),
    "examples/multi_c/greet.c": ("Hello", "Crash-tested greet"),
}


def _split(total: int) -> tuple[int, int, int]:
    scratch = max(1, total // 2)
    restore = max(1, total // 5)
    incremental = max(1, total - scratch - restore)
    return scratch, restore, incremental


def _edit(ws: Path) -> None:
    for rel, (old, new) in EDITS.items():
        path = ws / rel
        text = path.read_text()
        if old not in text:  # the example changed wording: still make a real edit
            text = text.replace('"', '"~', 1)
        path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Clean builds (before and after the edit) and how long a clean build takes here."""
    base = tmp_path_factory.mktemp("crash-ref")
    ws = fresh_workspace(base / "clean")
    cache = base / "cache"
    duration = timed_build(ws, cache)
    edited = fresh_workspace(base / "edited")
    _edit(edited)
    # a second clean build (the first one also warms the page cache): take the shorter
    duration = min(duration, timed_build(edited, base / "cache-edited"))
    restore_duration = min(timed_build(fresh_workspace(base / f"restore{i}"), cache)
                           for i in range(2))
    assert report(base / "restore1")["actions_run"] == 0
    return {"base": base, "ws": ws, "cache": cache, "duration": duration,
            "restore_duration": restore_duration, "clean": outputs(ws),
            "edited": outputs(edited)}


def _after_kill(ws: Path, cache: Path, expected: dict, what: str) -> None:
    stale = false_up_to_date(ws)
    assert not stale, f"{what}: half-written outputs would count as up to date:\n" + "\n".join(stale)
    build(ws, cache)
    got = outputs(ws)
    assert got == expected, f"{what}: rebuilt outputs differ from a clean build:\n{diff(expected, got)}"
    problems = check_store(cache)
    assert not problems, f"{what}: store inconsistent after the kill:\n" + "\n".join(problems)


def test_snapshot_sees_a_one_bit_difference(reference, tmp_path):
    """The comparison this file relies on can fail: flip a bit, change a mode, retarget a link."""
    ws = tmp_path / "copy"
    shutil.copytree(reference["ws"] / "out", ws / "out", symlinks=True)
    assert outputs(ws) == reference["clean"]
    signed = ws / "out/bin/examples/hello_c/instance/build/lib/libocclum-libos.signed.so"
    data = bytearray(signed.read_bytes())
    data[len(data) // 2] ^= 1
    signed.write_bytes(bytes(data))
    assert outputs(ws) != reference["clean"]
    signed.write_bytes(bytes(data[:len(data) // 2]) + bytes([data[len(data) // 2] ^ 1])
                       + bytes(data[len(data) // 2 + 1:]))
    assert outputs(ws) == reference["clean"]
    signed.chmod(0o600)
    assert outputs(ws) != reference["clean"]


def test_state_check_sees_a_half_written_output(reference, tmp_path):
    """false_up_to_date() can fail: bytes changed behind a state whose stamps still match."""
    ws = tmp_path / "ws"
    shutil.copytree(reference["ws"], ws, symlinks=True)
    assert not false_up_to_date(ws)
    binary = ws / "out/bin/examples/hello_c/hello/hello"
    st = binary.stat()
    data = bytearray(binary.read_bytes())
    data[100] ^= 0xFF
    binary.write_bytes(bytes(data))
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, mtime and mode
    assert false_up_to_date(ws)


def test_kill_during_clean_build(reference, tmp_path):
    scratch, _, _ = _split(POINTS)
    delays = seeded_delays(SEED, scratch, reference["duration"])
    interrupted = 0
    for i, delay in enumerate(delays):
        ws = fresh_workspace(tmp_path / f"ws{i}")
        cache = tmp_path / f"cache{i}"
        interrupted += kill_after(start_build(ws, cache), delay)
        _after_kill(ws, cache, reference["clean"], f"clean build killed after {delay:.3f}s")
    # most kills must land inside the build, or this test proves nothing (the margin is for
    # a machine whose speed changes while the test runs)
    assert interrupted >= max(1, len(delays) * 6 // 10), (interrupted, delays)


def test_kill_during_cache_restore(reference, tmp_path):
    _, restore, _ = _split(POINTS)
    delays = seeded_delays(SEED + 1, restore, reference["restore_duration"])
    interrupted = 0
    for i, delay in enumerate(delays):
        ws = fresh_workspace(tmp_path / f"ws{i}")
        interrupted += kill_after(start_build(ws, reference["cache"]), delay)
        _after_kill(ws, reference["cache"], reference["clean"],
                    f"cache restore killed after {delay:.3f}s")
    assert interrupted >= max(1, len(delays) // 2), (interrupted, delays)


def test_kill_during_incremental_rebuild(reference, tmp_path):
    """The in-place stages (BOM apply, SEFS packs) are interrupted mid-update."""
    _, _, incremental = _split(POINTS)
    built = tmp_path / "built"
    built_cache = tmp_path / "built-cache"
    fresh_workspace(built)
    build(built, built_cache)

    def prepared(name: str) -> tuple[Path, Path]:
        ws, cache = tmp_path / name, tmp_path / f"{name}-cache"
        shutil.copytree(built, ws, symlinks=True)
        shutil.copytree(built_cache, cache)
        _edit(ws)
        return ws, cache

    ws, cache = prepared("measure")
    duration = timed_build(ws, cache)
    assert report(ws)["actions_run"] > 0
    assert outputs(ws) == reference["edited"], "incremental result differs from a clean build:\n" \
        + diff(reference["edited"], outputs(ws))
    interrupted = 0
    for i, delay in enumerate(seeded_delays(SEED + 2, incremental, duration)):
        ws, cache = prepared(f"ws{i}")
        interrupted += kill_after(start_build(ws, cache), delay)
        _after_kill(ws, cache, reference["edited"], f"incremental build killed after {delay:.3f}s")
    assert interrupted >= 1


def test_kill_twice_then_parallel_build(reference, tmp_path):
    """Two kills in a row (the second during the recovery), then a parallel `doit -n 2`."""
    ws = fresh_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    d = reference["duration"]
    kill_after(start_build(ws, cache), d * 0.6)
    kill_after(start_build(ws, cache), d * 0.45)
    build(ws, cache, "-n", "2", "build")
    got = outputs(ws)
    assert got == reference["clean"], diff(reference["clean"], got)
    assert not check_store(cache)
