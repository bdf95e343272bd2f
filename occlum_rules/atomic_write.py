"""Files that appear whole or not at all: the project's one temp-file-then-rename.

Every file the build writes in place goes through here, so a reader, or a build killed
half-way, never sees half a file, and the choices below are made once:

* the temporary file sits beside the target (same file system, so the rename is atomic),
  is named ``.<name>.<pid>.<n>.tmp`` (unique per process and call: parallel workers and
  threads never share one) and is created exclusively; a sole writer (``sole_writer``)
  uses ``.<name>.tmp``, so a killed run leaves nothing the next run does not replace;
* without ``mode`` the file gets what a plain ``open(path, "w")`` would give (0666 minus
  the umask); with ``mode`` it gets exactly that mode, and is *created* with it, so a
  secret (0600) is never readable by others, not even for a moment;
* ``durable=True`` also fsyncs the file before the rename and the directory after it, for
  files whose loss after a power cut would be wrong rather than merely slow;
* on any failure the temporary file is removed and the old target stays untouched.

:func:`write_atomic` writes bytes already in memory; :class:`AtomicFile` streams a large
output (package tarballs, protected files) through an open descriptor and renames it on
:meth:`AtomicFile.commit`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import stat
from types import TracebackType
from typing import BinaryIO

from occlum_rules.file_copy import kernel_copy

_counter = itertools.count()


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A new temporary file beside ``path``; :meth:`commit` renames it onto ``path``.

    Use it as a context manager (commit on success, discard on an exception) or call
    :meth:`commit` / :meth:`discard` yourself, e.g. to stage several files before renaming
    any. ``fd`` is the raw descriptor (for ``os.writev`` and friends); :attr:`file` is a
    binary file object over it, created on first use.
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: int | None = None,
                 durable: bool = False, makedirs: bool = True, sole_writer: bool = False
                 ) -> None:
        self.path = os.fspath(path)
        self.mode = mode
        self.durable = durable
        parent, name = os.path.split(self.path)
        if makedirs and parent:
            os.makedirs(parent, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        if sole_writer:
            # one writer at a time (the one action owning an output): a fixed name, so what
            # a killed run left behind is truncated and renamed away by the next one instead
            # of staying in an output directory for ever
            self.tmp = os.path.join(parent, f".{name}.tmp")
            flags |= os.O_TRUNC
        else:
            self.tmp = os.path.join(parent, f".{name}.{os.getpid()}.{next(_counter)}.tmp")
            flags |= os.O_EXCL
        self.fd: int | None = os.open(self.tmp, flags, 0o666 if mode is None else mode & 0o777)
        self._file: BinaryIO | None = None

    @property
    def file(self) -> BinaryIO:
        if self._file is None:
            if self.fd is None:
                raise ValueError(f"{self.path}: the atomic file is already closed")
            self._file = os.fdopen(self.fd, "wb", closefd=False)
        return self._file

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.file.write(data)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()  # flushes; the descriptor stays ours (closefd=False)
            self._file = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def commit(self) -> None:
        """Flush, set the mode, rename onto the target (and fsync when durable)."""
        try:
            self._close()
            if self.mode is not None:
                os.chmod(self.tmp, self.mode)  # exact, whatever the umask took away
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        if self.durable:
            _fsync_dir(os.path.dirname(self.path))

    def discard(self) -> None:
        """Drop the temporary file; the target is left as it was."""
        with contextlib.suppress(OSError):
            self._close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomic(path: str | os.PathLike[str], *parts: bytes | bytearray | memoryview,
                 mode: int | None = None, durable: bool = False,
                 sole_writer: bool = False) -> None:
    """Write ``parts`` (bytes-like, in order) to ``path`` atomically (see the module doc)."""
    f = AtomicFile(path, mode=mode, durable=durable, sole_writer=sole_writer)
    try:
        for part in parts:
            f.write(part)
    except BaseException:
        f.discard()
        raise
    f.commit()


def publish(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
            mode: int | None = None, durable: bool = False) -> None:
    """Rename a finished file that a tool wrote elsewhere on the same file system (a
    private work directory) onto ``dst``, with exactly ``mode`` when given."""
    if mode is not None:
        os.chmod(src, mode)
    if durable:
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(src, dst)
    if durable:
        _fsync_dir(os.path.dirname(os.fspath(dst)))


def remove_leftovers(path: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files a killed writer of ``path`` left beside it; return their
    names. Only for a path one owner writes at a time (an in-place action's declared
    output, under the workspace lock): a live writer's temporary would go too."""
    parent, name = os.path.split(os.fspath(path))
    pattern = re.compile(rf"\.{re.escape(name)}(\.\d+\.\d+)?\.tmp")
    try:
        names = os.listdir(parent or ".")
    except FileNotFoundError:
        return []
    gone = []
    for entry in names:
        if pattern.fullmatch(entry):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(parent, entry))
                gone.append(entry)
    return sorted(gone)


def _place(make, path: str | os.PathLike[str]) -> None:
    """``make(tmp)`` creates a new entry beside ``path``; it is then renamed onto ``path``."""
    path = os.fspath(path)
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.{os.getpid()}.{next(_counter)}.tmp")
    make(tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_with_symlink(target: str, path: str | os.PathLike[str]) -> None:
    """Make ``path`` a symlink to ``target`` atomically (a symlink beside it, renamed)."""
    _place(lambda tmp: os.symlink(target, tmp), path)


def replace_with_hardlink(existing: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Make ``path`` another name of the file ``existing`` atomically. Raises OSError where
    the file system cannot (another device, no hard links): callers copy instead."""
    _place(lambda tmp: os.link(existing, tmp), path)


def detach(path: str | os.PathLike[str]) -> None:
    """Give ``path`` a file of its own (a copy, renamed over it) when it shares its inode
    with other names, before it is written in place: the local store keeps outputs as hard
    links, and an in-place write would change the stored blob too."""
    path = os.fspath(path)
    st = os.stat(path)
    if st.st_nlink < 2:
        return
    with AtomicFile(path, mode=stat.S_IMODE(st.st_mode), makedirs=False) as f, \
            open(path, "rb") as fin:
        assert f.fd is not None
        if not kernel_copy(fin.fileno(), f.fd, st.st_size):
            shutil.copyfileobj(fin, f.file)
            f.file.flush()  # before the times are set: a later write would move mtime
        os.utime(f.tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
