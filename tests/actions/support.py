"""A real StageContext for calling an adapter directly, as the executor would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from occlum_rules.core.action import StageContext
from occlum_rules.core.digests import DigestCache


def make_ctx(root: Path, *, outputs: list[str], inputs: list[str] | None = None,
             params: dict[str, Any] | None = None, secrets: dict[str, Path] | None = None,
             state: str = "state", label: str = "//t:t") -> StageContext:
    """Paths are relative to ``root``; the private state directory exists (the executor
    creates it before a stage runs), the shared one does not."""
    state_dir = root / "out" / ".occlum-rules" / "state" / state
    state_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        root=root, label=label, inputs=[root / p for p in inputs or []],
        outputs=[root / p for p in outputs], params=params or {}, secrets=secrets or {},
        source_date_epoch=1704067200, digests=DigestCache(None),
        state_dir=state_dir, shared_state_dir=root / "out" / ".occlum-rules" / "state" / "shared" / state)
