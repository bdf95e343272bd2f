"""What a rule may learn about the file system, read by analysis and recorded.

Rule implementations never open, list or stat a file (a test scans ``rules/`` for it).
When a rule's outputs depend on what is on disk (a crate's files and its Cargo.toml,
where a Go module's go.mod is and whether it vendors, the public fingerprint of a key, what
an Occlum install's initfs sources are), it asks ``ctx.fs``, a :class:`FileView`. The view
answers and appends a :class:`Read` per question to its target's record, so the analysis
of a target has one list of everything it depended on besides its BUILD file and
WORKSPACE.yaml (``Graph.analysis_inputs``), and :meth:`FileView.answer` says whether an
answer still holds.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occlum_rules.core.rule import File
from occlum_rules.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

# Directories a tool never reads as sources: bytecode and JavaScript caches. Hidden ones are
# skipped too, except .cargo (crate-local cargo configuration changes what cargo builds).
_SKIP_DIRS = frozenset({"__pycache__", "node_modules"})
_HIDDEN_KEPT = frozenset({".cargo"})


@dataclass(frozen=True)
class Read:
    """One answer analysis gave a rule: the ``kind`` of question, the path asked about
    (workspace-relative, or absolute for a host file) and a digest of the answer."""

    kind: str       # "file" (content), "probe" (file/dir/absent), "listdir", "tree:<skips>"
    path: str
    digest: str


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _probe(full: Path) -> str:
    if full.is_file():
        return "file"
    if full.is_dir():
        return "dir"
    return "absent" if not full.exists() else "other"


def _listdir(full: Path) -> list[str]:
    try:
        return sorted(os.listdir(full))
    except OSError:
        return []


def _walk(root: Path, base: Path, skip: Collection[str], build_file: str,
          output_dir: str) -> list[str]:
    """Workspace-relative paths of the files under ``base`` a tool may read, sorted."""
    out_abs = (root / output_dir).resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if not ((d.startswith(".") and d not in _HIDDEN_KEPT) or d in skip or d in _SKIP_DIRS
                    or (here / d).resolve() == out_abs
                    or (here / d / "WORKSPACE.yaml").exists()))
        for name in sorted(filenames):
            if name == build_file or name.endswith((".pyc", "~")):
                continue
            found.append((here / name).relative_to(root).as_posix())
    return found


class FileView:
    """``ctx.fs``: file-system questions a rule may ask, each answer recorded in ``reads``."""

    def __init__(self, root: Path, build_file: str, output_dir: str, reads: list[Read]):
        self._root = root
        self._build_file = build_file
        self._output_dir = output_dir
        self.reads = reads

    def _full(self, path: str) -> Path:
        return Path(path) if os.path.isabs(path) else self._root / path

    def _record(self, kind: str, path: str, digest: str) -> None:
        read = Read(kind, path, digest)
        if read not in self.reads:
            self.reads.append(read)

    def answer(self, read: Read) -> str:
        """The digest asking ``read``'s question today gives; differs from ``read.digest``
        when the answer the analysis used no longer holds."""
        full = self._full(read.path)
        if read.kind == "file":
            try:
                return _sha(full.read_bytes())
            except OSError:
                return "unreadable"
        if read.kind == "probe":
            return _probe(full)
        if read.kind == "listdir":
            return _sha("\0".join(_listdir(full)).encode())
        if read.kind.startswith("tree:"):
            skip = set(read.kind[len("tree:"):].split(",")) - {""}
            paths = _walk(self._root, full, skip, self._build_file, self._output_dir)
            return _sha("\0".join(paths).encode())
        raise ValueError(f"unknown read kind {read.kind!r}")

    # ------------------------------------------------------------------ workspace sources
    def tree(self, top: str, skip: Collection[str] = ()) -> list[File]:
        """Every file under ``top`` (workspace-relative; "" is the root) a tool may read.

        Skips hidden directories (except .cargo), ``skip`` names (build dirs such as
        target/), the workspace output directory, nested workspaces and BUILD files, which
        describe targets rather than feed them."""
        base = self._root / top if top else self._root
        paths = _walk(self._root, base, skip, self._build_file, self._output_dir)
        self._record(f"tree:{','.join(sorted(skip))}", top, _sha("\0".join(paths).encode()))
        return [File(path=p) for p in paths]

    def kind(self, path: str) -> str:
        """'file', 'dir' or 'absent' (or 'other') for a workspace-relative or host path."""
        answer = _probe(self._full(path))
        self._record("probe", path, answer)
        return answer

    def is_file(self, path: str) -> bool:
        return self.kind(path) == "file"

    def is_dir(self, path: str) -> bool:
        return self.kind(path) == "dir"

    def exists(self, path: str) -> bool:
        return self.kind(path) != "absent"

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted ([] when it is not one)."""
        names = _listdir(self._full(path))
        self._record("listdir", path, _sha("\0".join(names).encode()))
        return names

    def nearest_with(self, start: str, name: str) -> str | None:
        """The workspace-relative directory at or above ``start`` that holds a file ``name``
        (the nearest go.mod, say), or None."""
        parts = start.split("/") if start else []
        for n in range(len(parts), -1, -1):
            here = "/".join(parts[:n])
            if self.is_file(f"{here}/{name}" if here else name):
                return here
        return None

    def read_bytes(self, path: str) -> bytes:
        """A file's content (the read is recorded by its digest); UserError naming it."""
        try:
            data = self._full(path).read_bytes()
        except FileNotFoundError:
            raise UserError("file not found", where=path) from None
        except OSError as exc:
            raise UserError(f"cannot read: {exc.strerror}", where=path) from None
        self._record("file", path, _sha(data))
        return data

    def toml(self, path: str) -> dict[str, Any]:
        """A TOML file (Cargo.toml) parsed; bad TOML is one error naming the file."""
        text = self.read_bytes(path).decode("utf-8", errors="replace")
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"not valid TOML: {exc}", where=path) from None

    # ------------------------------------------------------------------ keys
    def signing_key_fingerprint(self, path: str) -> str:
        """MRSIGNER (hex) of a PEM key file: public, so it may enter action keys."""
        from occlum_rules.stages.sign.sigstruct import public_key_fingerprint

        if not self.is_file(path):
            raise UserError(f"signing key '{path}' not found")
        self.read_bytes(path)  # recorded: another key re-analyses
        try:
            return public_key_fingerprint(self._full(path))
        except Exception as exc:  # a bad key is the user's to fix: say which and why
            message = getattr(exc, "message", str(exc))
            raise UserError(f"signing key '{path}': {message}") from None

    def provenance_key_id(self, path: str, enclave_keys: Collection[str]) -> str:
        """The DSSE keyid (public) of the provenance signing key at ``path``; an error if it is
        not an Ed25519 / ECDSA P-256 key or if it is one of ``enclave_keys`` (compared by
        public key: the enclave signing key must never sign anything else)."""
        from occlum_rules.stages.provenance import (
            check_signing_key,
            key_id,
            load_any_private_key,
            same_public_key,
        )

        what = "provenance signing key (WORKSPACE.yaml provenance.signing_key)"
        key = load_any_private_key(self._full(path), what, path)
        self.read_bytes(path)  # recorded: another key re-analyses
        for other in enclave_keys:
            try:
                pem = self._full(other).read_bytes()
            except OSError:
                continue  # the signing action reports a missing enclave key
            if same_public_key(pem, key):
                raise UserError(f"provenance.signing_key '{path}' is the enclave signing key "
                                f"('{other}'): use a separate Ed25519 or ECDSA P-256 key")
        return key_id(check_signing_key(key, what, path).public_key())

    def image_key_fingerprint(self, path: str) -> str:
        """The public fingerprint of an image (SEFS) key file."""
        from occlum_rules.stages.securefs import key_fingerprint, load_image_key

        try:
            fingerprint = key_fingerprint(load_image_key(self._full(path)))
        except Exception as exc:
            raise UserError(f"image_key: {getattr(exc, 'message', exc)}") from None
        self.read_bytes(path)  # recorded: another key re-analyses
        return fingerprint


def dev_signing_key() -> str:
    """The built-in development signing key shipped with the package (public, for tests
    and first builds only)."""
    import occlum_rules.templates

    return str(Path(occlum_rules.templates.__file__).resolve().parent / "dev-signing-key.pem")
