"""End to end on the stand-in: patch `.builtin_config` with a config MAC, then sign and measure it.

This is what an instance build does when no Occlum install is found. It uses the project's
own `.builtin_config` patcher and Python signer.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from occlum_rules.stages.securefs.builtin_config import patch_builtin_config
from occlum_rules.stages.securefs.config_mac import show_mac_line
from occlum_rules.stages.sign import sign_enclave
from occlum_rules.stages.sign.signer import measure
from occlum_rules.standin.build import StandinFiles
from tests.conftest import vectors_path

FIXED_DATE = 1704067200  # 2024-01-01, as the golden vectors pin it
SAMPLE_MAC = bytes.fromhex("3e0b8c71fa129d44a05ec327b6d9018f")


@pytest.fixture(scope="module")
def patched_instance(standin: StandinFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/lib as occlum_build.mk leaves it: the patched versioned file plus its symlink."""
    lib = tmp_path_factory.mktemp("build-lib")
    real = lib / "libocclum-libos.so.0.31.0"
    shutil.copyfile(standin.libos, real)
    (lib / "libocclum-libos.so.0").symlink_to(real.name)
    patch_builtin_config(lib / "libocclum-libos.so.0", show_mac_line(SAMPLE_MAC).encode())
    return lib


def test_python_patch_equals_objcopy(standin: StandinFiles, patched_instance: Path, tmp_path):
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        pytest.skip("GNU objcopy not found")
    reference = tmp_path / "objcopy.so"
    shutil.copyfile(standin.libos, reference)
    mac_file = tmp_path / "tmp_mac"
    mac_file.write_bytes(show_mac_line(SAMPLE_MAC).encode())
    subprocess.run(
        [objcopy, "--update-section", f".builtin_config={mac_file}", str(reference)], check=True
    )
    patched = (patched_instance / "libocclum-libos.so.0.31.0").read_bytes()
    assert patched == reference.read_bytes()
    with open(patched_instance / "libocclum-libos.so.0.31.0", "rb") as fh:
        sec = ELFFile(fh).get_section_by_name(".builtin_config")
        assert sec["sh_size"] == 48 and sec.data() == show_mac_line(SAMPLE_MAC).encode()


def test_sign_patched_stand_in_with_occlum_profile(
    standin: StandinFiles, patched_instance: Path, tmp_path: Path
) -> None:
    vectors = vectors_path("libos-standin")
    enclave_xml = vectors / "Enclave.xml"
    key = vectors / "signing_key.pem"
    out = tmp_path / "libocclum-libos.signed.so"

    result = sign_enclave(
        patched_instance / "libocclum-libos.so.0", enclave_xml, key, out, date=FIXED_DATE
    )
    assert result.profile == "occlum-2.20"
    assert result.log[-1] == "Succeed."
    # MRSIGNER depends on the key only, so it matches the real tool's output for that key.
    assert result.mrsigner.hex() == (vectors / "mrsigner.hex").read_text().split()[0]

    # Signing changes only the metadata inside .note.sgxmeta.
    unsigned = (patched_instance / "libocclum-libos.so.0.31.0").read_bytes()
    signed = out.read_bytes()
    assert len(signed) == len(unsigned)
    with open(out, "rb") as fh:
        note = ELFFile(fh).get_section_by_name(".note.sgxmeta")
        lo = note["sh_offset"] + 12 + 13
    changed = [i for i, (a, b) in enumerate(zip(unsigned, signed, strict=True)) if a != b]
    assert changed and lo <= changed[0] and changed[-1] < lo + 0x5000

    # The MAC text is measured: the unpatched slot gives another MRENCLAVE.
    assert measure(patched_instance / "libocclum-libos.so.0", enclave_xml) == result.mrenclave
    assert measure(standin.libos, enclave_xml) != result.mrenclave

    # Signing is deterministic with a pinned date.
    again = sign_enclave(
        patched_instance / "libocclum-libos.so.0", enclave_xml, key, None, date=FIXED_DATE
    )
    assert again.sigstruct == result.sigstruct


def test_sdk_minor_picks_the_signer_profile(
    standin: StandinFiles, standin_221: StandinFiles
) -> None:
    """2.21 selects the occlum-2.21 profile; sdk_version is not measured, so MRENCLAVE is equal."""
    vectors = vectors_path("libos-standin")
    enclave_xml, key = vectors / "Enclave.xml", vectors / "signing_key.pem"
    r20 = sign_enclave(standin.libos, enclave_xml, key, None, date=FIXED_DATE)
    r21 = sign_enclave(standin_221.libos, enclave_xml, key, None, date=FIXED_DATE)
    assert (r20.profile, r21.profile) == ("occlum-2.20", "occlum-2.21")
    assert r20.mrenclave == r21.mrenclave
