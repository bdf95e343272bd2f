"""Deterministic release packages of an Occlum instance, their manifest, and safe reading.

``occlum package`` tars an instance with GNU tar: the bytes depend on the file-system order,
the user, the umask and the clock. Here the same members are written so that the same
instance gives the same ``.tar.gz`` bytes anywhere: members in sorted depth-first order,
uid/gid 0 with empty owner names, every mtime = SOURCE_DATE_EPOCH, modes normalised to
0755/0644 (directories 0755, symlinks 0777), GNU tar headers (no pax records carrying times),
a gzip header with mtime 0 and no file name, and a fixed compression level. Links are stored
as links, never followed, as GNU tar does without ``-h``. Hard links are not detected: every
regular file is stored in full, so how a cache restored the files cannot change the bytes.
As with ``occlum package``, only the named paths and what is below them are entries: there
are no entries for ``<name>/``, ``<name>/build/`` or ``<name>/build/lib/``. ``run/`` is always
the empty skeleton ``occlum build`` creates, never the application data found there.

The reading side never extracts anything: it streams members, checks their names and link
targets, and hashes their data in memory.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.manifest_rows import ManifestRows
from occlum_rules.stages.package_stream import Member, PackageResult

DEFAULT_LEVEL = 6  # what `tar -z` (gzip's default) uses
CHUNK = 1 << 20
MAX_KEPT = 1 << 30  # members read into memory (the signed LibOS) are never this big
# run/ holds the application's data and is never cleaned by the build; a release gets the
# empty skeleton `occlum build` creates, never whatever a developer left there.
RUN_SKELETON = ("run", "run/initfs", "run/initfs/__ROOT", "run/mount", "run/mount/__ROOT")
# A built-in image key (buildin_image_key) is a secret: keep it owner-only in the package.
SECRET_FILES = ("initfs/etc/image_key",)
_PAL_EXTRA = {"SIM": "libocclum-pal_sim.so*", "HYPER": "libocclum-pal_hyper.so*"}


def normalized_mode(kind: str, st_mode: int, name: str = "") -> int:
    """0755 for directories and owner-executable files, else 0644 (umask-independent)."""
    if kind == "dir":
        return 0o755
    if kind == "symlink":
        return 0o777
    if name in SECRET_FILES:
        return 0o600
    return 0o755 if st_mode & stat.S_IXUSR else 0o644


def member_sort_key(name: str) -> tuple[bytes, ...]:
    """Depth-first order by bytes of each path component (the package's member order)."""
    return tuple(os.fsencode(part) for part in name.split("/"))


def _sort_key(name: str) -> bytes:
    """:func:`member_sort_key` as one ``bytes`` (the same order): a component holds no "/"
    and no NUL, so NUL for "/" ranks a shorter component before any longer one it begins,
    as the tuple does. Sorting 80k members made 80k tuples of bytes (~550 bytes each) at
    once; this key is one object."""
    return os.fsencode(name).replace(b"/", b"\0")


def _member(path: str, name: str, st: os.stat_result) -> Member:
    if stat.S_ISLNK(st.st_mode):
        return Member(name, "symlink", 0o777, target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return Member(name, "dir", 0o755)
    if stat.S_ISREG(st.st_mode):
        return Member(name, "file", normalized_mode("file", st.st_mode, name), st.st_size,
                      source=str(path))
    raise UserError(f"{path}: not a regular file, directory or symlink; cannot package it")


def walk_members(instance_dir: Path, name: str) -> Iterator[Member]:
    """The entry and, for a real directory (not a link to one), everything below it."""
    path = os.path.join(Path(instance_dir), name)
    return _walk(path, name, os.lstat(path))


def _walk(path: str, name: str, st: os.stat_result) -> Iterator[Member]:
    member = _member(path, name, st)
    yield member
    if member.kind == "dir":  # the directory's own lstat of each entry, not one more each
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            yield from _walk(e.path, f"{name}/{e.name}", e.stat(follow_symlinks=False))


def select_members(instance_dir: Path, sgx_mode: str) -> list[Member]:
    """What ``occlum package`` puts in the tarball, in package order.

    ``run/`` is replaced by its empty skeleton (see :data:`RUN_SKELETON`).
    """
    instance_dir = Path(instance_dir)
    lib = instance_dir / "build" / "lib"
    names = ["Occlum.json", "build/bin", "build/lib/libocclum-libos.signed.so",
             "build/initfs", "build/mount", "build/.Occlum_sys.json.protected", "initfs",
             ".__occlum_status", ".sgx_mode"]
    patterns = ["libocclum-pal.so*"] + ([_PAL_EXTRA[sgx_mode]] if sgx_mode in _PAL_EXTRA else [])
    try:
        libs = sorted(os.listdir(lib))
    except FileNotFoundError:
        libs = []
    for pattern in patterns:
        matched = [n for n in libs if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise UserError(f"{lib}: no {pattern}; is this a built Occlum instance?")
        names += [f"build/lib/{n}" for n in matched]
    members: list[Member] = []
    for name in names:
        if not os.path.lexists(instance_dir / name):
            raise UserError(f"{instance_dir / name} is missing; is this a built Occlum instance?")
        members.extend(walk_members(instance_dir, name))
    members += [Member(name, "dir", 0o755) for name in RUN_SKELETON]
    unique = {m.name: m for m in reversed(members)}  # the first of each name wins
    return sorted(unique.values(), key=lambda m: _sort_key(m.name))


# --------------------------------------------------------------------------- manifest

def bill_of_materials(image_manifest: list[dict]) -> list[dict]:
    """Every file of the image (from the BOM's image manifest), as the release lists it."""
    ordered = sorted(image_manifest, key=lambda e: _sort_key(e.get("path", "")))
    return [item for item in map(_bom_item, ordered) if item is not None]


def _bom_item(entry: dict) -> dict | None:
    """One image manifest record as the release lists it; None for the image root."""
    if not entry.get("path"):
        return None
    item = {"path": "/" + entry["path"], "type": entry["type"],
            "mode": f"{int(entry.get('mode', 0)) & 0o7777:04o}"}
    if entry["type"] == "file":
        item.update(size=entry.get("size"), sha256=entry.get("sha256"))
        if entry.get("needed") is not None:
            item["needed"] = list(entry["needed"])
    elif entry["type"] == "symlink":
        item["target"] = entry.get("target")
    return item


def iter_bill_of_materials(manifest_text: bytes) -> Iterator[dict]:
    """:func:`bill_of_materials` of an image manifest file's bytes, made one record at a time.

    A 4 GiB image's manifest decoded whole is ~80k dicts (~50 MiB), and the list the release
    writes is as many again; here only the file's bytes, where each record starts and their
    order are held, and each record is decoded again when it is written. The file is one
    record per line (what the BOM stage writes); one in any other JSON layout is decoded
    whole. Raises ValueError (or UserError for a bad record) here, not while iterating.
    """
    rows = ManifestRows.parse(manifest_text)
    if rows is None:
        decoded = json.loads(manifest_text)
        if not isinstance(decoded, list):
            raise ValueError("the image manifest is not a JSON array")
        return iter(bill_of_materials(decoded))
    keys = [_sort_key(row.get("path", "")) for row in rows]
    order = sorted(range(len(keys)), key=keys.__getitem__)  # stable, as sorted() is
    del keys
    items = (_bom_item(rows[i]) for i in order)
    return (item for item in items if item is not None)


def compressor_record(name: str, version: str, level: int) -> dict:
    """The manifest's ``package.compressor``: what made the compressed bytes."""
    return {"name": name, "version": version, "level": level}


def manifest_compressor(package: dict) -> dict | None:
    """The compressor a manifest's ``package`` section names; a manifest written before the
    field existed named only the zlib version (and zlib was the only compressor then)."""
    found = package.get("compressor")
    if isinstance(found, dict):
        return found
    if isinstance(package.get("zlib"), str):
        return compressor_record("zlib", package["zlib"], package.get("compression_level", 6))
    return None


def compressor_name(record: dict | None) -> str:
    if not record:
        return "an unrecorded compressor"
    return f"{record.get('name')} {record.get('version')} level {record.get('level')}"


def package_manifest(*, file_name: str, top: str, label: str, result: PackageResult,
                     measurements: dict, image_manifest: list[dict] | None = None,
                     source_date_epoch: int, level: int, compressor: dict,
                     image_bom: Iterable[dict] | None = None, stream: bool = False) -> dict:
    """The release manifest: identity of the enclave, of the package, and what is inside.

    ``tar_sha256`` (of the uncompressed tar stream) lets a rebuild made with another
    compressor, whose gzip bytes differ, still be checked byte for byte. ``image_bom``: the
    image's bill of materials already made (e.g. :func:`iter_bill_of_materials`), instead of
    ``image_manifest``'s. ``stream``: ``contents`` is an iterator over the members' records
    (for :func:`manifest_chunks`, which writes a record per line as it goes) rather than a
    list.
    """
    if image_bom is None:
        image_bom = bill_of_materials(image_manifest or [])
    if result.raw_sha256 is None:
        raise ValueError("the package was written without the tar stream's digest")
    version = measurements.get("occlum_version")
    return {
        "manifest_version": 1,
        "label": label,
        "package": {"file": file_name, "top": top, "sha256": result.sha256,
                    "size": result.size, "source_date_epoch": source_date_epoch,
                    "format": "gnu tar + gzip", "compression_level": level,
                    "compressor": compressor, "tar_sha256": result.raw_sha256},
        "enclave": {
            "mrenclave": measurements["mrenclave"],
            "mrsigner": measurements["mrsigner"],
            "isv_prod_id": measurements["isv_prod_id"],
            "isv_svn": measurements["isv_svn"],
            "debuggable": measurements["debuggable"],
            "sgx_mode": measurements["sgx_mode"],
            "occlum_version": version if version else "stand-in LibOS",
            "libos": measurements.get("libos"),
            "glibc": measurements.get("glibc"),
            "root_fs_mac": measurements["root_fs_mac"],
            "init_fs_mac": measurements["init_fs_mac"],
            "config_mac": measurements["config_mac"],
        },
        "contents": result.iter_contents() if stream else result.contents,
        "image_bom": image_bom,
    }


_ROW = json.JSONEncoder(sort_keys=True, separators=(", ", ": "))


def manifest_bytes(manifest: dict) -> bytes:
    """Indented JSON, except that each record of a top-level list sits on one line: a
    release lists every file twice, and the pure-Python indenting encoder spent more time
    on 40k records than a rebuild of the package from cached segments."""
    return b"".join(manifest_chunks(manifest))


_CHUNK_ROWS = 512  # records per piece :func:`manifest_chunks` yields


def manifest_chunks(manifest: dict) -> Iterator[bytes]:
    """:func:`manifest_bytes` in pieces, in order: a top-level value may be an iterator of
    records (a 4 GiB image's two lists hold 80k records each), consumed as the text is
    written, so neither the records nor the text are ever whole in memory. An iterator's
    records are dicts; an empty one is written as the empty list."""
    yield b"{\n"
    for n, key in enumerate(sorted(manifest)):
        head = (",\n" if n else "") + f"  {json.dumps(key)}: "
        value = manifest[key]
        if isinstance(value, list) and not (value and all(isinstance(v, dict) for v in value)):
            rows = None
        elif isinstance(value, (list, Iterator)):
            rows = iter(value)
        else:
            rows = None
        first = next(rows, None) if rows is not None else None
        if first is None:
            if rows is not None:
                value = []  # an iterator that yielded nothing
            text = json.dumps(value, indent=2, sort_keys=True).replace("\n", "\n  ")
            yield (head + text).encode()
            continue
        assert rows is not None
        piece = [head + "[\n    " + _ROW.encode(first)]
        for row in rows:
            piece.append(",\n    " + _ROW.encode(row))
            if len(piece) >= _CHUNK_ROWS:
                yield "".join(piece).encode()
                piece = []
        piece.append("\n  ]")
        yield "".join(piece).encode()
    yield b"\n}\n"


def sha256sums(entries: list[tuple[str, str]]) -> bytes:
    """``sha256sum`` output (text mode: two spaces) for (file name, hex digest) pairs."""
    lines = []
    for name, digest in entries:
        if "\n" in name or "\\" in name:
            raise UserError(f"file name {name!r} cannot be listed in SHA256SUMS")
        lines.append(f"{digest}  {name}\n")
    return "".join(lines).encode()


def parse_sha256sums(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep:
            digest, sep, name = line.partition(" *")
        if not sep or len(digest) != 64:
            raise UserError(f"SHA256SUMS: malformed line {line!r}")
        out[name] = digest.lower()
    return out


# --------------------------------------------------------------------------- reading

def check_member_name(info: tarfile.TarInfo) -> str:
    """The member's normalised name, or a UserError for names and links that escape."""
    name = info.name
    while name.endswith("/"):
        name = name[:-1]
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UserError(f"unsafe member name {info.name!r} (absolute, empty, '.' or '..' "
                        "components); refusing to read this package")
    if info.isdev() or info.isfifo():
        raise UserError(f"member {name!r} is a device or FIFO; refusing to read this package")
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
        raise UserError(f"member {name!r} has unsupported type {info.type!r}")
    if info.issym() or info.islnk():
        target = info.linkname
        if target.startswith("/"):
            # Occlum's own build links build/bin/* to the absolute install path; such links
            # are recorded and never followed or created. Anything else absolute escapes.
            if not (info.issym() and len(parts) == 4 and parts[1:3] == ["build", "bin"]):
                raise UserError(f"member {name!r} links outside the package (to {target!r})")
        else:
            base = posixpath.dirname(name) if info.issym() else ""
            resolved = posixpath.normpath(posixpath.join(base, target))
            if resolved == ".." or resolved.startswith("../") or (
                    resolved.split("/")[0] != parts[0]):
                raise UserError(f"member {name!r} links outside the package (to {target!r})")
    return name


@dataclass
class PackageContents:
    members: list[dict]
    top: str | None
    error: str | None = None  # why reading stopped early (corrupt stream)


def read_package(path: Path, on_file: Callable[[str, bytes], None] | None = None,
                 keep: Callable[[str], bool] | None = None) -> PackageContents:
    """Stream a ``.tar.gz`` and describe its members (as in the manifest's ``contents``).

    Nothing is written to disk. ``on_file(name, data)`` receives the data of the files for
    which ``keep(name)`` is true. A corrupt stream stops reading and is reported in
    ``error`` (with what was read before it), so a caller can still name the bad file.
    """
    members: list[dict] = []
    top = None
    current = None
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for info in tar:
                name = check_member_name(info)
                current = name
                first = name.split("/")[0]
                if top is None:
                    top = first
                elif first != top:
                    raise UserError(f"member {name!r} is not under the package's top "
                                    f"directory {top!r}")
                record = {"path": name, "type": _kind(info), "mode": f"{info.mode & 0o7777:04o}",
                          "uid": info.uid, "gid": info.gid, "uname": info.uname,
                          "gname": info.gname, "mtime": info.mtime}
                if info.isreg():
                    sha = hashlib.sha256()
                    src = tar.extractfile(info)
                    if src is None:
                        raise UserError(f"member {name!r} cannot be read")
                    wanted = keep is not None and keep(name)
                    if wanted and info.size > MAX_KEPT:
                        raise UserError(f"member {name!r} is implausibly large ({info.size} "
                                        "bytes)")
                    buf = io.BytesIO() if wanted else None
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        sha.update(chunk)
                        if buf is not None:
                            buf.write(chunk)
                    record.update(size=info.size, sha256=sha.hexdigest())
                    if buf is not None and on_file is not None:
                        on_file(name, buf.getvalue())
                elif info.issym() or info.islnk():
                    record["target"] = info.linkname
                members.append(record)
                current = None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        where = f" while reading {current!r}" if current else (
            f" after {members[-1]['path']!r}" if members else "")
        return PackageContents(members, top, f"corrupt package{where}: {exc}")
    return PackageContents(members, top)


def _kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "file"


_COMPARED = ("type", "mode", "size", "sha256", "target")


def compare_contents(found: list[dict], expected: list[dict], mtime: int | None) -> list[str]:
    """Differences between the members read and the manifest's list, first one first."""
    problems: list[str] = []
    by_name = {m["path"]: m for m in expected}
    seen = set()
    for index, member in enumerate(found):
        name = member["path"]
        seen.add(name)
        want = by_name.get(name)
        if want is None:
            problems.append(f"{name}: not in the manifest")
            continue
        for key in _COMPARED:
            if member.get(key) != want.get(key):
                what = "content differs (sha256)" if key == "sha256" else (
                    f"{key} {member.get(key)!r}, manifest says {want.get(key)!r}")
                problems.append(f"{name}: {what}")
                break
        else:
            if member["uid"] or member["gid"] or member["uname"] or member["gname"]:
                problems.append(f"{name}: owner is not 0/0 with empty names")
            elif mtime is not None and member["mtime"] != mtime:
                problems.append(f"{name}: mtime {member['mtime']}, expected {mtime}")
            elif index < len(expected) and expected[index]["path"] != name:
                problems.append(f"{name}: out of order (manifest has "
                                f"{expected[index]['path']!r} here)")
    missing = [m["path"] for m in expected if m["path"] not in seen]
    problems += [f"{name}: missing from the package" for name in missing]
    return problems


def first_difference(a: Path, b: Path) -> str | None:
    """The first member (in archive order) where two packages differ, or None."""
    left, right = read_package(a), read_package(b)
    for x, y in zip(left.members, right.members):
        if x != y:
            return x["path"] if x["path"] == y["path"] else f"{x['path']} / {y['path']}"
    if len(left.members) != len(right.members):
        longer = left if len(left.members) > len(right.members) else right
        return longer.members[min(len(left.members), len(right.members))]["path"]
    if left.error or right.error:
        return left.error or right.error
    return None
