"""Concurrent builds: one workspace is built by one process at a time (the others wait for
``out/.occlum-rules/lock``), and workspaces sharing one store never see half a blob.

After every race the outputs equal a clean build's and the store is consistent.
``OCCLUM_RULES_RACE_ROUNDS`` (default 2) sets how many shared-store races run.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from tests.reliability.support import (
    build,
    check_store,
    diff,
    fresh_workspace,
    no_traceback,
    outputs,
    scale,
    start_build,
)
from tests.support.workspace import report

ROUNDS = scale("OCCLUM_RULES_RACE_ROUNDS", 2)
WAITING = "another build is running"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("race-ref")
    ws = fresh_workspace(base / "ws")
    build(ws, base / "cache")
    return outputs(ws)


def _finish(proc, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace") + err.decode(errors="replace")


def _hold_lock(ws: Path) -> int:
    """Take the workspace lock as a running build would; returns the fd to release."""
    lock = ws / "out/.occlum-rules/lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_second_build_waits_for_the_lock(clean, tmp_path):
    """Two `doit build` in one workspace while a third party holds the lock: both say they
    wait, neither touches the workspace until it is released, then both succeed in turn."""
    ws = fresh_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    fd = _hold_lock(ws)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    procs = [start_build(ws, cache, log=log) for log in logs]
    try:
        # both load the graph, reach the lock and say so; neither goes further
        _wait_for(lambda: all(WAITING in log.read_text() for log in logs)
                  or any(p.poll() is not None for p in procs))
        time.sleep(0.5)
        assert all(p.poll() is None for p in procs), "a build did not wait: " + \
            "".join(log.read_text() for log in logs)
        assert not (ws / "out/bin").exists(), "a build wrote outputs without the lock"
    finally:
        os.close(fd)
    for p in procs:
        p.wait(timeout=300)
    log1, log2 = (log.read_text() for log in logs)
    assert procs[0].returncode == 0 and procs[1].returncode == 0, log1 + log2
    assert WAITING in log1 and WAITING in log2, log1 + log2
    assert no_traceback(log1 + log2)
    got = outputs(ws)
    assert got == clean, diff(clean, got)
    rep = report(ws)  # the later of the two found everything done by the earlier one
    assert rep["actions_run"] == 0 and rep["cache_hits_local"] == 0, rep
    assert not check_store(cache), check_store(cache)


def test_two_builds_started_together(clean, tmp_path):
    """No artificial lock: both start at once; the loser of the race waits, the result holds."""
    ws = fresh_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    a, b = start_build(ws, cache), start_build(ws, cache)
    (rca, loga), (rcb, logb) = _finish(a), _finish(b)
    assert rca == 0 and rcb == 0, loga + logb
    assert no_traceback(loga + logb)
    got = outputs(ws)
    assert got == clean, diff(clean, got)
    assert not check_store(cache)
    build(ws, cache)
    assert report(ws)["actions_run"] == 0 and report(ws)["up_to_date"] > 0


def test_workspaces_sharing_one_store(clean, tmp_path):
    """Three checkouts build at the same moment into one empty store, several times."""
    for r in range(ROUNDS):
        cache = tmp_path / f"cache{r}"
        spaces = [fresh_workspace(tmp_path / f"r{r}-ws{i}") for i in range(3)]
        procs = [start_build(ws, cache) for ws in spaces]
        for ws, proc in zip(spaces, procs):
            rc, log = _finish(proc)
            assert rc == 0 and no_traceback(log), log
            got = outputs(ws)
            assert got == clean, f"round {r}, {ws.name}:\n{diff(clean, got)}"
        problems = check_store(cache)
        assert not problems, "\n".join(problems)
        # the store they filled together serves a fourth checkout entirely from cache
        late = fresh_workspace(tmp_path / f"r{r}-late")
        build(late, cache)
        assert report(late)["actions_run"] == 0, report(late)
        assert outputs(late) == clean


def test_lock_is_really_exclusive(tmp_path):
    """The lock check above can fail: a second holder is refused while the first holds it."""
    ws = tmp_path / "ws"
    fd = _hold_lock(ws)
    try:
        with pytest.raises(BlockingIOError):
            _hold_lock(ws)
    finally:
        os.close(fd)
    os.close(_hold_lock(ws))
