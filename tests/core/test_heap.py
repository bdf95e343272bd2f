"""heap.release between actions: what a build process keeps is frozen, elsewhere nothing is."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import gc, sys
    from occlum_rules.core import heap
    if sys.argv[1] == "build":
        heap.freeze_survivors()
    kept = [[i] for i in range(1000)]  # survives the action: the graph, the caches
    heap.release()
    print(gc.get_freeze_count())
""")


def _frozen_after_release(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_a_build_process_freezes_what_survives_an_action():
    assert _frozen_after_release("build") >= 1000


def test_other_processes_freeze_nothing():
    # the REAPI worker and the test suite run actions for a long time: a cycle among frozen
    # objects would never be freed there
    assert _frozen_after_release("worker") == 0
