"""The deflate implementations: each writes an ordinary gzip'd tar, their bytes differ, the
tar stream does not, and which one a package uses is keyed and chosen explicitly."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zlib_ng

from occlum_rules.errors import UserError
from occlum_rules.stages import deflate
from occlum_rules.stages import package_stream as ps
from occlum_rules.stages.package import select_members
from occlum_rules.toolchains.deflate import ENV, package_deflater

from .test_package import SDE
from .test_package_stream import _instance

ZLIB_NG = deflate.deflater("zlib-ng")


def _write(inst: Path, out: Path, deflater: deflate.Deflater, **kw) -> ps.PackageResult:
    return ps.write_package(select_members(inst, "HW"), "app", out, mtime=SDE, raw_digest=True,
                            deflater=deflater, **kw)


def test_identities_name_implementation_and_version():
    assert deflate.ZLIB.identity.startswith("zlib 1.")
    assert ZLIB_NG.name == "zlib-ng"
    assert f"python-zlib-ng {zlib_ng.__version__}" in ZLIB_NG.version
    assert ZLIB_NG.identity != deflate.ZLIB.identity


def test_two_deflaters_same_tar_stream_different_gzip_bytes(tmp_path):
    """The system zlib and the pinned zlib-ng wheel: different .gz bytes, one tar stream,
    and both are plain gzip files that Python's gzip and GNU tar read."""
    inst = _instance(tmp_path)
    a, b = tmp_path / "zlib.tar.gz", tmp_path / "zlib-ng.tar.gz"
    ra, rb = _write(inst, a, deflate.ZLIB), _write(inst, b, ZLIB_NG)
    assert a.read_bytes() != b.read_bytes() and ra.sha256 != rb.sha256
    tar_a, tar_b = gzip.decompress(a.read_bytes()), gzip.decompress(b.read_bytes())
    assert tar_a == tar_b
    assert ra.raw_sha256 == rb.raw_sha256 == hashlib.sha256(tar_a).hexdigest()
    with tarfile.open(b) as tar:
        assert "app/Occlum.json" in tar.getnames()
    if shutil.which("tar"):
        dest = tmp_path / "x"
        dest.mkdir()
        subprocess.run(["tar", "xzf", str(b), "-C", str(dest)], check=True)
        assert (dest / "app/build/mount/__ROOT/big").read_bytes() == (
            inst / "build/mount/__ROOT/big").read_bytes()
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", str(b)], check=True)


def test_segments_are_recompressed_when_the_deflater_changes(tmp_path):
    """The segment state is keyed by implementation + version + level: a package written
    by zlib is never patched with zlib-ng segments (or the reverse)."""
    inst = _instance(tmp_path)
    out, state = tmp_path / "app.tar.gz", tmp_path / "state"
    first = _write(inst, out, deflate.ZLIB, state_path=state)
    switched = _write(inst, out, ZLIB_NG, state_path=state)
    assert switched.reused == 0 and switched.deflated == first.deflated
    full = _write(inst, tmp_path / "full.tar.gz", ZLIB_NG)
    assert out.read_bytes() == (tmp_path / "full.tar.gz").read_bytes()
    same = _write(inst, out, ZLIB_NG, state_path=state)
    assert same.deflated == 0 and same.reused == first.deflated
    assert same.raw_sha256 == full.raw_sha256 == first.raw_sha256
    other_level = _write(inst, out, ZLIB_NG, state_path=state, level=1)
    assert other_level.reused == 0


def test_unknown_or_missing_deflater_is_one_clear_error(monkeypatch):
    with pytest.raises(UserError, match="unknown deflate implementation 'igzip'"):
        deflate.deflater("igzip")
    monkeypatch.setattr(deflate, "_zlib_ng", lambda: None)
    with pytest.raises(UserError, match="'zlib-ng' is not installed"):
        deflate.deflater("zlib-ng")
    assert deflate.preferred() is deflate.ZLIB  # the fallback without the wheel


def test_the_toolchain_prefers_zlib_ng_and_obeys_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert package_deflater().name == "zlib-ng"
    monkeypatch.setenv(ENV, "zlib")
    assert package_deflater() is deflate.ZLIB
    monkeypatch.setenv(ENV, "gzip-9000")
    with pytest.raises(UserError, match="gzip-9000"):
        package_deflater()


@pytest.mark.parametrize("raw_digest", [True, False])
def test_a_damaged_copy_is_deflated_again_from_its_members(tmp_path, raw_digest):
    """The state matches the package (same stamp) but its bytes were damaged: the damaged
    segment is not copied; its members are packed again, and the package is a full one's."""
    inst = _instance(tmp_path)
    out, state = tmp_path / "app.tar.gz", tmp_path / "state"
    full = _write(inst, out, ZLIB_NG, state_path=state)
    st = out.stat()
    data = bytearray(out.read_bytes())
    data[20:4000] = bytes([0xFF]) * 3980  # inside the first segment; same size
    out.write_bytes(bytes(data))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    stamp = ps._stamp(out)
    payload = json.loads(bytes(ps.read_state(state, ps.STATE_KIND, ps.STATE_VERSION)))
    payload["stamp"] = stamp  # as if the damage had kept the file's stamp
    ps.write_state(state, ps.STATE_KIND, ps.STATE_VERSION, json.dumps(payload).encode())
    again = ps.write_package(select_members(inst, "HW"), "app", out, mtime=SDE,
                             deflater=ZLIB_NG, state_path=state, raw_digest=raw_digest)
    assert again.deflated == 1 and again.reused >= 1
    assert again.sha256 == full.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
