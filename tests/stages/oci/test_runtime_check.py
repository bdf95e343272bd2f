"""The runtime check on real ELF files: a PAL built here that links an SGX uRTS library."""

from __future__ import annotations

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.oci.fsview import ImageFS
from occlum_rules.stages.oci.runtime_check import Pal, check_pal_libraries, check_program
from tests.support.pal import build_pal, build_urts

PAL_PATH = "/opt/occlum_instance/build/lib/libocclum-pal_sim.so.0.30.1"


@pytest.fixture(scope="module")
def pal(tmp_path_factory) -> Pal:
    tmp = tmp_path_factory.mktemp("pal")
    urts = build_urts(tmp / "sdk")
    built = build_pal(tmp / "libocclum-pal_sim.so.0.30.1", urts)
    return Pal(file=str(built), image_path=PAL_PATH, description="test PAL")


def _fs(*entries: list) -> ImageFS:
    fs = ImageFS()
    fs.apply(0, [["bin/sh", "file", 0o755, ""], *entries])
    return fs


def test_missing_library_is_one_error_naming_library_mode_and_pal(pal):
    with pytest.raises(UserError) as caught:
        check_pal_libraries(_fs(), pal, "SIM", [])
    message = caught.value.message
    assert "libsgx_urts_sim.so" in message and "SIM-mode PAL" in message
    assert "libocclum-pal_sim.so.0.30.1" in message and "\n" not in message


def test_library_found_through_links_or_ld_library_path(pal):
    fs = _fs(["usr/lib/x86_64-linux-gnu/libsgx_urts_sim.so.2", "file", 0o644, ""],
             ["usr/lib/x86_64-linux-gnu/libsgx_urts_sim.so", "symlink", 0o777,
              "libsgx_urts_sim.so.2"])
    assert check_pal_libraries(fs, pal, "SIM", []) == [
        "libsgx_urts_sim.so -> /usr/lib/x86_64-linux-gnu/libsgx_urts_sim.so.2"]
    sdk = _fs(["opt/intel/sgxsdk/sdk_libs/libsgx_urts_sim.so", "file", 0o644, ""])
    with pytest.raises(UserError):
        check_pal_libraries(sdk, pal, "SIM", [])
    found = check_pal_libraries(sdk, pal, "SIM", ["LD_LIBRARY_PATH=/opt/intel/sgxsdk/sdk_libs"])
    assert found == ["libsgx_urts_sim.so -> /opt/intel/sgxsdk/sdk_libs/libsgx_urts_sim.so"]


def test_entrypoint_program():
    fs = _fs(["usr/bin/tool", "file", 0o644, ""], ["bin/run", "symlink", 0o777, "sh"])
    assert check_program(fs, ["/bin/run", "x"], [], "/") == "/bin/sh"
    assert check_program(fs, ["sh"], [], "/") == "/bin/sh"  # the default PATH
    with pytest.raises(UserError, match="not executable"):
        check_program(fs, ["tool"], [], "/")
    with pytest.raises(UserError, match="/opt/occlum_instance/build/bin/occlum-run is not in"):
        check_program(fs, ["/opt/occlum_instance/build/bin/occlum-run"], [], "/")
    with pytest.raises(UserError, match="nothing to run"):
        check_program(fs, [], [], "/")
