"""The stand-in PAL, init and occlum-run fail loudly, saying what they are."""

from __future__ import annotations

import ctypes
import errno
import subprocess

import pytest

from occlum_rules.standin.build import StandinFiles

MESSAGE = "stand-in LibOS: this instance cannot run on SGX"
PAL_FUNCTIONS = (
    ("occlum_pal_get_version", ()),
    ("occlum_pal_init", (None,)),
    ("occlum_pal_create_process", (None,)),
    ("occlum_pal_exec", (None,)),
    ("occlum_pal_kill", (-1, 9)),
    ("occlum_pal_destroy", ()),
)


@pytest.mark.parametrize(("name", "args"), PAL_FUNCTIONS)
def test_pal_functions_fail_with_enosys(standin: StandinFiles, capfd, name, args) -> None:
    pal = ctypes.CDLL(str(standin.pal), use_errno=True)
    ctypes.set_errno(0)
    assert getattr(pal, name)(*args) == -1
    assert ctypes.get_errno() == errno.ENOSYS
    err = capfd.readouterr().err
    assert f"{name}: {MESSAGE}" in err


def test_pal_soname_and_exports(standin: StandinFiles) -> None:
    out = subprocess.run(
        ["readelf", "-dW", "--dyn-syms", str(standin.pal)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip("readelf not available")
    assert "[libocclum-pal.so.0]" in out.stdout
    exported = {
        ln.split()[-1] for ln in out.stdout.splitlines() if " FUNC " in ln and " UND " not in ln
    }
    assert exported == {name for name, _ in PAL_FUNCTIONS}


@pytest.mark.parametrize("which", ["init", "occlum_run"])
def test_init_and_occlum_run_say_so_and_exit_1(standin: StandinFiles, which: str) -> None:
    proc = subprocess.run(
        [str(getattr(standin, which)), "--anything"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert MESSAGE in proc.stderr and "stand-in" in proc.stderr
    assert proc.stdout == ""
