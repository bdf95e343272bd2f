"""Running build tools: one deterministic environment, one way to report a failure.

A tool's output must not depend on who runs it, so every tool the build starts gets the C
locale, UTC and the build's SOURCE_DATE_EPOCH (:func:`deterministic_env`). A tool that
cannot be started or exits non-zero is the user's problem to fix, not a bug: it becomes one
:class:`~occlum_rules.errors.UserError` naming what was being done and quoting the tool's
own (trimmed) output (:func:`run_tool`), never a traceback.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence

from occlum_rules.errors import UserError

DEFAULT_PATH = "/usr/bin:/bin"


def deterministic_env(source_date_epoch: int | str | None, *, path: str | None = None,
                      prepend_path: Sequence[str] = (), home: bool = True,
                      passthrough: Iterable[str] = (), inherit: bool = False,
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a build tool.

    Fixed: ``LC_ALL=C``, ``TZ=UTC`` and (when not None) ``SOURCE_DATE_EPOCH``. ``PATH`` is
    ``path`` (default: the caller's PATH) behind ``prepend_path``; ``HOME`` is the caller's
    (``/tmp`` without one) unless ``home`` is False. ``passthrough`` names variables copied
    from the caller when set; ``inherit`` starts from the caller's whole environment instead
    (tools that find their own parts through it). ``extra`` is applied last.
    """
    env: dict[str, str] = dict(os.environ) if inherit else {}
    env.update({k: os.environ[k] for k in passthrough if k in os.environ})
    base = path or os.environ.get("PATH", DEFAULT_PATH)
    env["PATH"] = os.pathsep.join([*prepend_path, base])
    env["LC_ALL"] = "C"
    env["TZ"] = "UTC"
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    if home:
        env.setdefault("HOME", os.environ.get("HOME", "/tmp"))
    env.update(extra or {})
    return env


def trim_output(text: str, *, lines: int = 25, tail: bool = False, one_line: bool = False,
                hide: str | None = None, max_chars: int | None = None) -> str:
    """A tool's output cut to what a reader needs: ``lines`` non-blank lines from the start
    (or the end with ``tail``), ``hide`` (a private work path) removed, joined by newlines or,
    with ``one_line``, by `` | ``; at most ``max_chars`` characters (the end is kept)."""
    if hide:
        text = text.replace(hide, "")
    rows = [r.strip() if one_line else r.rstrip() for r in text.splitlines() if r.strip()]
    if not rows:
        return "(no output)"
    if len(rows) > lines:
        more = f"... ({len(rows) - lines} more lines)"
        rows = [more, *rows[-lines:]] if tail else [*rows[:lines], more]
    out = (" | " if one_line else "\n").join(rows)
    if max_chars is not None and len(out) > max_chars:
        out = "..." + out[-max_chars:]
    return out


def run_tool(argv: Sequence[str | os.PathLike[str]], what: str, *, cwd: str | os.PathLike[str] | None = None,
             env: Mapping[str, str] | None = None, input: str | None = None,
             check: bool = True, timeout: float | None = None, lines: int = 25,
             tail: bool = False, one_line: bool = False, hide: str | None = None,
             max_chars: int | None = None, not_found: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its output captured (text, undecodable bytes replaced) and
    ``input`` (if any) on its stdin.

    Not startable, or (with ``check``) a non-zero exit, raises one UserError:
    ``<what>: tool not found: <argv0>`` / ``<what> failed (exit N):`` and the trimmed
    output (stderr, else stdout; the trimming options are :func:`trim_output`'s). The
    message is one line when ``one_line`` is set. ``not_found`` replaces the whole
    message for a tool that does not exist (to say what the user should install).
    """
    argv = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.run(argv, cwd=cwd, env=None if env is None else dict(env),
                              input=input, capture_output=True, text=True, errors="replace",
                              timeout=timeout)
    except FileNotFoundError:
        raise UserError(not_found or f"{what}: tool not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: {argv[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise UserError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    if check and proc.returncode != 0:
        detail = trim_output(proc.stderr or proc.stdout, lines=lines, tail=tail, one_line=one_line, hide=hide,
                             max_chars=max_chars)
        raise UserError(f"{what} failed (exit {proc.returncode}):{' ' if one_line else chr(10)}"
                        f"{detail}")
    return proc
