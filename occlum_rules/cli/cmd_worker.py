"""``occlum-rules worker``: a Remote Workers API bot for a REAPI scheduler such as BuildGrid.

BuildGrid schedules remote execution through bots, and its usual bots are not installable
everywhere; this one runs leased actions as ``core/reapi_worker.py`` describes. It offers
the toolchains the workspace resolves here, so it receives only actions whose compilers it
has, byte for byte. Credentials come only from the environment, as for the remote cache.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from occlum_rules.errors import UserError

WHERE = "occlum-rules worker"


def toolchain_fingerprints(directory: Path | None) -> list[str]:
    """The fingerprints of the toolchains the workspace at ``directory`` resolves here.

    Every entry of the cc chain counts on its own (a rule may name its own chain), and a
    tool that is not installed is simply not offered."""
    if directory is None:
        return []
    from occlum_rules.core.workspace import load_workspace
    from occlum_rules.toolchains import Toolchains

    tc = Toolchains(load_workspace(directory))
    chain = list(dict.fromkeys([*(tc.ws.toolchains.get("cc") or []),
                                "occlum-gcc", "musl-gcc", "gcc"]))
    finders: list[Callable[[], Any]] = [partial(tc.find, "cc", [name]) for name in chain]
    finders += [tc.ar, partial(tc.find, "ld", ["ld"]), tc.go, tc.cargo]
    fingerprints = []
    for finder in finders:
        try:
            fingerprints.append(str(finder().fingerprint))
        except UserError:
            continue
    return sorted(set(fingerprints))


def _workspace_dir(value: str | None) -> Path | None:
    if value is not None:
        path = Path(value)
        if not (path / "WORKSPACE.yaml").is_file():
            raise UserError(f"no WORKSPACE.yaml in {path}", where="--workspace")
        return path
    here = Path.cwd()
    return here if (here / "WORKSPACE.yaml").is_file() else None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {text}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="occlum-rules worker",
        description="Run actions for a REAPI scheduler (BuildGrid) through the Remote Workers "
                    "API: take leases, fetch each input root from CAS, run the command in a "
                    "fresh directory with exactly its environment, upload the outputs and "
                    "report the ActionResult. Credentials come from the environment "
                    "(OCCLUM_RULES_REMOTE_TOKEN or _USER/_PASSWORD; OCCLUM_RULES_REMOTE_TLS_CA, "
                    "_CERT, _KEY for grpcs://).")
    parser.add_argument("--server", required=True, metavar="URL",
                        help="the scheduler, grpc://host:port or grpcs://host[:port]")
    parser.add_argument("--instance", default="", metavar="NAME",
                        help="the REAPI instance name (default: none)")
    parser.add_argument("--jobs", type=_positive, default=1, metavar="N",
                        help="actions run at once (default: 1)")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="where each action gets its fresh directory (default: a "
                             "temporary directory)")
    parser.add_argument("--workspace", metavar="DIR",
                        help="offer the toolchains this workspace resolves (default: the "
                             "current directory if it has WORKSPACE.yaml, else none)")
    parser.add_argument("--server-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="give up when the server has not answered for this long "
                             "(default: 30)")
    parser.add_argument("--quiet", action="store_true", help="print nothing per lease")
    args = parser.parse_args(argv)

    from occlum_rules.core import reapi_platform
    from occlum_rules.core.reapi_cache import ReapiCache, parse_target
    from occlum_rules.core.reapi_worker import Bot, WorkerOptions
    from occlum_rules.credentials import credentials_from_env, tls_files_from_env

    target = parse_target(args.server, args.instance, "--server", "--instance")
    properties = reapi_platform.worker_properties(
        toolchain_fingerprints(_workspace_dir(args.workspace)))
    cas = ReapiCache(target, upload=True, credentials=credentials_from_env(),
                     tls_files=tls_files_from_env(), timeout=60.0, retries=3,
                     max_failures=1_000_000, failure_budget=float("inf"),
                     writes_action_results=False, warn=lambda m: print(f"warning: {m}",
                                                                       file=sys.stderr))

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="occlum-rules-worker-") as scratch:
        work_dir = Path(args.work_dir) if args.work_dir else Path(scratch)
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {work_dir}: {exc.strerror}",
                            where="--work-dir") from None
        options = WorkerOptions(instance=target.instance_name, jobs=args.jobs,
                                work_dir=work_dir.resolve(), properties=properties,
                                server_timeout=args.server_timeout)
        bot = Bot(cas, options, log)
        stopped_by: list[str] = []

        def stop(signum: int, _frame: FrameType | None) -> None:
            stopped_by.append(signal.Signals(signum).name)
            bot.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log(f"worker: {target.display}, {args.jobs} job(s), work dir {work_dir} "
            f"(pid {os.getpid()})")
        try:
            bot.run()
        finally:
            cas.close()
        if stopped_by:
            print(f"worker: stopped ({stopped_by[0]})", file=sys.stderr)
    return 0
