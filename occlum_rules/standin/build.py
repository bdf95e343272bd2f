"""Compile the stand-in Occlum binaries (LibOS, PAL, init, occlum-run) with the host C compiler.

Used when no Occlum install is found, so the config-MAC patch, signing and measurement stages
still run on a real enclave-shaped ELF. Everything built here is labelled as a stand-in: an
instance built with it cannot run on SGX.

Reproducibility: the sources are copied into a private work directory and compiled there with
relative names, fixed flags and a fixed order, with no build-id, no compiler ident string and
``-ffile-prefix-map``; nothing about the checkout or output path reaches the bytes. The same
sources and compiler therefore give the same files wherever they are built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from occlum_rules.atomic_write import publish
from occlum_rules.errors import UserError
from occlum_rules.process import deterministic_env, run_tool, trim_output

SOURCE_DIR = Path(__file__).resolve().parent
SUPPORTED_SDK_MINORS = (20, 21)  # the occlum/linux-sgx 2.20 and 2.21 forks (signer profiles)

LIBOS_NAME = "libocclum-libos.so"
PAL_NAME = "libocclum-pal.so"
INIT_NAME = "init"
OCCLUM_RUN_NAME = "occlum-run"

_TRIM_LINES, _TRIM_CHARS = 8, 600  # of a failing compiler's stderr, on one line
_HEADER = "standin.h"
_LINKER_SCRIPT = "standin.lds"
_C_SOURCES = ("libos_standin.c", "pal_standin.c", "init_standin.c", "run_standin.c")

# Flags shared by every stand-in binary. Each one pins something a distribution's compiler
# default could otherwise change (stack protector, CET notes, ident, unwind tables).
_COMMON_CFLAGS = (
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-ident",
)
_COMMON_LDFLAGS = (
    "-Wl,--build-id=none",
    "-Wl,--hash-style=gnu",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noexecstack",
    "-Wl,-z,relro",
    "-Wl,-z,now",
)
# Enclave-like and init-like binaries: a PIE with no interpreter and no C library.
_FREESTANDING = (
    "-ffreestanding",
    "-fno-builtin",
    "-fpie",
    "-nostdlib",
    "-Wl,-pie",
    "-Wl,--no-dynamic-linker",
)


@dataclass(frozen=True)
class StandinFiles:
    """Paths of the freshly built stand-in files (plain names; versioned names are the instance's job)."""

    libos: Path
    pal: Path
    init: Path
    occlum_run: Path
    sdk_version: tuple[int, int, int]


def standin_sources() -> list[Path]:
    """Every file whose content shapes the stand-in bytes, for the build's action key.

    This module is included because the compiler flags live here. The compiler's identity and
    ``sdk_minor`` also shape the output; the caller adds those to the key.
    """
    names = sorted((*_C_SOURCES, _HEADER, _LINKER_SCRIPT, "build.py"))
    return [SOURCE_DIR / name for name in names]


def build_standin(
    out_dir: Path,
    *,
    cc: str = "gcc",
    sdk_minor: int = 20,
    src_dir: Path | None = None,
) -> StandinFiles:
    """Build the stand-in LibOS, PAL, init and occlum-run into ``out_dir``.

    ``sdk_minor`` picks the sdk_version word in ``g_global_data`` (2.<minor>.100), which decides
    which Occlum signer profile accepts the LibOS. ``src_dir`` overrides where the sources are
    read from (tests use it to build copies from different places).
    """
    if sdk_minor not in SUPPORTED_SDK_MINORS:
        supported = ", ".join(f"2.{m}" for m in SUPPORTED_SDK_MINORS)
        raise UserError(
            f"unsupported SDK version 2.{sdk_minor} for the stand-in LibOS (supported: {supported})"
        )
    compiler = _resolve_compiler(cc)
    _check_target(cc, compiler)
    src = Path(src_dir) if src_dir is not None else SOURCE_DIR
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".standin-build-", dir=out_dir))
    except OSError as exc:
        raise UserError(
            f"cannot create the stand-in output directory: {exc.strerror or exc}",
            where=str(out_dir),
        ) from exc
    try:
        for name in (*_C_SOURCES, _HEADER, _LINKER_SCRIPT):
            try:
                shutil.copyfile(src / name, work / name)
            except OSError as exc:
                raise UserError(
                    f"stand-in source missing or unreadable: {exc.strerror or exc}",
                    where=str(src / name),
                ) from exc
        prefix_map = f"-ffile-prefix-map={work}=."
        for out_name, what, args in _build_steps(sdk_minor):
            cmd = [compiler, prefix_map, *args, "-o", out_name]
            _run_compiler(cc, cmd, work, what)
        # The LibOS is checked where it was built, so a bad layout never reaches out_dir.
        from occlum_rules.standin.shape import check_libos_shape  # pyelftools: only to build

        try:
            shape = check_libos_shape(work / LIBOS_NAME)
        except UserError as exc:
            raise UserError(
                f"C compiler {cc!r} produced a stand-in LibOS the build cannot use: {exc.message}"
            ) from exc
        for out_name, _what, _args in _build_steps(sdk_minor):
            publish(work / out_name, out_dir / out_name, mode=0o755)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return StandinFiles(
        libos=out_dir / LIBOS_NAME,
        pal=out_dir / PAL_NAME,
        init=out_dir / INIT_NAME,
        occlum_run=out_dir / OCCLUM_RUN_NAME,
        sdk_version=shape.sdk_version,
    )


def toolchain_identity(cc: str = "gcc") -> str:
    """The compiler's and linker's version lines, for the build's action key.

    The stand-in bytes depend on the toolchain as much as on the sources, so a compiler
    upgrade must invalidate cached stand-ins.
    """
    compiler = _resolve_compiler(cc)

    def first_line(cmd: list[str]) -> str:
        proc = _run(cmd, repr(" ".join(cmd)))
        return (proc.stdout.strip().splitlines() or [""])[0]

    linker = first_line([compiler, "-print-prog-name=ld"])
    return f"{first_line([compiler, '--version'])}; {first_line([linker, '--version'])}"


def _build_steps(sdk_minor: int) -> list[tuple[str, str, list[str]]]:
    """(output name, description, compiler arguments) in the fixed build order."""
    common = [*_COMMON_CFLAGS, *_COMMON_LDFLAGS]
    return [
        (
            LIBOS_NAME,
            "stand-in LibOS",
            [
                *common,
                *_FREESTANDING,
                f"-DSDK_MINOR={sdk_minor}",
                "-Wl,--export-dynamic",
                "-Wl,-e,enclave_entry",
                "-Wl,-soname,libocclum-libos.so.0",
                f"-Wl,-T,{_LINKER_SCRIPT}",
                "libos_standin.c",
            ],
        ),
        (
            PAL_NAME,
            "stand-in PAL",
            [
                *common,
                "-fPIC",
                "-shared",
                "-fvisibility=hidden",
                "-Wl,-soname,libocclum-pal.so.0",
                "pal_standin.c",
            ],
        ),
        (INIT_NAME, "stand-in init", [*common, *_FREESTANDING, "-Wl,-e,_start", "init_standin.c"]),
        (
            OCCLUM_RUN_NAME,
            "stand-in occlum-run",
            [*common, *_FREESTANDING, "-Wl,-e,_start", "run_standin.c"],
        ),
    ]


def _resolve_compiler(cc: str) -> str:
    found = shutil.which(cc)
    if found is None:
        raise UserError(
            f"C compiler {cc!r} not found; it is needed to build the stand-in LibOS "
            "(no Occlum install was found). Install gcc or point cc at a compiler."
        )
    return os.path.abspath(found)  # the compiler runs inside the work directory


def _check_target(cc: str, compiler: str) -> None:
    """SGX enclaves are x86-64; a compiler for another target cannot make the stand-in."""
    proc = _run([compiler, "-dumpmachine"], f"C compiler {cc!r}", check=False)
    machine = proc.stdout.strip()
    if proc.returncode != 0 or not machine.startswith("x86_64"):
        found = machine or _trim(proc.stderr)
        raise UserError(
            f"C compiler {cc!r} does not target x86-64 (reports {found!r}); the stand-in LibOS "
            "is an x86-64 SGX enclave ELF"
        )


def _run_compiler(cc: str, cmd: list[str], work: Path, what: str) -> None:
    _run(cmd, f"C compiler {cc!r} building the {what}", cwd=work, hide=f"{work}/")


def _run(cmd: list[str], what: str, *, cwd: Path | None = None, hide: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """The compiler with the user's environment (it may find its parts through it) in the C
    locale; a failure is one line quoting the end of its stderr, without the work path."""
    return run_tool(cmd, what, cwd=cwd, env=deterministic_env(None, inherit=True), check=check,
                    tail=True, lines=_TRIM_LINES, one_line=True, hide=hide,
                    max_chars=_TRIM_CHARS)


def _trim(stderr: str) -> str:
    return trim_output(stderr, lines=_TRIM_LINES, tail=True, one_line=True, max_chars=_TRIM_CHARS)
