"""Where a doit run's resident set grows: run doit in this process and, every 50 ms, read
the RSS (``/proc/self/statm``) and where the main thread is in occlum_rules; print the rises
(summed per location), biggest first.

    cd <workspace> && OCCLUM_RULES_CACHE=... python <repo>/bench/rss_where.py //big:package:package

Not a scenario (it prints, it records nothing): the tool behind the peak-RSS notes of
scenario 10 (bench/growth.py), for when ``--stage-rss`` has named the step that peaks.
tracemalloc sees only Python's allocations (a third of the RSS here) and slows the build;
sampling the RSS itself shows what the kernel charges, at the price of attributing a rise to
wherever the main thread was when the sample saw it (a worker thread's buffers land on the
main thread's line at that moment).
"""

from __future__ import annotations

import os
import sys
import threading
import traceback

PAGE = os.sysconf("SC_PAGE_SIZE")
PERIOD = 0.05
STEP = 2 << 20  # a rise smaller than this is not recorded


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def where(thread_id: int) -> str:
    """The innermost four occlum_rules frames of a thread, innermost first."""
    frame = sys._current_frames().get(thread_id)
    stack = traceback.extract_stack(frame) if frame is not None else []
    ours = [f"{os.path.basename(s.filename)}:{s.lineno}({s.name})" for s in stack
            if "occlum_rules" in s.filename]
    return " < ".join(reversed(ours[-4:])) or "(outside occlum_rules: imports, doit)"


def main(argv: list[str]) -> int:
    main_id = threading.get_ident()
    stop = threading.Event()
    rises: dict[str, list[int]] = {}  # where -> [bytes risen there, highest RSS seen there]

    def watch() -> None:
        high = rss()
        while not stop.is_set():
            cur = rss()
            if cur > high + STEP:
                at = rises.setdefault(where(main_id), [0, 0])
                at[0] += cur - high
                at[1] = max(at[1], cur)
                high = cur
            stop.wait(PERIOD)

    threading.Thread(target=watch, daemon=True).start()
    start = rss()
    from doit.cmd_base import DodoTaskLoader
    from doit.doit_cmd import DoitMain

    rc = DoitMain(DodoTaskLoader()).run(argv)
    stop.set()
    print(f"RSS at start {start / 2**20:.1f} MiB, at the end {rss() / 2**20:.1f} MiB; rises:",
          file=sys.stderr)
    for at, (risen, high) in sorted(rises.items(), key=lambda kv: -kv[1][0])[:15]:
        print(f"  +{risen / 2**20:6.1f} MiB (to {high / 2**20:6.1f}) at {at}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
