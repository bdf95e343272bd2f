"""Failure accounting shared by the remote cache clients (HTTP and REAPI).

A remote is an accelerator, never a dependency. Each failed request or call counts; after
``max_failures`` in a row, or once failures have cost ``failure_budget`` seconds in this
process, the remote is switched off for the rest of the build with one warning. Uploads
can be switched off on their own (a server that refuses writes but serves reads). Blobs
that arrive with the wrong bytes are counted, and the first few named in a warning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger("occlum_rules.remote_cache")

_MAX_MISMATCH_LINES = 5


@dataclass
class RemoteCacheStats:
    """What the remote did for this build; printed at the end and kept for ``cache stats``."""

    hits: int = 0
    misses: int = 0
    uploads: int = 0
    upload_skips: int = 0  # blobs the remote already had (HEAD said so)
    bytes_down: int = 0
    bytes_up: int = 0
    errors: int = 0
    digest_mismatches: int = 0
    disabled: bool = False
    uploads_disabled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One human line, e.g. for the end of ``doit build``."""
        state = " (switched off after failures)" if self.disabled else ""
        return (
            f"remote cache: {self.hits} hits, {self.misses} misses, {self.uploads} uploads "
            f"({self.upload_skips} already present), {_human(self.bytes_down)} down, "
            f"{_human(self.bytes_up)} up, {self.errors} errors, "
            f"{self.digest_mismatches} digest mismatches{state}"
        )


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class RemoteAccounting:
    """Mixin: statistics, the failure limits and the one-warning switches of a client.

    The client sets ``display_url``, ``upload_enabled``, ``max_failures`` and
    ``failure_budget`` and calls
    :meth:`_init_accounting`; it may override :meth:`_after_disable` (drop a connection)
    and :meth:`_uploads_hint` (advice for a refused upload)."""

    display_url: str
    upload_enabled: bool
    # what the switched-off warning calls the server and what the build does instead
    role: str = "remote cache"
    fallback: str = "continuing with the local cache"
    max_failures: int
    failure_budget: float

    def _init_accounting(self, warn: Callable[[str], None] | None, unit: str) -> None:
        self._warn_fn = warn or logger.warning
        self._unit = unit  # "requests" (HTTP) or "calls" (gRPC), for the warnings
        self.stats = RemoteCacheStats()
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self._failure_seconds = 0.0
        self._mismatch_lines = 0

    @property
    def disabled(self) -> bool:
        return self.stats.disabled

    def _uploads_allowed(self) -> bool:
        return self.upload_enabled and not self.disabled and not self.stats.uploads_disabled

    def _budget_left(self) -> float:
        with self._lock:
            return self.failure_budget - self._failure_seconds

    def _spend(self, seconds: float) -> None:
        with self._lock:
            self._failure_seconds += seconds

    def _record_success(self) -> None:
        with self._lock:
            self._consecutive_failures = 0

    def _record_failure(self, seconds: float, reason: str) -> None:
        with self._lock:
            self.stats.errors += 1
            self._consecutive_failures += 1
            self._failure_seconds += seconds
            failures = self._consecutive_failures
            over_budget = self._failure_seconds >= self.failure_budget
        if failures >= self.max_failures:
            self._disable(f"{failures} failed {self._unit} in a row (last: {reason})")
        elif over_budget:
            self._disable(
                f"failed {self._unit} took {self.failure_budget:g} s in total (last: {reason})"
            )

    def _disable(self, why: str) -> None:
        with self._lock:
            if self.stats.disabled:
                return
            self.stats.disabled = True
        self._warn(
            f"{self.role} {self.display_url} switched off for the rest of this build: {why}; "
            f"{self.fallback}"
        )
        self._after_disable()

    def _after_disable(self) -> None:
        """What the client does once switched off (default: nothing)."""

    def _disable_uploads(self, why: str) -> None:
        with self._lock:
            if self.stats.uploads_disabled:
                return
            self.stats.uploads_disabled = True
        self._warn(
            f"remote cache {self.display_url}: uploads switched off for the rest of this build: "
            f"{why}{self._uploads_hint(why)}; downloads continue"
        )

    def _uploads_hint(self, why: str) -> str:
        """Advice appended to the uploads-off warning (default: none)."""
        return ""

    def _report_mismatch(self, digest: str) -> None:
        self._count(digest_mismatches=1)
        self._warn_limited(f"blob {digest} arrived with a different size or sha256; "
                           "not used")

    def _warn_limited(self, message: str) -> None:
        """A warning about one piece of bad data; after a few, they are only counted."""
        with self._lock:
            self._mismatch_lines += 1
            line = self._mismatch_lines
        if line <= _MAX_MISMATCH_LINES:
            more = " (further ones are only counted)" if line == _MAX_MISMATCH_LINES else ""
            self._warn(f"remote cache {self.display_url}: {message}{more}")

    def _count(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self.stats, name, getattr(self.stats, name) + amount)

    def _warn(self, message: str) -> None:
        self._warn_fn(message)
