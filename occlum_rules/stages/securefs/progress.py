"""Progress for long packs: live on a terminal, silent in logs and pipes.

A live line (inodes written, bytes, MB/s) is shown only when stderr is a TTY and the image is
big enough for the wait to be noticeable; an optional one-line summary is printed at the
end either way (the build asks for it; the drop-in CLIs do not, to match Occlum's tools).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

LIVE_THRESHOLD_BYTES = 64 * 1024 * 1024
_INTERVAL = 0.25


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


class Progress:
    def __init__(
        self,
        label: str,
        total_files: int,
        total_bytes: int,
        *,
        live: bool | None = None,
        summary: bool = False,
        stream: TextIO | None = None,
    ):
        self.stream = stream if stream is not None else sys.stderr
        if live is None:
            isatty = getattr(self.stream, "isatty", lambda: False)
            live = bool(isatty()) and total_bytes >= LIVE_THRESHOLD_BYTES
        self.live = live
        self.summary = summary
        self.label = label
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self._start = time.perf_counter()
        self._last = 0.0
        self._drawn = False

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.bytes += nbytes
        if self.live:
            now = time.perf_counter()
            if now - self._last >= _INTERVAL:
                self._last = now
                self._draw(now)

    def _rate(self, now: float) -> float:
        dt = max(now - self._start, 1e-9)
        return self.bytes / dt / 1e6

    def _draw(self, now: float) -> None:
        line = (
            f"\r{self.label}: {self.files}/{self.total_files} inodes, "
            f"{_mib(self.bytes)}/{_mib(self.total_bytes)}, {self._rate(now):.0f} MB/s"
        )
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self, note: str = "") -> None:
        now = time.perf_counter()
        if self._drawn:
            self.stream.write("\r\x1b[K")
        if self.summary:
            extra = f" ({note})" if note else ""
            self.stream.write(
                f"{self.label}: {self.files} inodes, {_mib(self.bytes)} in "
                f"{now - self._start:.2f} s, {self._rate(now):.0f} MB/s{extra}\n"
            )
        self.stream.flush()
