"""The watcher daemon (``occlum-rules watch``): it vouches that an output tree did not change.

A null build otherwise stats every file of every output tree to prove nothing touched them.
The daemon keeps inotify watches on the trees a build asked it to *arm*; arming answers with
a token, and the token stays clean until any event arrives from any directory of that tree
(or the queue overflows, or the tree's root is moved or deleted). A build arms a tree
*before* it takes the stamps it records, so "clean" means the tree is still what those
stamps say, and the build may skip the walk.

Synchronisation: a check names a marker file the client created in the control directory
just before asking; inotify queues events in the system call that caused them and in order,
so once the daemon has read the marker's event, it has read every event of every change
that completed before the check. Any doubt (no marker within the timeout, an overflow, a
watch the kernel refused) answers "not clean" and the build walks as before.

One daemon per workspace: it listens on ``<out>/.occlum-rules/watch.sock`` and arms only
trees under its own ``out`` directory.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core import inotify
from occlum_rules.core.watch_client import MARKER_DIR, SOCKET

MARKER_TIMEOUT = 5.0


@dataclass
class _Tree:
    root: str
    wds: list[int] = field(default_factory=list)
    clean: bool = True


class Watcher:
    """The daemon's state: tokens, their trees and the watches behind them."""

    def __init__(self, state_dir: Path, out: Path):
        self.state_dir = state_dir
        self.out = os.path.join(os.path.realpath(out), "")
        self.nonce = secrets.token_hex(16)
        self.fd = inotify.init()
        self.tokens: dict[str, _Tree] = {}
        self.newest: dict[str, str] = {}  # root -> its newest token
        self.wd_tokens: dict[int, set[str]] = {}
        self.markers: set[str] = set()
        self.overflows = 0
        self.orphaned = False
        self.marker_dir = state_dir / MARKER_DIR
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self.marker_dir):
            os.unlink(self.marker_dir / name)
        self.marker_wd = inotify.add_watch(self.fd, str(self.marker_dir), inotify.IN_CREATE)

    # -- events ---------------------------------------------------------------------
    def _dirty(self, token: str) -> None:
        tree = self.tokens.get(token)
        if tree is None or not tree.clean:
            return
        tree.clean = False
        for wd in tree.wds:  # a dirty tree needs no more events: stop the flood
            users = self.wd_tokens.get(wd)
            if users is None:
                continue
            users.discard(token)
            if not users:
                del self.wd_tokens[wd]
                inotify.rm_watch(self.fd, wd)
        tree.wds = []

    def handle(self, events: list[inotify.Event]) -> None:
        for ev in events:
            if ev.mask & inotify.IN_Q_OVERFLOW:
                self.overflows += 1  # events were lost: nothing can be vouched for
                for token in list(self.tokens):
                    self._dirty(token)
                continue
            if ev.wd == self.marker_wd:
                if ev.mask & inotify.IN_IGNORED:  # out/ was removed: nobody can ask us now
                    self.orphaned = True
                elif ev.mask & inotify.IN_CREATE:
                    if len(self.markers) > 10000:  # markers of clients that died
                        self.markers.clear()
                    self.markers.add(ev.name)
                continue
            for token in list(self.wd_tokens.get(ev.wd, ())):
                self._dirty(token)

    def drain_until(self, marker: str) -> bool:
        """Read events until ``marker`` was created; False on overflow or timeout."""
        deadline = time.monotonic() + MARKER_TIMEOUT
        overflows = self.overflows
        while marker not in self.markers:
            left = deadline - time.monotonic()
            if left <= 0 or self.overflows != overflows:
                return False
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.handle(inotify.read(self.fd))
        self.markers.discard(marker)
        return self.overflows == overflows

    # -- requests -------------------------------------------------------------------
    def arm(self, root: str) -> list[Any] | None:
        """Watch every directory of ``root`` (each watch before its listing, so an entry
        made while arming is either listed or reported); [token, dev, ino] or None."""
        real = os.path.realpath(root)
        if not real.startswith(self.out):
            return None  # not this workspace's (the client compares the root's inode)
        old = self.newest.pop(root, None)
        if old is not None:
            self._dirty(old)
            self.tokens.pop(old, None)
        token = secrets.token_hex(12)
        tree = _Tree(root)
        self.tokens[token] = tree
        try:
            st = os.lstat(root)
            stack = [root]
            while stack:
                path = stack.pop()
                wd = inotify.add_watch(self.fd, path, inotify.CHANGES)
                tree.wds.append(wd)
                self.wd_tokens.setdefault(wd, set()).add(token)
                with os.scandir(path) as it:
                    stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
            if os.lstat(root).st_ino != st.st_ino:
                raise OSError("root replaced while arming")
        except OSError as exc:  # vanished, not a directory, or the watch limit (ENOSPC)
            print(f"occlum-rules watch: cannot watch {root}: {exc}", file=sys.stderr)
            self._dirty(token)
            del self.tokens[token]
            return None
        self.newest[root] = token
        return [token, st.st_dev, st.st_ino]

    def check(self, marker: str, tokens: list[str]) -> list[bool]:
        if not self.drain_until(marker):
            return [False] * len(tokens)
        return [bool(t in self.tokens and self.tokens[t].clean) for t in tokens]

    def answer(self, request: dict) -> dict:
        op = request.get("op")
        if op == "arm":
            return {"nonce": self.nonce, "trees": [self.arm(str(r)) for r in request["roots"]]}
        if op == "check":
            if request.get("nonce") != self.nonce:
                return {"nonce": self.nonce, "clean": [False] * len(request["tokens"])}
            return {"nonce": self.nonce,
                    "clean": self.check(str(request["marker"]), list(request["tokens"]))}
        if op == "hello":
            return {"nonce": self.nonce, "trees": len(self.tokens),
                    "clean": sum(t.clean for t in self.tokens.values()),
                    "watches": len(self.wd_tokens), "overflows": self.overflows}
        return {"error": f"unknown op {op!r}"}


def serve(state_dir: Path, out: Path, ready: Callable[[], object] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; ``ready`` (a callable) is told when it listens."""
    path = state_dir / SOCKET
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        print(f"occlum-rules watch: a watcher already serves {state_dir}", file=sys.stderr)
        return 1
    except OSError:
        pass
    finally:
        probe.close()
    watcher = Watcher(state_dir, out)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    sock.bind(str(path))
    sock.listen(16)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    if ready is not None:
        ready()
    try:
        while not stop and not watcher.orphaned:
            try:
                readable, _, _ = select.select([watcher.fd, sock.fileno()], [], [], 1.0)
            except InterruptedError:
                continue
            if watcher.fd in readable:
                watcher.handle(inotify.read(watcher.fd))
            if sock.fileno() in readable:
                conn, _ = sock.accept()
                with conn:
                    conn.settimeout(2.0)
                    try:
                        request = json.loads(_read_line(conn))
                        reply = watcher.answer(request)
                    except (OSError, ValueError, KeyError, TypeError) as exc:
                        reply = {"error": str(exc)}
                    try:
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                    except OSError:
                        pass
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        os.close(watcher.fd)
    if watcher.orphaned:
        print(f"occlum-rules watch: {state_dir} was removed; stopping", file=sys.stderr)
    return 0


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return data
