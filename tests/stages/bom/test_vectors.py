"""Every copy_bom reference case, run through our drop-in CLI and compared with the real tool.

Each case runs in a scratch copy of its directory with its args/env (see the vectors'
CASES-README). Two properties of the vector *storage* (not of copy_bom) are undone first,
because the read-only mirror of ../shared lost them:

* symlinks were stored as regular files holding the link text: the only such files are the
  ones without a trailing newline (every real data file ends with one), so those become links;
* modes were normalised to a=rX: we add u+w back; a source that was 0600/0700 originally
  comes back as 0644/0755, so a mode difference is accepted only when it is exactly that loss.

A file-content difference is accepted only when our image holds the *current* bytes of a host
file (outside the case dir) whose package changed since the recording (e.g. openssh updates).
Where we deliberately differ from copy_bom, the case is listed in DEVIATIONS and our own
behaviour is asserted instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from tests.conftest import VECTORS, vectors_path

from .helpers import require_host_setup, run_cli

CASES_DIR = VECTORS / "bom" / "cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir()) if CASES_DIR.is_dir() else ["<no vectors>"]

# case -> why we differ from copy_bom (each has its own assertion in test_case)
DEVIATIONS = {
    "05_missing_file": "a missing `files` source is found while planning: we exit 254 before "
                       "writing anything; copy_bom fails half-way and leaves a partial image",
    "16_missing_dep_glibc": "a `files` ELF with an unresolvable DT_NEEDED is an error (exit 248) "
                            "naming binary and library; copy_bom only warns and drops libc too",
    "17_missing_dep_musl": "same error as copy_bom (exit 248) but raised while planning, so the "
                           "image is not created",
    "29_dir_with_missing_lib": "for an ELF copied with `dirs` we still copy the libraries that can "
                               "be found (libc.so.6) and warn about the missing one; with glibc "
                               "copy_bom drops all of them",
    "32_bare_relative_name_only": "a bare relative file name gets full dependency discovery (libc.so.6 "
                                  "is added); copy_bom passes the bare name to ld.so, which fails",
}


def _scratch_copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)
    for dirpath, _dirnames, filenames in os.walk(dst):
        os.chmod(dirpath, stat.S_IMODE(os.stat(dirpath).st_mode) | 0o200)
        for name in filenames:
            full = Path(dirpath) / name
            mode = stat.S_IMODE(full.lstat().st_mode) | 0o200
            data = full.read_bytes()
            if (0 < len(data) < 4096 and not data.endswith(b"\n") and b"\x00" not in data
                    and not data.startswith(b"\x7fELF") and not any(c in data for c in b" \t\n")):
                full.unlink()
                full.symlink_to(data.decode())
            else:
                os.chmod(full, mode)


def _dump(root: Path) -> list[str]:
    sys.path.insert(0, str(CASES_DIR.parent))
    try:
        import dump_tree  # the vectors' own dumper
    finally:
        sys.path.pop(0)
    return dump_tree.dump(str(root))


def _parse(line: str) -> tuple[str, str, str, str]:
    kind, mode, rest = line.split(" ", 2)
    if kind == "f":
        path, _, sha = rest.rpartition(" sha256=")
        return kind, mode, path, sha
    if kind == "l":
        path, _, target = rest.partition(" -> ")
        return kind, mode, path, target
    return kind, mode, rest, ""


def _mode_lost_in_storage(expected: str, ours: str) -> bool:
    e, o = int(expected, 8), int(ours, 8)
    return e != o and (e | 0o044 | (0o011 if e & 0o100 else 0)) == o


def _host_drift(case_dir: Path, root: Path, path: str, ours_sha: str) -> bool:
    from occlum_rules.stages.bom import plan_bom

    cwd = os.getcwd()
    os.chdir(case_dir)
    try:
        plan = plan_bom(*_plan_args(case_dir))
    finally:
        os.chdir(cwd)
    node = plan.tree.node(path)
    src = getattr(node, "src", None)
    if not src or Path(src).resolve().is_relative_to(case_dir.resolve()):
        return False
    return hashlib.sha256(Path(src).read_bytes()).hexdigest() == ours_sha


def _args(case_dir: Path) -> list[str]:
    if (case_dir / "args").exists():
        return (case_dir / "args").read_text().split()
    args = ["-f", "bom.yaml", "--root", "image"]
    if (case_dir / "includes").is_dir():
        args += ["--include-dir", "includes"]
    return args


def _plan_args(case_dir: Path) -> tuple:
    args = _args(case_dir)
    bom = args[args.index("-f") + 1]
    incs = [args[i + 1] for i, a in enumerate(args) if a == "--include-dir"]
    return (bom, incs, None, None, None)


def compare_trees(case_dir: Path, root: Path, expected: list[str], ours: list[str]) -> list[str]:
    """Differences that are not explained by vector storage or host package drift."""
    exp = {(_parse(line)[2]): line for line in expected}
    got = {(_parse(line)[2]): line for line in ours}
    problems = []
    for path in sorted(set(exp) | set(got)):
        e, g = exp.get(path), got.get(path)
        if e == g:
            continue
        if e is None or g is None:
            problems.append(f"expected {e!r}, got {g!r}")
            continue
        ek, em, _, ex = _parse(e)
        gk, gm, _, gx = _parse(g)
        if ek != gk:
            problems.append(f"expected {e!r}, got {g!r}")
            continue
        if em != gm and not _mode_lost_in_storage(em, gm):
            problems.append(f"mode: expected {e!r}, got {g!r}")
        if ex != gx and not (ek == "f" and _host_drift(case_dir, root, path, gx)):
            problems.append(f"content: expected {e!r}, got {g!r}")
    return problems


@pytest.mark.parametrize("case", CASES)
def test_case(case: str, tmp_path: Path) -> None:
    vectors_path("bom", "cases")
    require_host_setup()
    src = CASES_DIR / case
    work = tmp_path / case
    _scratch_copy(src, work)
    if (work / "preimage").is_dir():
        shutil.copytree(work / "preimage", work / "image", symlinks=True)
    env = {"OCCLUM_LOG_LEVEL": "info"}
    if (work / "env").exists():
        for line in (work / "env").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    proc = run_cli(_args(work), work, env)
    assert "Traceback" not in proc.stderr, proc.stderr
    expected_exit = int((src / "exit_code.txt").read_text())
    root_name = (src / "root").read_text().strip() if (src / "root").exists() else "image"
    root = work / root_name
    ours = _dump(root)
    expected = (src / "expected_tree.txt").read_text().splitlines()
    context = f"exit={proc.returncode}\nstderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"

    if case in ("05_missing_file", "17_missing_dep_musl"):
        assert expected_exit != 0 and proc.returncode == expected_exit, context
        assert ours == ["# root does not exist"], f"{DEVIATIONS[case]}\n{ours}"
        return
    if case == "16_missing_dep_glibc":
        assert expected_exit == 0
        assert proc.returncode == 248, context
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and "app_missing" in err[0] and "libmissing.so" in err[0], context
        assert ours == ["# root does not exist"]
        return
    if case in ("29_dir_with_missing_lib", "32_bare_relative_name_only"):
        assert proc.returncode == expected_exit == 0, context
        extra = [line for line in ours if line not in expected]
        assert [line for line in expected if line not in ours] == [], DEVIATIONS[case]
        assert [_parse(line)[2] for line in extra] == [
            "opt", "opt/occlum", "opt/occlum/glibc", "opt/occlum/glibc/lib",
            "opt/occlum/glibc/lib/libc.so.6"], DEVIATIONS[case]
        if case == "29_dir_with_missing_lib":
            assert "libmissing.so" in proc.stderr
        return

    if expected_exit != 0:
        assert proc.returncode != 0, context
        assert proc.returncode == expected_exit, context
        assert len(proc.stderr.strip().splitlines()) == 1, context
    else:
        assert proc.returncode == 0, context
    problems = compare_trees(work, root, expected, ours)
    assert not problems, "\n".join(problems) + "\n" + context


def test_deviation_list_names_real_cases() -> None:
    vectors_path("bom", "cases")
    for case in DEVIATIONS:
        assert case in CASES
