"""Benchmark (scenario 12, informational): the examples built through BuildGrid and two
``occlum-rules worker`` processes against a local ``doit -n 2``, and what sending one
action away costs.

Server, database and workers all run on this machine, so remote execution can only add
work here: the rows show that cost, not a speed-up a team with more machines would see.
PostgreSQL, BuildGrid and the workers are started the way the test suite starts them
(``tests/support/postgres.py``, ``buildgrid.py``, ``reapi_worker.py``); every remote build
gets a server of its own, so its action cache and CAS start empty, as a first build's do.

Per-action overhead: a package of tiny C programs (one compile and link each), built with
``-n 1`` locally and with ``-n 1`` through the server (one action in flight, so the
difference is dispatch, not parallelism): (remote - local) / actions sent; beside it the
round trip of a no-op Action through the same server, the part that is BuildGrid's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness as h  # noqa: E402

SCENARIO = "12 remote execution"
QUICK_EXAMPLES = ["hello_c", "multi_c", "hello_rust"]


@contextlib.contextmanager
def execution_server(base: Path) -> Iterator[object]:
    """A fresh PostgreSQL and a BuildGrid that executes on it."""
    from tests.support.buildgrid import find_bgd, start_buildgrid
    from tests.support.postgres import find_bindir, start_postgres

    bgd, bindir = find_bgd(), find_bindir()
    if bgd is None or bindir is None:
        raise LookupError("needs BuildGrid's bgd (pip install -e '.[test]' on Python 3.11+) and "
                          "PostgreSQL (Debian's postgresql)")
    postgres = start_postgres(base / "postgres", bindir)
    try:
        server = start_buildgrid(base / "buildgrid", bgd,
                                 database=postgres.url(scheme="postgresql+psycopg2"))
        try:
            yield server
        finally:
            server.stop()
    finally:
        postgres.stop()


def tiny_programs(ws: Path, count: int) -> None:
    """``count`` C programs that differ in one constant: as many independent small actions."""
    pkg = ws / "tiny"
    pkg.mkdir(parents=True)
    for i in range(count):
        (pkg / f"t{i}.c").write_text(
            f'#include <stdio.h>\nint main(void) {{ printf("%d\\n", {i}); return 0; }}\n')
    (pkg / "BUILD.py").write_text(
        f'[occlum_cc_binary(name = "t%d" % i, srcs = ["t%d.c" % i]) for i in range({count})]\n')


def noop_round_trip(server: object, count: int) -> float:
    """Median seconds of Execute for a command that does nothing (``/bin/true``, a new Action
    each time): what BuildGrid's queueing, assignment and result path cost on their own."""
    from tests.support.reapi_worker import Client

    client = Client(server)  # type: ignore[arg-type]
    try:
        times = []
        for i in range(count):
            action = client.action(["/bin/true"], env={"RUN": f"{i}-{time.time_ns()}"})
            times.append(h.timed(lambda action=action: client.execute(action)))
        return h.median(times)
    finally:
        client.close()


def _build(ws: Path, jobs: int, cache: Path, env: dict[str, str] | None = None) -> h.DoitRun:
    h.rmtree(ws / "out")
    run = h.run_doit(ws, "-n", str(jobs), "build", cache=cache, env=env)
    h.rmtree(cache)
    return run


def run(quick: bool) -> list[dict]:
    try:
        from occlum_rules.core.remote_exec import ENV_INSTANCE, ENV_URL
        from tests.support.examples import buildable_examples
        from tests.support.reapi_worker import running_workers
        from tests.support.workspace import copy_examples
    except ImportError as exc:  # the servers' fixtures come with the test extra
        return [h.unavailable(SCENARIO, "all", "", "informational",
                              f"{exc}: needs pip install -e '.[test,bench]'")]

    examples = QUICK_EXAMPLES if quick else buildable_examples()
    count = 8 if quick else 24
    base = h.workdir("remote")
    try:
        ws = copy_examples(base / "examples", examples)
        tiny = copy_examples(base / "tiny", [])
        tiny_programs(tiny, count)
        local = _build(ws, 2, base / "cache-local")
        local_tiny = _build(tiny, 1, base / "cache-local-tiny")
        for name, r in (("examples", local), ("tiny programs", local_tiny)):
            if not r.ok:
                return [h.unavailable(SCENARIO, "all", "", "informational",
                                      f"local build of the {name} failed: {r.failure()}")]
        started = time.perf_counter()
        try:
            with execution_server(base / "server") as server, \
                    running_workers(server, base / "workers", workspace=ws):
                env = {ENV_URL: server.url, ENV_INSTANCE: server.instance}
                remote = _build(ws, 2, base / "cache-remote", env)
                remote_tiny = _build(tiny, 1, base / "cache-remote-tiny", env)
                noop = noop_round_trip(server, 5 if quick else 15)
        except (LookupError, RuntimeError) as exc:
            return [h.unavailable(SCENARIO, "all", "", "informational", str(exc))]
        setup = time.perf_counter() - started - remote.seconds - remote_tiny.seconds - \
            noop * (5 if quick else 15)
        for name, r in (("examples", remote), ("tiny programs", remote_tiny)):
            if not r.ok:
                return [h.unavailable(SCENARIO, "all", "", "informational",
                                      f"remote build of the {name} failed: {r.failure()}")]
        sent, sent_tiny = remote.count("actions_run_remote"), remote_tiny.count("actions_run_remote")
        overhead = (remote_tiny.seconds - local_tiny.seconds) / sent_tiny if sent_tiny else None
        load = os.getloadavg()[0]
        return [
            h.rec(SCENARIO, "examples: local doit -n 2", round(local.seconds, 2), "s",
                  "informational", None, f"{len(examples)} examples: {', '.join(examples)}; "
                  f"empty store; load average {load:.2f}"),
            h.rec(SCENARIO, "examples: BuildGrid + 2 workers, doit -n 2",
                  round(remote.seconds, 2), "s", "informational", None,
                  f"{sent} of {len(remote.report.get('actions', []) if remote.report else [])} "
                  f"actions ran remotely (the others hold a secret, are incremental or stay "
                  f"local); empty store, fresh server; starting PostgreSQL, BuildGrid and the "
                  f"workers took {setup:.1f} s more (not counted)"),
            h.rec(SCENARIO, "examples: remote / local", round(remote.seconds / local.seconds, 3),
                  "x", "informational", None,
                  "one machine: the workers share its 2 CPUs with the server and the client"),
            h.rec(SCENARIO, "per-action overhead of remote dispatch",
                  None if overhead is None else round(overhead * 1000, 1), "ms",
                  "informational", None,
                  f"{count} tiny C programs, -n 1: local {local_tiny.seconds:.2f} s, remote "
                  f"{remote_tiny.seconds:.2f} s, {sent_tiny} actions sent (upload of missing "
                  "inputs, Execute, waiting on the operation, fetching and checking outputs)"),
            h.rec(SCENARIO, "of which BuildGrid: Execute of /bin/true", round(noop * 1000, 1),
                  "ms", "informational", None,
                  f"median of {5 if quick else 15}; the rest of the overhead is this project's "
                  "client and worker: the input root, CAS round trips, starting "
                  "`occlum-rules run-action` (a Python process) on the worker"),
        ]
    finally:
        h.rmtree(base)


if __name__ == "__main__":
    t = time.perf_counter()
    h.run_as_script(run, __doc__)
    print(f"({time.perf_counter() - t:.0f} s)")
