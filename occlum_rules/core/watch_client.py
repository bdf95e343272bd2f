"""The build's side of the watcher: arm output trees before their stamps are taken, and on
the next build ask whether they are still clean instead of walking them.

What a build learned from the daemon lives beside the action's record in
``actions/<id hash>.watch``: the daemon's nonce, and per output tree the token and the root's
(dev, inode) at arming, tied to the record it vouches for by that file's (inode, size,
mtime). Anything that does not line up -- no daemon, another daemon, another record, a root
that is now another directory, a token the daemon no longer calls clean, a slow or dead
daemon -- means "not vouched", and the check walks the tree exactly as it does without a
watcher. The watcher only ever saves a walk; it never makes a check say "intact" that the
walk would not have said at the time the tree was armed.
"""

from __future__ import annotations

import itertools
import json
import marshal
import os
import socket
from pathlib import Path

from occlum_rules import state_file
from occlum_rules.core.action import Action
from occlum_rules.core.build_env import BuildEnv, abs_path
from occlum_rules.core.outputs import output_stamps
from occlum_rules.core.outputs import outputs_intact as walked_intact

SOCKET = "watch.sock"
MARKER_DIR = "watch"
TIMEOUT = 10.0  # a daemon slower than this is treated as absent: the build walks instead
SIDECAR_KIND = "watch-vouch"
SIDECAR_VERSION = 2  # 2: the stamps of the output files

_counter = itertools.count()


def status(state_dir: str) -> dict | None:
    """What the daemon serving ``state_dir`` knows (trees, clean ones, watches), or None."""
    return _request(state_dir, {"op": "hello"})


def _request(state_dir: str, request: dict) -> dict | None:
    path = os.path.join(state_dir, SOCKET)
    if not os.path.exists(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return None  # the daemon died mid-answer
                data += chunk
        reply = json.loads(data)
    except (OSError, ValueError):
        return None
    return reply if isinstance(reply, dict) and "error" not in reply else None


def _trees(action: Action) -> list[str]:
    return [rel for rel, kind in zip(action.outputs, action.output_types) if kind == "dir"]


def arm(env: BuildEnv, action: Action) -> dict | None:
    """Ask the daemon to watch ``action``'s output trees from now on. Call it *before* the
    stamps that the record will hold are taken. None without a daemon (or any tree refused)."""
    trees = _trees(action)
    if not trees:
        return None
    reply = _request(env.state_dir, {"op": "arm", "roots": [abs_path(env, rel) for rel in trees]})
    if reply is None or not all(isinstance(t, list) for t in reply.get("trees", [None])):
        return None
    return {"nonce": reply["nonce"], "trees": dict(zip(trees, reply["trees"]))}


def sidecar_path(env: BuildEnv, action: Action) -> Path:
    from occlum_rules.core.action_state import state_path  # action_state imports outputs

    return state_path(env, action.id).with_suffix(".watch")


def _record_stamp(env: BuildEnv, action: Action) -> tuple[int, int, int] | None:
    from occlum_rules.core.action_state import state_path

    try:
        st = os.stat(state_path(env, action.id))
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def file_stamps(action: Action, stamps: dict | bytes) -> dict:
    """The stamps of the outputs that are files (a few, beside trees of thousands), from a
    record's stamps (a dict, or its marshal bytes)."""
    decoded: dict = marshal.loads(stamps) if isinstance(stamps, bytes) else stamps
    return {rel: decoded.get(rel) for rel, kind in zip(action.outputs, action.output_types)
            if kind != "dir"}


def remember(env: BuildEnv, action: Action, armed: dict | None, files: dict) -> None:
    """After the record is written: keep what the daemon vouches for, tied to that record.

    ``files``: the record's :func:`file_stamps`, copied here so that a vouched check need not
    decode the record's stamps."""
    path = sidecar_path(env, action)
    stamp = _record_stamp(env, action)
    if armed is None or stamp is None:
        path.unlink(missing_ok=True)
        return
    state_file.write_state(path, SIDECAR_KIND, SIDECAR_VERSION, marshal.dumps(
        {"record": stamp, "files": files, **armed}, 4))


def vouched(env: BuildEnv, action: Action, trees: list[str] | None = None) -> bool:
    """Does the daemon say every output tree is what the record's stamps say, and is every
    output file still as the record left it?"""
    trees = _trees(action) if trees is None else trees
    if not trees:
        return False
    payload = state_file.read_state(sidecar_path(env, action), SIDECAR_KIND, SIDECAR_VERSION)
    if isinstance(payload, state_file.Missing):
        return False
    try:
        side = marshal.loads(payload)
        if side["record"] != _record_stamp(env, action) or set(side["trees"]) != set(trees):
            return False
        for rel, (_token, dev, ino) in side["trees"].items():
            st = os.lstat(abs_path(env, rel))
            if (st.st_dev, st.st_ino) != (dev, ino):
                return False
        files = side["files"]
        if set(files) != set(file_stamps(action, {})):
            return False
        for rel, recorded in files.items():
            st = os.lstat(abs_path(env, rel))
            if recorded != (st.st_size, st.st_mtime_ns, st.st_mode):
                return False
        tokens = [side["trees"][rel][0] for rel in trees]
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        return False
    marker = os.path.join(env.state_dir, MARKER_DIR, f"{os.getpid()}-{next(_counter)}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    except OSError:
        return False
    try:
        reply = _request(env.state_dir, {"op": "check", "nonce": side["nonce"],
                               "marker": os.path.basename(marker), "tokens": tokens})
    finally:
        os.unlink(marker)
    return (reply is not None and reply.get("nonce") == side["nonce"]
            and reply.get("clean") == [True] * len(tokens))


def outputs_intact(action: Action, env: BuildEnv, state: dict) -> bool:
    """``outputs.outputs_intact``, without the walk when the watcher vouches for the trees.

    Without a voucher, a running daemon is asked to arm the trees before the walk; if the
    walk finds them intact, the tokens are kept for the next build."""
    trees = _trees(action)
    if not trees:
        return walked_intact(action, env, state)
    if vouched(env, action, trees):
        return True  # the record's stamps (a tree's worth) need not even be decoded
    armed = arm(env, action)
    intact = walked_intact(action, env, state)
    if intact and armed is not None:
        remember(env, action, armed, file_stamps(action, state.get("stamps") or {}))
    return intact


def record_stamps(action: Action, env: BuildEnv,
                  described: dict | bytes | None) -> tuple[dict | bytes, dict | None]:
    """The stamps an action's new record holds, and the daemon's tokens for its trees.

    ``described``: the stamps of the walk that described the outputs of a run (a dict, or
    its marshal bytes as ``describe_outputs`` gives them; taken before the trees could be
    armed: after arming, a second walk must agree with them, else the tokens are dropped
    and the next build walks). Call after every write of the action (including storing the
    outputs in the local store, which links them)."""
    armed = arm(env, action)
    if armed is None:
        return (described if described is not None else output_stamps(action, env)), None
    stamps = output_stamps(action, env)
    if isinstance(described, bytes):  # encoded by describe_outputs
        described = marshal.loads(described)
    if described is not None and stamps != described:
        return described, None  # something changed them after the run: let the walk decide
    return stamps, armed
