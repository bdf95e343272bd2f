"""Shared plumbing of the benchmark scenarios: records, medians, running doit as a user does,
reading build reports, and a cProfile of a doit run for the scenarios that miss a goal."""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# Stage groups of the build report, in pipeline order: (label, predicate on an action record).
STAGE_GROUPS: list[tuple[str, Callable[[dict], bool]]] = [
    ("copy_bom", lambda a: a["stage"] == "copy_bom"),
    ("SEFS pack (image)", lambda a: a["stage"] == "sefs.pack" and a["id"].endswith(":pack-image")),
    ("SEFS pack (initfs)", lambda a: a["stage"] == "sefs.pack" and a["id"].endswith(":pack-initfs")),
    ("config (Occlum.json + gen_internal_conf)", lambda a: a["stage"] in ("occlum.json", "config")),
    ("MAC (protect + patch)", lambda a: a["stage"] in ("protect", "patch.builtin_config")),
    ("sign", lambda a: a["stage"].startswith("sign")),
    ("package", lambda a: "package" in a["stage"]),
    ("other (stand-in LibOS, initfs, layout)",
     lambda a: a["stage"] in ("standin", "initfs", "instance.layout")),
]


def rec(scenario: str, metric: str, value: float | None, unit: str, goal: str = "",
        meets: bool | None = None, note: str = "") -> dict:
    return {"scenario": scenario, "metric": metric, "value": value, "unit": unit, "goal": goal,
            "meets_goal": meets, "note": note}


def unavailable(scenario: str, metric: str, unit: str, goal: str, reason: str) -> dict:
    return rec(scenario, metric, None, unit, goal, None, f"not available: {reason}")


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def workdir(prefix: str) -> Path:
    """A scratch directory under the system temp dir (same disk as bench/, never committed)."""
    return Path(tempfile.mkdtemp(prefix=f"occlum-bench-{prefix}-"))


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class DoitRun:
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    report: dict | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        """The error lines of a failed build, short enough for a note."""
        lines = [ln for ln in (self.stderr + self.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("error", "Error")) or "Error:" in ln]
        picked = (errors or lines)[-3:]
        return f"doit exit {self.returncode}: " + " | ".join(ln.strip()[:200] for ln in picked)

    def count(self, outcome: str) -> int:
        return int((self.report or {}).get(outcome, 0))


def doit_env(cache: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with the store at ``cache``, and no remote cache or remote
    execution unless ``extra`` names one."""
    env = dict(os.environ)
    env["OCCLUM_RULES_CACHE"] = str(cache)
    for name in ("OCCLUM_RULES_RUN_ID", "OCCLUM_RULES_REMOTE_CACHE", "OCCLUM_RULES_DEBUG",
                 "OCCLUM_RULES_REMOTE_EXECUTION", "OCCLUM_RULES_REMOTE_EXECUTION_INSTANCE"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_doit(ws: Path, *args: str, cache: Path, timeout: float = 1800,
             env: dict[str, str] | None = None) -> DoitRun:
    """``python -m doit <args>`` in ``ws``, timed from the outside (process start included).

    The page cache is flushed first (``sync``), so a run is not charged for writing back the
    gigabytes the previous build left dirty; its own writes count as they happen."""
    report_path = ws / "out" / "build-report.json"
    if report_path.exists():
        report_path.unlink()
    os.sync()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=ws,
                          env=doit_env(cache, env), capture_output=True, text=True,
                          timeout=timeout)
    seconds = time.perf_counter() - t
    report = None
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        pass
    return DoitRun(proc.returncode, seconds, proc.stdout, proc.stderr, report)


def stage_seconds(report: dict | None) -> dict[str, float]:
    """Seconds per stage group (as the executor journals them: run + describe + store)."""
    out = {name: 0.0 for name, _ in STAGE_GROUPS}
    for a in (report or {}).get("actions", []):
        for name, match in STAGE_GROUPS:
            if match(a):
                out[name] += float(a.get("seconds") or 0.0)
                break
    return out


def profile_doit(ws: Path, *args: str, cache: Path, top: int = 6,
                 prepare: Callable[[], object] | None = None) -> str:
    """One extra ``doit`` run under cProfile; the functions with the most own time, and the
    project functions with the most cumulative time, as one line for a record's note."""
    if prepare is not None:
        prepare()
    prof = ws / ".bench-profile.out"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "doit", *args],
                   cwd=ws, env=doit_env(cache), capture_output=True, text=True, timeout=1800)
    try:
        stats = pstats.Stats(str(prof))
    except (OSError, TypeError, ValueError):
        return "profile: no data"
    finally:
        if prof.exists():
            prof.unlink()
    total = stats.total_tt or 1.0
    rows = []
    for (file, line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():
        rows.append((file, line, func, tt, ct))

    def where(file: str, line: int, func: str) -> str:
        short = file
        for base in (str(REPO) + os.sep, "/site-packages/", "/lib/python3"):
            if base in short:
                short = short.split(base, 1)[1]
        return f"{short}:{line}({func})" if line else func

    own = sorted(rows, key=lambda r: -r[3])[:top]
    ours = sorted((r for r in rows if r[0].startswith(str(REPO)) and "/bench/" not in r[0]),
                  key=lambda r: -r[4])[:top]
    own_s = ", ".join(f"{where(f, ln, fn)} {tt:.2f}s" for f, ln, fn, tt, _ in own)
    ours_s = ", ".join(f"{where(f, ln, fn)} {ct:.2f}s" for f, ln, fn, _, ct in ours)
    return (f"profile ({total:.2f}s in-process): most own time: {own_s}; "
            f"project functions by cumulative time: {ours_s}")


def run_as_script(run: Callable[[bool], list[dict]], doc: str) -> None:
    """``python bench/<module>.py [--quick]`` for a module whose only option is --quick."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print_table(run(parser.parse_args().quick))


def print_table(records: list[dict], out=sys.stdout) -> None:
    mark = {True: "ok", False: "MISS", None: "-"}
    rows = []
    for r in records:
        v = r["value"]
        value = "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        rows.append((r["scenario"], r["metric"], value, r["unit"], mark[r["meets_goal"]], r["goal"],
                     r["note"]))
    w0 = min(34, max((len(r[0]) for r in rows), default=8))
    w1 = min(58, max((len(r[1]) for r in rows), default=6))
    print(f"{'scenario':<{w0}} {'metric':<{w1}} {'value':>10} {'unit':<6} {'goal?':<5} goal / note",
          file=out)
    for s, m, v, u, ok, goal, note in rows:
        print(f"{s[:w0]:<{w0}} {m[:w1]:<{w1}} {v:>10} {u:<6} {ok:<5} {goal}"
              + (f"  [{note}]" if note else ""), file=out)
