"""The deterministic package writer, its manifest, and the safe reader (no doit here)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from occlum_rules.actions.package import refusal
from occlum_rules.errors import UserError
from occlum_rules.stages.package import (
    RUN_SKELETON,
    bill_of_materials,
    compare_contents,
    compressor_record,
    first_difference,
    package_manifest,
    parse_sha256sums,
    read_package,
    select_members,
    sha256sums,
)
from occlum_rules.stages.package_stream import write_package

SDE = 1704067200


def make_instance(root: Path, mode: str = "HW", order_seed: int = 0, mtime: int = 1_000_000,
                  run_data: bool = False) -> Path:
    """A directory with the layout `occlum build` leaves (files created in a shuffled order)."""
    suffix = {"HW": "", "SIM": "_sim", "HYPER": "_hyper"}[mode]
    files = {
        "Occlum.json": b'{"metadata": {"debuggable": false}}\n',
        ".__occlum_status": b"built\n", ".sgx_mode": f"{mode}\n".encode(),
        "build/Enclave.xml": b"<EnclaveConfiguration/>\n",
        "build/.Occlum_sys.json": b"{}\n", "build/.Occlum_sys.json.protected": bytes(4096),
        "build/bin/occlum-run": b"\x7fELF run", "build/bin/occlum_exec_client": b"\x7fELF c",
        "build/lib/libocclum-libos.signed.so": b"\x7fELF signed" * 100,
        "build/lib/libocclum-libos.so.0.31.0": b"\x7fELF libos",
        f"build/lib/libocclum-pal{suffix}.so.0.31.0": b"\x7fELF pal",
        "build/mount/.ROOT_MAC": b"00-" * 15 + b"00",
        "build/mount/__ROOT/metadata": os.urandom(0) + bytes(range(256)) * 16,
        "build/initfs/.ROOT_MAC": b"11-" * 15 + b"11",
        "build/initfs/__ROOT/metadata": bytes(4096),
        "initfs/bin/init": b"\x7fELF init", "initfs/etc/hosts": b"127.0.0.1   localhost\n",
    }
    items = list(files.items())
    random.Random(order_seed).shuffle(items)
    for rel, data in items:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o700 if ("bin/" in rel or rel.endswith(".so") or ".so." in rel)
                 else 0o600 if order_seed % 2 else 0o664)
    for d in ("initfs/dev", "initfs/proc", "initfs/lib", *RUN_SKELETON):
        (root / d).mkdir(parents=True, exist_ok=True)
    lib = root / "build/lib"
    os.symlink(f"libocclum-pal{suffix}.so.0.31.0", lib / "libocclum-pal.so.0")
    os.symlink("libocclum-pal.so.0", lib / "libocclum-pal.so")
    os.symlink("libocclum-libos.so.0.31.0", lib / "libocclum-libos.so.0")
    os.symlink("../image/image", root / "image")
    if run_data:
        (root / "run/mount/__ROOT/user-data").write_bytes(os.urandom(64))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, (mtime, mtime), follow_symlinks=False)
    return root


def package(inst: Path, out: Path, mode: str = "HW", top: str = "app"):
    return write_package(select_members(inst, mode), top, out, mtime=SDE, raw_digest=True)


def test_members_are_what_occlum_package_takes(tmp_path):
    inst = make_instance(tmp_path / "i", run_data=True)
    names = [m.name for m in select_members(inst, "HW")]
    assert names == sorted(names, key=lambda n: [p.encode() for p in n.split("/")])
    for must in ["Occlum.json", "build/bin", "build/bin/occlum-run",
                 "build/lib/libocclum-libos.signed.so", "build/lib/libocclum-pal.so",
                 "build/lib/libocclum-pal.so.0", "build/lib/libocclum-pal.so.0.31.0",
                 "build/initfs/__ROOT/metadata", "build/mount/.ROOT_MAC",
                 "build/.Occlum_sys.json.protected", "initfs/etc/hosts", ".__occlum_status",
                 ".sgx_mode", *RUN_SKELETON]:
        assert must in names, must
    for never in ["build/Enclave.xml", "build/.Occlum_sys.json", "image", "build",
                  "build/lib", "build/lib/libocclum-libos.so.0",
                  "build/lib/libocclum-libos.so.0.31.0", "run/mount/__ROOT/user-data"]:
        assert never not in names, never
    # links are stored as links, as GNU tar does without -h
    links = {m.name: m.target for m in select_members(inst, "HW") if m.kind == "symlink"}
    assert links == {"build/lib/libocclum-pal.so": "libocclum-pal.so.0",
                     "build/lib/libocclum-pal.so.0": "libocclum-pal.so.0.31.0"}


@pytest.mark.parametrize("mode", ["SIM", "HYPER"])
def test_mode_specific_pal_is_included(tmp_path, mode):
    inst = make_instance(tmp_path / "i", mode=mode)
    names = {m.name for m in select_members(inst, mode)}
    suffix = "_sim" if mode == "SIM" else "_hyper"
    assert f"build/lib/libocclum-pal{suffix}.so.0.31.0" in names
    assert "build/lib/libocclum-pal.so.0" in names


def test_missing_parts_are_a_clear_error(tmp_path):
    inst = make_instance(tmp_path / "i")
    (inst / "build/lib/libocclum-libos.signed.so").unlink()
    with pytest.raises(UserError, match="libocclum-libos.signed.so is missing"):
        select_members(inst, "HW")


def test_a_special_file_in_the_instance_is_named(tmp_path):
    inst = make_instance(tmp_path / "i")
    os.mkfifo(inst / "build/mount/__ROOT/fifo")
    with pytest.raises(UserError, match=r"__ROOT/fifo: not a regular file, directory or symlink"):
        select_members(inst, "HW")


def test_same_bytes_whatever_the_order_modes_mtimes_and_path(tmp_path):
    a = make_instance(tmp_path / "a", order_seed=1, mtime=1_000_000)
    b = make_instance(tmp_path / "elsewhere/deeper/b", order_seed=2, mtime=1_600_000_000,
                      run_data=True)
    ra = package(a, tmp_path / "a.tar.gz")
    rb = package(b, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert ra.sha256 == rb.sha256 == hashlib.sha256((tmp_path / "a.tar.gz").read_bytes()).hexdigest()
    assert ra.size == (tmp_path / "a.tar.gz").stat().st_size
    # ... and a change of content changes them
    (b / "initfs/etc/hosts").write_bytes(b"127.0.0.1   localhost \n")
    assert package(b, tmp_path / "c.tar.gz").sha256 != ra.sha256


def test_fixed_metadata_in_gzip_and_tar_headers(tmp_path):
    inst = make_instance(tmp_path / "i", order_seed=1)
    out = tmp_path / "app.tar.gz"
    package(inst, out)
    raw = out.read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00"            # gzip, deflate, no FNAME/FEXTRA flags
    assert raw[4:8] == b"\x00\x00\x00\x00"           # gzip mtime 0
    tar_bytes = gzip.decompress(raw)
    assert len(tar_bytes) % 10240 == 0
    with tarfile.open(out, "r:gz") as tar:
        members = tar.getmembers()
    assert members and all(m.name.startswith("app/") for m in members)
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", SDE), m.name
        assert not m.pax_headers, m.name
        if m.isdir():
            assert m.mode == 0o755
        elif m.isreg():
            assert m.mode in (0o644, 0o755), (m.name, oct(m.mode))
    modes = {m.name: m.mode for m in members}
    assert modes["app/build/bin/occlum-run"] == 0o755
    assert modes["app/initfs/etc/hosts"] == 0o644    # was 0600 (umask 077) on disk
    # every header is GNU/ustar with no pax ('x'/'g') records
    offset = 0
    for m in members:
        header = tar_bytes[m.offset:m.offset + 512]
        assert header[257:265] == b"ustar  \x00"
        assert header[156:157] not in (b"x", b"g")
        offset = m.offset_data
    assert offset > 0


def test_gnu_tar_lists_fixed_owner_and_time(tmp_path):
    inst = make_instance(tmp_path / "i")
    out = tmp_path / "app.tar.gz"
    package(inst, out)
    listing = subprocess.run(["tar", "-tvzf", str(out)], capture_output=True, text=True,
                             env={**os.environ, "TZ": "UTC"}, check=True).stdout.splitlines()
    assert listing and all(" 0/0 " in line and "2024-01-01 00:00" in line for line in listing)
    assert any(line.endswith("app/build/lib/libocclum-pal.so -> libocclum-pal.so.0")
               for line in listing)


def test_long_names_round_trip(tmp_path):
    inst = make_instance(tmp_path / "i")
    deep = inst / "initfs" / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("f" * 90)).write_bytes(b"long")
    out = tmp_path / "app.tar.gz"
    result = package(inst, out)
    read = read_package(out)
    assert read.error is None
    assert compare_contents(read.members, result.contents, SDE) == []
    assert any(m["path"].endswith("f" * 90) for m in read.members)


def test_manifest_bom_and_sha256sums(tmp_path):
    inst = make_instance(tmp_path / "i")
    out = tmp_path / "app.tar.gz"
    result = package(inst, out)
    measurements = {"mrenclave": "aa" * 32, "mrsigner": "bb" * 32, "isv_prod_id": 3,
                    "isv_svn": 4, "debuggable": False, "sgx_mode": "HW", "occlum_version": None,
                    "libos": "stand-in LibOS", "root_fs_mac": "r", "init_fs_mac": "i",
                    "config_mac": "c"}
    image_manifest = [
        {"path": "", "type": "dir", "mode": 0o755},
        {"path": "bin/hello", "type": "file", "mode": 0o755, "size": 5, "sha256": "ab",
         "needed": ["libc.so"]},
        {"path": "bin", "type": "dir", "mode": 0o755},
        {"path": "etc/mtab", "type": "symlink", "mode": 0o777, "target": "/proc/self/mounts"},
    ]
    manifest = package_manifest(file_name=out.name, top="app", label="//x:pkg", result=result,
                                measurements=measurements, image_manifest=image_manifest,
                                source_date_epoch=SDE, level=6,
                                compressor=compressor_record("zlib", "1.2.13", 6))
    assert manifest["package"]["tar_sha256"] == hashlib.sha256(
        gzip.decompress(out.read_bytes())).hexdigest()
    assert manifest["package"]["compressor"] == {"name": "zlib", "version": "1.2.13", "level": 6}
    assert manifest["enclave"]["occlum_version"] == "stand-in LibOS"
    assert manifest["enclave"]["mrenclave"] == "aa" * 32
    assert manifest["package"]["sha256"] == result.sha256
    assert [b["path"] for b in manifest["image_bom"]] == ["/bin", "/bin/hello", "/etc/mtab"]
    assert manifest["image_bom"][1]["needed"] == ["libc.so"]
    assert bill_of_materials(image_manifest)[1]["mode"] == "0755"
    sums = sha256sums([(out.name, result.sha256)])
    (tmp_path / "SHA256SUMS").write_bytes(sums)
    subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert parse_sha256sums(sums.decode()) == {out.name: result.sha256}
    (tmp_path / "SHA256SUMS").write_bytes(sha256sums([(out.name, "0" * 64)]))
    bad = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True)
    assert bad.returncode != 0


def _tar_with(tmp_path: Path, *infos: tuple[tarfile.TarInfo, bytes]) -> Path:
    out = tmp_path / "evil.tar.gz"
    with tarfile.open(out, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in infos:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def _info(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize("info,message", [
    (_info("app/../../etc/passwd"), "unsafe member name"),
    (_info("/etc/passwd"), "unsafe member name"),
    (_info("app/initfs/x", tarfile.SYMTYPE, "../../../etc/shadow"), "links outside"),
    (_info("app/initfs/x", tarfile.SYMTYPE, "/etc/shadow"), "links outside"),
    (_info("app/initfs/x", tarfile.LNKTYPE, "other/secret"), "links outside"),
    (_info("app/dev/sda", tarfile.BLKTYPE), "device or FIFO"),
])
def test_reader_refuses_escaping_members(tmp_path, info, message):
    path = _tar_with(tmp_path, (_info("app/ok"), b"ok"), (info, b"x"))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UserError, match=message):
        read_package(path)
    assert sorted(os.listdir(tmp_path)) == before  # nothing was written anywhere


def test_reader_accepts_occlum_install_links_in_build_bin(tmp_path):
    path = _tar_with(tmp_path, (_info("app/build/bin/occlum-run", tarfile.SYMTYPE,
                                      "/opt/occlum/build/bin/occlum-run"), b""),
                     (_info("app/build/lib/libocclum-pal.so", tarfile.SYMTYPE,
                            "libocclum-pal.so.0"), b""))
    read = read_package(path)
    assert [m["target"] for m in read.members] == ["/opt/occlum/build/bin/occlum-run",
                                                   "libocclum-pal.so.0"]


def test_changed_member_is_named(tmp_path):
    inst = make_instance(tmp_path / "i")
    result = package(inst, tmp_path / "a.tar.gz")
    (inst / "build/mount/__ROOT/metadata").write_bytes(
        b"\x01" + (inst / "build/mount/__ROOT/metadata").read_bytes()[1:])
    package(inst, tmp_path / "b.tar.gz")
    problems = compare_contents(read_package(tmp_path / "b.tar.gz").members, result.contents, SDE)
    assert problems == ["app/build/mount/__ROOT/metadata: content differs (sha256)"]
    assert first_difference(tmp_path / "a.tar.gz", tmp_path / "b.tar.gz") == \
        "app/build/mount/__ROOT/metadata"
    assert first_difference(tmp_path / "a.tar.gz", tmp_path / "a.tar.gz") is None


def test_corrupt_stream_is_reported_not_raised(tmp_path):
    inst = make_instance(tmp_path / "i")
    out = tmp_path / "a.tar.gz"
    result = package(inst, out)
    raw = bytearray(out.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    out.write_bytes(bytes(raw))
    read = read_package(out)
    problems = compare_contents(read.members, result.contents, SDE)
    assert read.error or problems


def test_refusals_match_occlum_package():
    debuggable = refusal("//x:pkg", {"metadata": {"debuggable": True}}, {"debuggable": True},
                         "HW", debug=False)
    assert "debuggable" in debuggable and "debug = True" in debuggable
    assert "metadata" in debuggable
    sim = refusal("//x:pkg", {"metadata": {"debuggable": False}}, {"debuggable": False}, "SIM",
                  debug=False)
    assert "SIM" in sim and "HW" in sim and "debug = True" in sim
    assert refusal("//x:pkg", {"metadata": {"debuggable": True}}, {"debuggable": True}, "SIM",
                   debug=True) is None
    assert refusal("//x:pkg", {"metadata": {"debuggable": False}}, {"debuggable": False},
                   "HYPER", debug=False) is None


def test_manifest_contents_are_json_serialisable(tmp_path):
    inst = make_instance(tmp_path / "i")
    result = package(inst, tmp_path / "a.tar.gz")
    assert json.loads(json.dumps(result.contents)) == result.contents


def test_a_built_in_image_key_stays_owner_only(tmp_path):
    inst = make_instance(tmp_path / "i")
    (inst / "initfs/etc/image_key").write_text("00-11-22\n")
    os.chmod(inst / "initfs/etc/image_key", 0o600)
    package(inst, tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getmember("app/initfs/etc/image_key").mode == 0o600
        assert tar.getmember("app/initfs/etc/hosts").mode == 0o644
