"""Linux inotify through ctypes: the watcher needs it and no new dependency may come in.

Only what the watcher uses: an instance, watches on directories, and the decoding of the
event records the kernel queues (synchronously, in the system call that changed the file:
whatever returned before a reader looks is already in the queue)."""

from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_CLOEXEC = 0o2000000

# Everything that can change what a stamps walk would see (content, mode, names, the
# directory itself); reads are not watched.
CHANGES = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT)

_HEADER = struct.Struct("iIII")


class Event(NamedTuple):
    wd: int
    mask: int
    name: str


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def init() -> int:
    fd = _lib().inotify_init1(IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return int(fd)


def add_watch(fd: int, path: str, mask: int) -> int:
    """A watch on directory ``path`` (never through a symlink)."""
    wd = _lib().inotify_add_watch(fd, os.fsencode(path), mask | IN_ONLYDIR | IN_DONT_FOLLOW)
    if wd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
    return int(wd)


def rm_watch(fd: int, wd: int) -> None:
    _lib().inotify_rm_watch(fd, wd)  # fails only if the kernel already dropped it


def decode(buf: bytes) -> list[Event]:
    events = []
    pos = 0
    while pos + _HEADER.size <= len(buf):
        wd, mask, _cookie, length = _HEADER.unpack_from(buf, pos)
        pos += _HEADER.size
        name = buf[pos:pos + length].split(b"\0", 1)[0]
        pos += length
        events.append(Event(wd, mask, os.fsdecode(name)))
    return events


def read(fd: int) -> list[Event]:
    return decode(os.read(fd, 1 << 16))
