"""Run the occlum-rules benchmark suite (issue 11): print a table, write bench/results.json.

    python bench/run.py            # full size (~1 GiB / 20k-file images), < 20 min on 2 cores
    python bench/run.py --quick    # every scenario at a reduced size, < 5 min
    python bench/run.py --only 3,7 # a subset; --profile adds a cProfile to missed doit goals

Scenarios (see bench/README.md): 1 full build, 2 incremental, 3 null build, 4 SEFS pack
throughput, 5 fresh clone + warm store, 6 signing, 7 doit -n 2 scaling, 8 packaging,
9 OCI image (full vs one file changed), 10 cost growth (256 MiB / 1 GiB / 4 GiB builds:
time per GiB, peak RSS), 11 store growth per incremental build, 12 remote execution on
BuildGrid + 2 workers vs local (informational).
Benchmarks print; they never assert timings.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import harness as h  # noqa: E402

# (scenario numbers, module in bench/, how its records are named in the suite)
MODULES: list[tuple[str, str, str]] = [
    ("1,2,5", "build_scenarios", ""),
    ("3", "null_build", ""),
    ("4", "sefs_pack", "4 SEFS pack"),
    ("6", "sign", "6 sign"),
    ("7", "parallel", ""),
    ("8", "package", "8 package"),
    ("9", "oci_image", ""),
    ("10,11", "growth", ""),
    ("12", "remote_exec", ""),
]


def _rename(records: list[dict], scenario: str) -> list[dict]:
    """Records of a module written for its own table: put them under the suite's scenario."""
    if not scenario:
        return records
    out = []
    for r in records:
        r = dict(r)
        if r.get("scenario") and r["scenario"] != r.get("metric") and not r["scenario"].startswith(
                ("sefs_pack",)):
            r["metric"] = f"{r['scenario']}: {r['metric']}"
        r["scenario"] = scenario
        out.append(r)
    return out


def run_module(numbers: str, name: str, scenario: str, quick: bool, profile: bool) -> list[dict]:
    label = scenario or f"{numbers} ({name})"
    if not (BENCH / f"{name}.py").exists():
        return [h.unavailable(label, "all", "", "", f"bench/{name}.py does not exist")]
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a broken module is reported, the suite goes on
        return [h.unavailable(label, "all", "", "", f"bench/{name}.py does not import: "
                              f"{type(exc).__name__}: {exc}")]
    t = time.perf_counter()
    try:
        if name in ("build_scenarios", "null_build"):
            records = module.run(quick, profile=profile)
        else:
            records = module.run(quick)
    except Exception as exc:  # noqa: BLE001
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return [h.unavailable(label, "all", "", "", f"bench/{name}.py crashed: {type(exc).__name__}: "
                              f"{exc} (at {Path(tb.filename).name}:{tb.lineno})")]
    records = _rename(records, scenario)
    records.append(h.rec(label, "time spent in this scenario module", round(time.perf_counter() - t, 1),
                         "s", "informational", None, f"bench/{name}.py"))
    return records


def _write(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (~100 MB / 2k files)")
    ap.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 3,7")
    ap.add_argument("--profile", action="store_true",
                    help="where a doit scenario misses its goal, cProfile one more run and put "
                         "the hottest functions in the note")
    ap.add_argument("--output", type=Path, default=BENCH / "results.json")
    args = ap.parse_args(argv)
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    started = time.perf_counter()
    load_before = os.getloadavg()
    records: list[dict] = []
    for numbers, name, scenario in MODULES:
        if wanted and not wanted & set(numbers.split(",")):
            continue
        print(f"== scenario {numbers}: bench/{name}.py{' (quick)' if args.quick else ''}",
              file=sys.stderr, flush=True)
        records += run_module(numbers, name, scenario, args.quick, args.profile)
        _write(args.output, records)  # a long run keeps what it has measured so far
    total = time.perf_counter() - started
    load_after = os.getloadavg()
    budget = 300 if args.quick else 1200  # issue 18: quick under 5 minutes, full under 20
    records.append(h.rec("0 suite", "total wall time", round(total, 1), "s",
                         f"<= {budget} s ({'quick' if args.quick else 'full'} run)",
                         total <= budget if not wanted else None,
                         f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
                         f"{platform.python_version()}; load average before "
                         f"{load_before[0]:.2f}, after {load_after[0]:.2f} (other work on the "
                         "machine inflates every time here)"))
    h.print_table(records)
    _write(args.output, records)
    print(f"\nwrote {args.output} ({len(records)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
