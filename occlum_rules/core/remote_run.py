"""Run one action inside its REAPI input root: what ``occlum-rules run-action`` does on a worker.

The input root is the whole world of the action: its workspace inputs at their relative
paths and ``.occlum-rules/action.json`` (see ``core/reapi_action.py``). The stage gets a
StageContext rooted there with fresh state directories and no secrets, writes its outputs
at their declared paths, and the inputs it discovered go to ``.occlum-rules/discovered.json``
(with their digests on this machine) for the client to record, as a local run would.
Files of the occlum-rules package come from this install; their digests must be the ones the
client keyed on, or the action fails (another release would make other bytes).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.action import PACKAGE_PREFIX, StageContext, canonical, key_path
from occlum_rules.core.digests import DigestCache, sha256_file
from occlum_rules.core.reapi_action import DISCOVERED_PATH, DOCUMENT_FORMAT, package_path
from occlum_rules.errors import UserError
from occlum_rules.process import deterministic_env, run_tool

_FIELDS = {"format": int, "id": str, "label": str, "kind": str, "params": dict, "env": dict,
           "source_date_epoch": int, "inputs": list, "package_inputs": dict, "outputs": list,
           "output_types": list}


def read_document(path: Path) -> dict[str, Any]:
    """The action's parameters; anything malformed is one error naming the field."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the action parameters ({exc})", where=str(path)) from None
    if not isinstance(doc, dict):
        raise UserError("expected a JSON object", where=str(path))
    for name, kind in _FIELDS.items():
        if not isinstance(doc.get(name), kind):
            raise UserError(f"expected {kind.__name__}", where=f"{path}: {name}")
    if doc["format"] != DOCUMENT_FORMAT:
        raise UserError(f"format {doc['format']} is not {DOCUMENT_FORMAT} (another occlum-rules "
                        "release wrote it)", where=f"{path}: format")
    if (doc.get("argv") is None) == (doc.get("func") is None):
        raise UserError("expected exactly one of argv and func", where=f"{path}: argv")
    return doc


def _check_package_inputs(doc: dict[str, Any]) -> None:
    for name, digest in doc["package_inputs"].items():
        local = package_path(name)
        try:
            found = sha256_file(local)
        except OSError:
            found = None
        if found != digest:
            raise UserError(f"{doc['label']}: {name} of this occlum-rules install differs from "
                            "the client's; install the same release on the worker")


def _substitute(arg: str, outputs: list[str], root: str) -> str:
    arg = arg.replace("${WORKSPACE}", root)
    for i, path in enumerate(outputs):
        arg = arg.replace(f"${{OUT:{i}}}", path)
    return arg


def _discovered_record(paths: list[str], root: str) -> list[list[str]]:
    """[name, sha256] per discovered input: workspace files by relative path, package files
    by their ``@occlum_rules//`` name, host files by absolute path."""
    inside = os.path.join(root, "")
    record = []
    for p in sorted(set(paths)):
        full = os.path.normpath(os.path.join(root, p))
        name = full[len(inside):] if full.startswith(inside) else key_path(full)
        record.append([name, sha256_file(full)])
    return record


def run_in_root(root: Path, doc: dict[str, Any]) -> None:
    """Run the action ``doc`` describes with ``root`` as its workspace."""
    root = root.resolve()
    _check_package_inputs(doc)
    outputs = [str(root / rel) for rel in doc["outputs"]]
    for out in outputs:
        os.makedirs(os.path.dirname(out), exist_ok=True)
    discovered: list[str] = []
    if doc.get("argv") is not None:
        argv = [_substitute(str(a), doc["outputs"], str(root)) for a in doc["argv"]]
        env = deterministic_env(doc["source_date_epoch"], extra=doc["env"])
        run_tool(argv, f"{doc['label']}: {doc['kind']}", cwd=root, env=env)
    else:
        module_name, _, func_name = str(doc["func"]).partition(":")
        if not module_name.startswith("occlum_rules.") or not func_name:
            raise UserError(f"{doc['label']}: {doc['func']!r} is not a stage of occlum-rules")
        func = getattr(importlib.import_module(module_name), func_name)
        with tempfile.TemporaryDirectory(prefix="occlum-rules-state-") as state:
            ctx = StageContext(
                root=root, label=doc["label"],
                inputs=[Path(package_path(p)) if p.startswith(PACKAGE_PREFIX) else root / p
                        for p in doc["inputs"]],
                outputs=[Path(o) for o in outputs], params=doc["params"], secrets={},
                source_date_epoch=doc["source_date_epoch"], digests=DigestCache(None),
                state_dir=Path(state) / "private", shared_state_dir=Path(state) / "shared")
            ctx.state_dir.mkdir()
            func(ctx)
            discovered = ctx.discovered
    for rel, kind, out in zip(doc["outputs"], doc["output_types"], outputs):
        ok = os.path.isdir(out) if kind == "dir" else (os.path.isfile(out) or os.path.islink(out))
        if not ok:
            raise UserError(f"{doc['label']}: {doc['kind']} did not create its declared output "
                            f"'{rel}'")
    target = root / DISCOVERED_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, canonical(_discovered_record(discovered, str(root))))
