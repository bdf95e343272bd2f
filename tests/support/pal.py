"""A PAL-shaped shared library that needs an SGX uRTS library, both real ELF files built
with gcc, for tests of the image's runtime check."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def build_urts(out_dir: Path, name: str = "libsgx_urts_sim.so") -> Path:
    """A shared library named like the SGX SDK's uRTS (SONAME = its file name)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "urts.c"
        src.write_text("int sgx_create_enclave_standin(void) { return 0; }\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,--build-id=none", f"-Wl,-soname,{name}",
                        "-o", str(out_dir / name), str(src)], check=True, capture_output=True)
    return out_dir / name


def build_pal(out: Path, urts: Path) -> Path:
    """A PAL-shaped library (SONAME libocclum-pal.so.0) whose DT_NEEDED names ``urts``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pal.c"
        src.write_text("int sgx_create_enclave_standin(void);\n"
                       "int occlum_pal_get_version(void) { return sgx_create_enclave_standin() + 2; }\n")
        link = urts.name[3:-3]  # libsgx_urts_sim.so -> sgx_urts_sim
        subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,--build-id=none",
                        "-Wl,-soname,libocclum-pal.so.0", "-o", str(out), str(src),
                        f"-L{urts.parent}", f"-l{link}"], check=True, capture_output=True)
    return out
