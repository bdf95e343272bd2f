"""Give the C heap back to the kernel between actions.

glibc's malloc raises its mmap threshold each time a large block is freed, so after the
first few multi-MiB buffers (package segments, SEFS blocks, file reads) later ones come from
the heap and from one arena per worker thread, where freed memory stays resident: on a
1 GiB image that was ~30 MiB of a build's peak RSS, held to the end of the process (Occlum
issue #1242 is an OOM on big images). Fixing the threshold at 1 MiB keeps big buffers in
their own mappings (returned on free); trimming after an action returns what the arenas
hold. A stage's per-file records caught in reference cycles would wait for the collector's
oldest generation, which may not run before the next image's stage: collected first. Elsewhere
than glibc both calls are skipped: memory use is higher, results the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_THRESHOLD = 1 << 20  # above what small-record code allocates, below every stage buffer


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - only glibc has both
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def keep_big_buffers_mapped() -> None:
    """Once per process, before the stages run."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)


_freeze = False


def freeze_survivors() -> None:
    """In a build process (one graph, then exit): what survives a collection after an
    action outlives it (the task graph, the digest cache), so it is frozen and the next
    collection does not traverse it again; twelve full collections over it were 0.2 s of
    an incremental image build. A frozen object is still freed with its last reference;
    only a cycle among frozen objects would stay, which a short process can afford and a
    long-lived one (the REAPI worker, a test run) should not: they leave this off."""
    global _freeze
    _freeze = True


def release() -> None:
    """After an action: its buffers are freed; return the pages to the kernel."""
    gc.collect()
    if _freeze:
        gc.freeze()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
