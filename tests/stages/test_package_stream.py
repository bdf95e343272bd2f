"""The segmented .tar.gz: a plain gzip'd tar stream, and incremental == full, byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from occlum_rules.stages import package_stream as ps
from occlum_rules.stages.crc32_combine import crc32_combine
from occlum_rules.stages.package import select_members

from .test_package import SDE, make_instance


def _instance(tmp_path: Path, seed: int = 0) -> Path:
    """An instance whose image holds big (multi-segment), middling and tiny files."""
    inst = make_instance(tmp_path / "inst")
    rng = random.Random(seed)
    image = inst / "build" / "mount" / "__ROOT"
    for i in range(300):
        size = rng.choice([0, 10, 600, 5000, 70_000])
        (image / f"{i:032x}").write_bytes(rng.randbytes(size // 2) + bytes(size - size // 2))
    (image / "big").write_bytes(rng.randbytes(ps.SEGMENT + ps.BIG + 123))
    (inst / "initfs" / ("long-name-" * 15)).write_bytes(b"GNU longname header")
    os.symlink("t/" * 60, inst / "initfs" / "long-link")  # GNU longlink header
    return inst


def _write(inst: Path, out: Path, **kw) -> ps.PackageResult:
    return ps.write_package(select_members(inst, "HW"), "app", out, mtime=SDE, **kw)


@pytest.mark.parametrize("workers", [None, 1])  # 1: segment buffers are soon used again
def test_stream_is_the_tar_that_tarfile_writes(tmp_path, workers):
    inst = _instance(tmp_path)
    out = tmp_path / "app.tar.gz"
    result = _write(inst, out, workers=workers)
    expected = io.BytesIO()
    with tarfile.TarFile(fileobj=expected, mode="w", format=tarfile.GNU_FORMAT,
                         encoding="utf-8") as tar:
        for m in select_members(inst, "HW"):
            info = ps.tar_info(m, "app", SDE)
            if m.kind == "file":
                with open(m.source, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    data = out.read_bytes()
    assert gzip.decompress(data) == expected.getvalue()
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0
    assert result.size == len(data) and result.deflated > 3 and result.reused == 0
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", str(out)], check=True)


def test_rooted_members_and_raw_digest(tmp_path):
    """top "" writes members at the archive root (an OCI layer); raw_digest is the sha256 of
    the uncompressed tar (its diff_id)."""
    inst = _instance(tmp_path)
    out = tmp_path / "layer.tar.gz"
    result = ps.write_package(select_members(inst, "HW"), "", out, mtime=SDE, raw_digest=True)
    raw = gzip.decompress(out.read_bytes())
    assert result.raw_sha256 == hashlib.sha256(raw).hexdigest()
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "Occlum.json" in names and not any(n.startswith(("/", "app/")) for n in names)
    assert _write(inst, tmp_path / "app.tar.gz").raw_sha256 is None  # not asked for


def test_raw_digest_of_an_incremental_layer_is_the_full_ones(tmp_path):
    """Copied segments are not deflated again, but they are still in the uncompressed
    digest: an in-place layer's diff_id equals a layer written from nothing."""
    inst = _instance(tmp_path)
    out, state = tmp_path / "layer.tar.gz", tmp_path / "state" / "layer"
    ps.write_package(select_members(inst, "HW"), "", out, mtime=SDE, raw_digest=True,
                     state_path=state)
    (inst / "build" / "mount" / "__ROOT" / f"{7:032x}").write_bytes(b"changed")
    again = ps.write_package(select_members(inst, "HW"), "", out, mtime=SDE, raw_digest=True,
                             state_path=state)
    full = ps.write_package(select_members(inst, "HW"), "", tmp_path / "full.tar.gz", mtime=SDE,
                            raw_digest=True)
    assert again.reused > 0 and again.deflated < full.deflated
    assert out.read_bytes() == (tmp_path / "full.tar.gz").read_bytes()
    assert again.raw_sha256 == full.raw_sha256 == hashlib.sha256(
        gzip.decompress(out.read_bytes())).hexdigest()


def test_workers_do_not_change_the_bytes(tmp_path):
    inst = _instance(tmp_path)
    one, two = tmp_path / "one.tar.gz", tmp_path / "two.tar.gz"
    _write(inst, one, workers=1)
    _write(inst, two, workers=3)
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.parametrize("edit", ["small file", "big file", "add", "remove", "nothing"])
def test_incremental_package_equals_a_full_one(tmp_path, edit):
    inst = _instance(tmp_path)
    out, state = tmp_path / "inc.tar.gz", tmp_path / "state" / "package"
    first = _write(inst, out, state_path=state)
    assert first.reused == 0 and state.exists()
    image = inst / "build" / "mount" / "__ROOT"
    if edit == "small file":
        (image / f"{7:032x}").write_bytes(b"changed")
    elif edit == "big file":
        with open(image / "big", "r+b") as f:
            f.seek(ps.SEGMENT + 10)
            f.write(b"X")
    elif edit == "add":
        (image / f"{150:032x}a").write_bytes(b"new member")
    elif edit == "remove":
        (image / f"{200:032x}").unlink()
    again = _write(inst, out, state_path=state)
    full = tmp_path / "full.tar.gz"
    reference = _write(inst, full)
    assert out.read_bytes() == full.read_bytes()
    assert again.sha256 == reference.sha256 and again.contents == reference.contents
    assert again.reused > 0 and again.deflated < first.deflated
    if edit == "nothing":
        assert again.deflated == 0
    elif edit == "big file":
        assert again.deflated == 2  # the changed member's two pieces, nothing else


def test_a_package_changed_behind_its_back_is_not_reused(tmp_path):
    inst = _instance(tmp_path)
    out, state = tmp_path / "app.tar.gz", tmp_path / "state"
    _write(inst, out, state_path=state)
    data = bytearray(out.read_bytes())
    data[100] ^= 1
    out.write_bytes(bytes(data))
    again = _write(inst, out, state_path=state)
    _write(inst, tmp_path / "full.tar.gz")
    assert again.reused == 0
    assert out.read_bytes() == (tmp_path / "full.tar.gz").read_bytes()


def test_a_damaged_state_means_a_full_package(tmp_path):
    inst = _instance(tmp_path)
    out, state = tmp_path / "app.tar.gz", tmp_path / "state"
    _write(inst, out, state_path=state)
    state.write_text('{"version": 1, "segments": [')
    again = _write(inst, out, state_path=state)
    _write(inst, tmp_path / "full.tar.gz")
    assert again.reused == 0
    assert out.read_bytes() == (tmp_path / "full.tar.gz").read_bytes()


def test_crc32_combine_matches_zlib():
    rng = random.Random(3)
    for _ in range(200):
        a = rng.randbytes(rng.randrange(0, 5000))
        b = rng.randbytes(rng.choice([0, 1, rng.randrange(0, 70_000)]))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_unreadable_member_is_one_clear_error(tmp_path):
    inst = _instance(tmp_path)
    members = select_members(inst, "HW")
    os.unlink(next(m.source for m in members if m.kind == "file" and m.size))
    with pytest.raises(ps.UserError, match="cannot read it"):
        ps.write_package(members, "app", tmp_path / "x.tar.gz", mtime=SDE)
    assert not (tmp_path / "x.tar.gz").exists() and not (tmp_path / ".x.tar.gz.tmp").exists()


class _Known:
    """A build's digest cache that knows some files' sha256 (perhaps wrongly: stale)."""

    def __init__(self, digests: dict[str, str]):
        self.digests = digests

    def known(self, path: str) -> str | None:
        return self.digests.get(path)

    def digest(self, path: str) -> str:
        return self.digests.get(path) or ps.sha256_file(path)


def test_a_member_changed_behind_a_stale_digest_is_packed_as_it_is_now(tmp_path):
    """A copied segment's members are read again (for the uncompressed digest) and checked
    against the copy's CRC-32: a member changed behind a stale digest (same stamp) is not
    copied stale; the package, and its digest, hold what the file holds now."""
    inst = _instance(tmp_path)
    out, state = tmp_path / "app.tar.gz", tmp_path / "state"
    ps.write_package(select_members(inst, "HW"), "app", out, mtime=SDE, raw_digest=True,
                     state_path=state)
    victim = inst / "initfs" / "etc" / "hosts"
    stale = {str(victim): hashlib.sha256(victim.read_bytes()).hexdigest()}
    victim.write_bytes(b"127.0.0.2   localhost\n")  # same size
    again = ps.write_package(select_members(inst, "HW"), "app", out, mtime=SDE, raw_digest=True,
                             state_path=state, known=_Known(stale))
    assert again.deflated == 1 and again.reused >= 1
    assert again.raw_sha256 == hashlib.sha256(gzip.decompress(out.read_bytes())).hexdigest()
    with tarfile.open(out) as tar:
        assert tar.extractfile("app/initfs/etc/hosts").read() == b"127.0.0.2   localhost\n"


@pytest.mark.parametrize("name_bytes", [1, 99, 100, 101, 150])
@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_headers_are_the_ones_tarfile_makes(name_bytes, kind):
    """The package makes its own headers; tarfile's are the reference, also where a field
    overflows (a directory's added "/", long names and targets, base-256 sizes)."""
    names = ["n" * name_bytes, ("é" * name_bytes)[:max(1, name_bytes // 2)],
             "bad-\udcff-" + "x" * max(0, name_bytes - 6)]
    for name in names:
        for mode in (0o644, 0o4755, 0o100755):
            for size in (0, 1, 8 ** 11 - 1, 8 ** 11):
                member = ps.Member(name, kind, mode, size if kind == "file" else 0,
                                   target=("t" * name_bytes) if kind == "symlink" else None)
                for top, mtime in (("", 0), ("app", SDE), ("app", 8 ** 11 - 1)):
                    expected = ps.tar_info(member, top, mtime).tobuf(
                        tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
                    assert ps._header(member, top, mtime) == expected, (name, mode, size, top)


def test_a_full_package_takes_the_digests_the_build_knows(tmp_path):
    """Members the build's digest cache knows are not hashed again (their record says what
    the cache says); the others are hashed while they are packed."""
    inst = _instance(tmp_path)
    members = select_members(inst, "HW")
    files = [m for m in members if m.kind == "file"]
    told = {files[0].source: "ab" * 32}
    result = ps.write_package(members, "app", tmp_path / "app.tar.gz", mtime=SDE,
                              known=_Known(told))
    records = {r["path"]: r.get("sha256") for r in result.iter_contents()}
    assert records[f"app/{files[0].name}"] == "ab" * 32
    for m in files[1:]:
        assert records[f"app/{m.name}"] == hashlib.sha256(Path(m.source).read_bytes()).hexdigest()
