"""ELF dependency discovery without running anything (what copy_bom's ``autodep`` does).

copy_bom runs ``LD_LIBRARY_PATH=<config> <occlum loader> --list FILE`` and copies what the
loader prints. We read the ELF files with pyelftools instead and emulate the loader's search
(glibc or musl, chosen by the interpreter's name): DT_NEEDED breadth-first, DT_RPATH along the
loading chain unless DT_RUNPATH is present, LD_LIBRARY_PATH from the loader config, DT_RUNPATH,
``/etc/ld.so.cache``, then the default dirs. We produce the *path string the loader would print*
because copy_bom decides where a library lands in the image by comparing that string's
directory with the config's library dirs (glibc libraries go next to Occlum's loader).

Unlike ``ld.so --list`` this keeps going past a missing library, so the caller learns every
missing name and which object needed it.
"""

from __future__ import annotations

import contextlib
import io
import marshal
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.structs import ELFStructs

from occlum_rules import state_file
from occlum_rules.core.digests import file_stamp
from occlum_rules.errors import UserError

from .paths import rust_join

DEFAULT_LOADER_CONFIG_PATH = "/opt/occlum/etc/template/occlum_elf_loader.config"

# Occlum's etc/template/occlum_elf_loader.config (used when no config file exists).
DEFAULT_LOADER_CONFIG_TEXT = (
    "/opt/occlum/glibc/lib/ld-linux-x86-64.so.2 /opt/occlum/glibc/lib:/usr/lib/x86_64-linux-gnu:"
    "/lib/x86_64-linux-gnu:/lib64:/lib:/usr/local/lib:/opt/occlum/toolchains/grpc_ratls/glibc:"
    "/opt/occlum/toolchains/dcap_lib/glibc\n"
    "/lib/ld-musl-x86_64.so.1 /opt/occlum/toolchains/gcc/x86_64-linux-musl/lib:"
    "/opt/occlum/toolchains/grpc_ratls/musl:/opt/occlum/toolchains/dcap_lib/musl\n"
)

GLIBC_SYSTEM_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")
GLIBC_DST_LIB = "lib/x86_64-linux-gnu"
GLIBC_DST_PLATFORM = "x86_64"
LD_SO_CACHE = "/etc/ld.so.cache"
MUSL_PATH_FILE = "/etc/ld-musl-x86_64.path"
MUSL_DEFAULT_SYS_PATH = "/lib:/usr/local/lib:/usr/lib"
MUSL_RESERVED = ("c", "pthread", "rt", "m", "dl", "util", "xnet")

ET_EXEC, ET_DYN = "ET_EXEC", "ET_DYN"


# --------------------------------------------------------------------------- loader config


@dataclass(frozen=True)
class LoaderEntry:
    loader: str  # Occlum's loader path on the host, e.g. /opt/occlum/glibc/lib/ld-linux-x86-64.so.2
    ld_library_path: str  # the raw LD_LIBRARY_PATH value
    lib_dirs: tuple[str, ...]  # its non-empty items: libraries found there go next to the loader
    # where those libraries land in the image when that is not the loader's own directory
    # (a stand-in loader from the host fills the directory Occlum's loader would be in)
    image_lib_dir: str | None = None


@dataclass(frozen=True)
class LoaderConfig:
    entries: tuple[LoaderEntry, ...]
    path: str | None  # the file it came from; None = built-in default (or no config at all)

    def by_name(self, interp: str) -> LoaderEntry | None:
        """Config entry whose loader has the same file name as ``interp``; last line wins."""
        name = interp.rstrip("/").rsplit("/", 1)[-1]
        found = None
        for entry in self.entries:
            if entry.loader.rstrip("/").rsplit("/", 1)[-1] == name:
                found = entry
        return found

    def by_loader(self, loader: str) -> LoaderEntry | None:
        found = None
        for entry in self.entries:
            if entry.loader == loader:
                found = entry
        return found


def parse_loader_config(text: str, path: str | None) -> LoaderConfig:
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(" ")
        if len(fields) < 2:
            raise UserError("expected '<loader path> <LD_LIBRARY_PATH>' on each line",
                            where=f"{path or '<built-in loader config>'}:{lineno}")
        dirs = tuple(d for d in fields[1].split(":") if d)
        entries.append(LoaderEntry(fields[0], fields[1], dirs))
    return LoaderConfig(tuple(entries), path)


OCCLUM_PREFIX = "/opt/occlum"
HOST_GLIBC_LOADER = "/lib64/ld-linux-x86-64.so.2"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def host_glibc_config(host_loader: str = HOST_GLIBC_LOADER, base: LoaderConfig | None = None,
                      occlum_prefix: str = OCCLUM_PREFIX) -> LoaderConfig:
    """Occlum's loader config with the host's glibc standing in for Occlum's glibc.

    For a build without an Occlum install: glibc programs get ``host_loader`` (at their
    interpreter path in the image, as with Occlum's loader) and the host's libraries, placed
    where Occlum's glibc libraries would be (the directory of Occlum's loader, e.g.
    ``/opt/occlum/glibc/lib``). Every search directory under ``occlum_prefix`` is dropped, so
    a partial ``/opt/occlum`` on the machine changes nothing. ``base`` defaults to Occlum's
    own config (the built-in copy, never a file on this machine).
    """
    base = base if base is not None else parse_loader_config(DEFAULT_LOADER_CONFIG_TEXT, None)
    entries = []
    for e in base.entries:
        dirs = tuple(d for d in e.lib_dirs if not _under(d, occlum_prefix))
        if _under(e.loader, occlum_prefix):  # Occlum's glibc loader: the host's stands in
            image_dir = e.image_lib_dir or (e.loader.rsplit("/", 1)[0] or "/")
            entries.append(LoaderEntry(host_loader, ":".join(dirs), dirs, image_dir))
        else:
            entries.append(LoaderEntry(e.loader, ":".join(dirs), dirs, e.image_lib_dir))
    return LoaderConfig(tuple(entries), None)


def load_loader_config(path: str | os.PathLike[str] | None = None) -> LoaderConfig:
    """The config at ``path``; else ``$OCCLUM_HOME``'s or /opt/occlum's; else the built-in copy."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read loader config: {exc.strerror}", where=str(path)) from None
        return parse_loader_config(text, str(path))
    candidates = []
    home = os.environ.get("OCCLUM_HOME")
    if home:
        candidates.append(os.path.join(home, "etc/template/occlum_elf_loader.config"))
    candidates.append(DEFAULT_LOADER_CONFIG_PATH)
    for cand in candidates:
        if os.path.isfile(cand):
            return load_loader_config(cand)
    return parse_loader_config(DEFAULT_LOADER_CONFIG_TEXT, None)


# --------------------------------------------------------------------------- ELF reading


@dataclass(frozen=True)
class ElfInfo:
    etype: str
    elfclass: int
    machine: str
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...] | None
    runpath: tuple[str, ...] | None
    soname: str | None


# Keyed by the packed stat stamp (core.digests.file_stamp, 40 bytes): a BOM copying a tree
# reads a header of every file, and a tuple of five ints per entry (in the dict and the set
# of used keys) was ~230 bytes a file, held while the image is planned and copied. The file
# keeps tuples.
_KEY = struct.Struct("<QQqqq")  # dev, inode, size, mtime_ns, ctime_ns: file_stamp's layout
_ELF_CACHE: dict[bytes, ElfInfo | None] = {}
_USED: set[bytes] = set()
_CACHE_KIND = "elf-headers"
_CACHE_VERSION = 2  # 2: the shared state framing


def read_elf(path: str, stamp: bytes = b"") -> ElfInfo | None:
    """Parse the ELF bits the loader looks at; None for anything that is not a readable ELF.

    ``stamp``: the file's :func:`file_stamp` from a stat the caller already made (copy_bom's
    walk of a source tree); when the cache knows it, the file is not even stat'ed again."""
    if stamp and stamp in _ELF_CACHE:
        _USED.add(stamp)
        return _ELF_CACHE[stamp]
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = file_stamp(st)
    _USED.add(key)
    if key in _ELF_CACHE:
        return _ELF_CACHE[key]
    info = None
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                _ELF_CACHE[key] = None
                return None
            fh.seek(0)
            info = _parse_elf(_open_elf(fh))
    except (OSError, ELFError, ValueError, struct.error, UnicodeDecodeError, AttributeError, KeyError):
        info = None
    _ELF_CACHE[key] = info
    return info


def load_elf_cache(path: str | os.PathLike) -> None:
    """Seed the in-process cache from :func:`save_elf_cache`'s file, and start recording
    which entries the caller uses (what the next save keeps).

    Entries are keyed by the file's stat stamp (device, inode, size, mtime, ctime), like the
    build's digest cache: a changed file simply misses. Planning a BOM that copies a tree of
    20k files otherwise opens every one of them to look for an ELF header. The file is in
    the shared state framing (occlum_rules/state_file.py); where it lives is the caller's.
    """
    _USED.clear()
    payload = state_file.read_state(path, _CACHE_KIND, _CACHE_VERSION)
    if isinstance(payload, state_file.Missing):
        return
    try:
        data = marshal.loads(payload)
        for stamp, value in data.items():
            key = _KEY.pack(*stamp)
            if key not in _ELF_CACHE:
                _ELF_CACHE[key] = None if value is None else ElfInfo(*value)
    except (EOFError, ValueError, TypeError, AttributeError, struct.error):
        return


def save_elf_cache(path: str | os.PathLike) -> None:
    """Persist what was looked up since the last load (only that: files gone since are
    forgotten)."""
    entries = {}
    for key in _USED:
        if key in _ELF_CACHE:
            v = _ELF_CACHE[key]
            entries[_KEY.unpack(key)] = None if v is None else (v.etype, v.elfclass, v.machine, v.interp,
                                                   v.needed, v.rpath, v.runpath, v.soname)
    with contextlib.suppress(OSError):  # a cache: failing to keep it only costs time
        state_file.write_state(path, _CACHE_KIND, _CACHE_VERSION, marshal.dumps(entries))



def forget_elf_cache() -> None:
    """Drop the in-process entries once they are saved: one per file of the image (two stat
    tuples each), held to the end of the build otherwise (peak RSS on big images)."""
    _ELF_CACHE.clear()
    _USED.clear()

_STRUCTS: dict[tuple, ELFStructs] = {}


class _SharedStructsELFFile(ELFFile):
    """pyelftools' ELFFile, with its struct definitions built once per kind of ELF.

    ELFFile builds a hundred-odd construct objects for every file it opens; over an image's
    binaries and libraries that was most of the time of dependency discovery (slower than
    running ``ld.so --list``). The steps are ELFFile's own (pyelftools 0.3x), reusing
    ELFStructs for the same (endianness, class, type, machine, OS ABI).
    """

    def __init__(self, stream) -> None:  # noqa: D107 - see the class docstring
        self.stream = stream
        self.stream.seek(0, io.SEEK_END)
        self.stream_len = self.stream.tell()
        self._identify_file()
        self.structs = _structs((self.little_endian, self.elfclass))
        self.header = self._parse_elf_header()
        self.structs = _structs((self.little_endian, self.elfclass, self["e_type"],
                                 self["e_machine"], self["e_ident"]["EI_OSABI"]))
        self.stream.seek(0)
        self.e_ident_raw = self.stream.read(16)
        self.stream_loader = None


def _structs(key: tuple) -> ELFStructs:
    structs = _STRUCTS.get(key)
    if structs is None:
        structs = ELFStructs(little_endian=key[0], elfclass=key[1])
        structs.create_basic_structs()
        if len(key) > 2:
            structs.create_advanced_structs(*key[2:])
        _STRUCTS[key] = structs
    return structs


def _open_elf(fh) -> ELFFile:
    try:
        return _SharedStructsELFFile(fh)
    except (AttributeError, TypeError):  # a pyelftools whose ELFFile works differently
        fh.seek(0)
        return ELFFile(fh)


def _split_path_list(value: str) -> tuple[str, ...]:
    return tuple(value.split(":"))


PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3


def _program_headers(elf: ELFFile) -> list[tuple[int, int, int, int]]:
    """(p_type, p_offset, p_vaddr, p_filesz) of every program header.

    pyelftools reads and checks the ELF header; the program header table is decoded with
    ``struct``, since building pyelftools' segment objects cost more than the rest of
    dependency discovery together.
    """
    header = elf.header
    end = "<" if elf.little_endian else ">"
    if elf.elfclass == 64:
        fmt, fields = end + "IIQQQQQQ", (0, 2, 3, 5)
    else:
        fmt, fields = end + "IIIIIIII", (0, 1, 2, 4)
    size = struct.calcsize(fmt)
    entsize, count = header["e_phentsize"], header["e_phnum"]
    if count == 0 or entsize < size:
        return []
    elf.stream.seek(header["e_phoff"])
    table = elf.stream.read(entsize * count)
    result = []
    for i in range(count):
        if (i + 1) * entsize > len(table):
            break
        values = struct.unpack_from(fmt, table, i * entsize)
        result.append(tuple(values[f] for f in fields))
    return result


def _parse_elf(elf: ELFFile) -> ElfInfo:
    """Interpreter and dynamic tags from the program headers (what the loader itself reads).

    pyelftools parses the headers; the dynamic array is decoded with ``struct`` because
    pyelftools' DynamicSegment scans every section header to find the string table, which
    dominated the run time on large binaries.
    """
    interp = None
    dyn_seg = None
    loads = []
    stream = elf.stream
    for ptype, offset, vaddr, filesz in _program_headers(elf):
        if ptype == PT_INTERP:
            stream.seek(offset)
            interp = stream.read(filesz).split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
        elif ptype == PT_DYNAMIC:
            dyn_seg = (offset, filesz)
        elif ptype == PT_LOAD:
            loads.append((vaddr, offset, filesz))
    needed: list[str] = []
    rpath = runpath = None
    soname = None
    if dyn_seg is not None:
        fmt = ("<" if elf.little_endian else ">") + ("qQ" if elf.elfclass == 64 else "iI")
        size = struct.calcsize(fmt)
        stream.seek(dyn_seg[0])
        raw = stream.read(dyn_seg[1])
        tags: list[tuple[int, int]] = []
        for off in range(0, len(raw) - size + 1, size):
            tag, val = struct.unpack_from(fmt, raw, off)
            if tag == 0:
                break
            tags.append((tag, val))
        strtab = next((v for t, v in tags if t == 5), None)  # DT_STRTAB (a vaddr)
        str_off = None
        if strtab is not None:
            for vaddr, offset, filesz in loads:
                if vaddr <= strtab < vaddr + filesz:
                    str_off = offset + (strtab - vaddr)
                    break

        def string(at: int, str_off: int) -> str:
            stream.seek(str_off + at)
            buf = b""
            while b"\x00" not in buf:
                chunk = stream.read(256)
                if not chunk:
                    break
                buf += chunk
            return buf.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")

        if str_off is not None:
            for tag, val in tags:
                if tag == 1:  # DT_NEEDED
                    needed.append(string(val, str_off))
                elif tag == 15:  # DT_RPATH
                    rpath = _split_path_list(string(val, str_off))
                elif tag == 29:  # DT_RUNPATH
                    runpath = _split_path_list(string(val, str_off))
                elif tag == 14:  # DT_SONAME
                    soname = string(val, str_off)
    return ElfInfo(
        etype=elf["e_type"],
        elfclass=elf.elfclass,
        machine=elf["e_machine"],
        interp=interp,
        needed=tuple(needed),
        rpath=rpath,
        runpath=runpath,
        soname=soname,
    )


def elf_needed(path: str) -> list[str] | None:
    """DT_NEEDED of an ELF file (None when not an ELF)."""
    info = read_elf(path)
    return None if info is None else list(info.needed)


# --------------------------------------------------------------------------- ld.so.cache


_CACHE_MAGIC_NEW = b"glibc-ld.so.cache1.1"
_CACHE_MAGIC_OLD = b"ld.so-1.7.0"
_FLAG_ELF_LIBC6 = 0x0003
_FLAG_X8664_LIB64 = 0x0300


_LD_CACHE_MEMO: dict[tuple[str, int, int], dict[str, str]] = {}


def read_ld_so_cache(path: str = LD_SO_CACHE) -> dict[str, str]:
    """name -> path for x86-64 libc6 entries of glibc's cache (first entry per name wins)."""
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key in _LD_CACHE_MEMO:
            return _LD_CACHE_MEMO[key]
        data = Path(path).read_bytes()
    except OSError:
        return {}
    _LD_CACHE_MEMO[key] = _parse_ld_so_cache(data)
    return _LD_CACHE_MEMO[key]


def _parse_ld_so_cache(data: bytes) -> dict[str, str]:
    off = 0
    if data.startswith(_CACHE_MAGIC_OLD):
        nlibs = struct.unpack_from("<I", data, 12)[0]
        off = 16 + nlibs * 12
        off = (off + 7) & ~7
    if data[off : off + len(_CACHE_MAGIC_NEW)] != _CACHE_MAGIC_NEW:
        return {}
    base = off
    nlibs, _len_strings = struct.unpack_from("<II", data, base + 20)
    entries_at = base + 48
    out: dict[str, str] = {}

    def cstr(at: int) -> str:
        end = data.find(b"\x00", at)
        return data[at:end].decode("utf-8", "surrogateescape")

    for i in range(nlibs):
        flags, key, value, _osv, hwcap = struct.unpack_from("<iIIIQ", data, entries_at + i * 24)
        if (flags & 0xFF) != _FLAG_ELF_LIBC6 or (flags & 0xFF00) != _FLAG_X8664_LIB64 or hwcap:
            continue
        # in the new format string offsets count from the start of the new header
        name, target = cstr(base + key if base else key), cstr(base + value if base else value)
        out.setdefault(name, target)
    return out


# --------------------------------------------------------------------------- file system view


class HostFS:
    """How the emulated loader sees files: path string -> host file to read, or None.

    The plan swaps in an overlay that also serves the image being assembled, so ELF files
    copied in a directory find their ``$ORIGIN``-relative libraries inside the image.
    """

    def file(self, path: str) -> str | None:
        return path if os.path.isfile(path) else None

    def identity(self, host_file: str) -> tuple[int, int]:
        st = os.stat(host_file)
        return (st.st_dev, st.st_ino)


# --------------------------------------------------------------------------- loader emulation


@dataclass
class Resolved:
    name: str  # the DT_NEEDED string, as the loader prints it on the left of "=>"
    path: str  # what the loader prints on the right of "=>"
    host_file: str  # the file to read (differs from path only for files inside the image)
    needed_by: str


@dataclass
class Missing:
    name: str
    needed_by: str


@dataclass
class _Obj:
    path: str
    host_file: str
    info: ElfInfo
    names: set[str]
    loader: _Obj | None


def _origin(path: str) -> str:
    full = path if path.startswith("/") else os.getcwd().rstrip("/") + "/" + path
    head = full.rsplit("/", 1)[0]
    return head or "/"


def _expand_dst(text: str, obj: _Obj) -> str:
    for token, value in (("$ORIGIN", None), ("${ORIGIN}", None), ("$LIB", GLIBC_DST_LIB),
                         ("${LIB}", GLIBC_DST_LIB), ("$PLATFORM", GLIBC_DST_PLATFORM),
                         ("${PLATFORM}", GLIBC_DST_PLATFORM)):
        if token in text:
            text = text.replace(token, value if value is not None else _origin(obj.path))
    return text


class LoaderEmulator:
    """``ld.so --list`` for one loader flavour, reading files through a :class:`HostFS`."""

    def __init__(self, flavour: str, ld_library_path: str | None, fs: HostFS | None = None,
                 ld_so_cache: Callable[[], dict[str, str]] | None = None):
        self.flavour = flavour
        self.env_dirs = tuple(ld_library_path.split(":")) if ld_library_path else ()
        self.fs = fs or HostFS()
        self._cache_loader = ld_so_cache or read_ld_so_cache
        self._cache: dict[str, str] | None = None
        self.host_files_read: set[str] = set()

    # glibc ------------------------------------------------------------------
    def _glibc_candidate(self, directory: str, name: str, want: ElfInfo) -> tuple[str, str] | None:
        if not directory:
            return None
        directory = directory.rstrip("/") or "/"
        path = (directory if directory != "/" else "") + "/" + name
        host = self.fs.file(path)
        if host is None:
            return None
        info = read_elf(host)
        if info is None or info.elfclass != want.elfclass or info.machine != want.machine:
            return None
        return path, host

    def _glibc_search(self, obj: _Obj, name: str, main: _Obj) -> tuple[str, str] | None:
        dirs: list[str] = []
        if obj.info.runpath is None:
            chain: _Obj | None = obj
            seen_main = False
            while chain is not None:
                if chain.info.rpath is not None:
                    dirs += [_expand_dst(d, chain) for d in chain.info.rpath]
                seen_main |= chain is main
                chain = chain.loader
            if not seen_main and main.info.rpath is not None:
                dirs += [_expand_dst(d, main) for d in main.info.rpath]
        dirs += list(self.env_dirs)
        if obj.info.runpath is not None:
            dirs += [_expand_dst(d, obj) for d in obj.info.runpath]
        for d in dirs:
            hit = self._glibc_candidate(d, name, main.info)
            if hit:
                return hit
        if self._cache is None:
            self._cache = self._cache_loader()
            self.host_files_read.add(LD_SO_CACHE)
        cached = self._cache.get(name)
        if cached:
            host = self.fs.file(cached)
            info = read_elf(host) if host else None
            if (host is not None and info is not None and info.elfclass == main.info.elfclass
                    and info.machine == main.info.machine):
                return cached, host
        for d in GLIBC_SYSTEM_DIRS:
            hit = self._glibc_candidate(d, name, main.info)
            if hit:
                return hit
        return None

    # musl -------------------------------------------------------------------
    def _musl_path_open(self, name: str, path_list: str) -> tuple[str, str] | None:
        for d in path_list.replace("\n", ":").split(":"):
            if d == "":
                return None  # musl stops at an empty element
            path = d + "/" + name
            host = self.fs.file(path)
            if host is not None:
                return path, host
        return None

    def _musl_sys_path(self) -> str:
        try:
            text = Path(MUSL_PATH_FILE).read_text()
            self.host_files_read.add(MUSL_PATH_FILE)
            return text.strip("\n")
        except OSError:
            return MUSL_DEFAULT_SYS_PATH

    def _musl_search(self, obj: _Obj, name: str) -> tuple[str, str] | None:
        if self.env_dirs:
            hit = self._musl_path_open(name, ":".join(self.env_dirs))
            if hit:
                return hit
        chain: _Obj | None = obj
        while chain is not None:
            rp = chain.info.runpath if chain.info.runpath is not None else chain.info.rpath
            if rp is not None:
                hit = self._musl_path_open(name, ":".join(_expand_dst(d, chain) for d in rp))
                if hit:
                    return hit
            chain = chain.loader
        return self._musl_path_open(name, self._musl_sys_path())

    # common -----------------------------------------------------------------
    def list_deps(self, path: str, host_file: str, info: ElfInfo, loader_path: str,
                  interp: str | None) -> tuple[list[Resolved], list[Missing]]:
        """Objects the loader would load for ``path`` (excluding itself and the loader)."""
        main = _Obj(path, host_file, info, {path}, None)
        loaded: list[_Obj] = [main]
        ids = set()
        try:
            ids.add(self.fs.identity(host_file))
        except OSError:
            pass
        loader_names = {loader_path, loader_path.rsplit("/", 1)[-1]}
        if interp:
            loader_names |= {interp, interp.rsplit("/", 1)[-1]}
        loader_host = self.fs.file(loader_path)
        if loader_host:
            linfo = read_elf(loader_host)
            if linfo and linfo.soname:
                loader_names.add(linfo.soname)
        found: list[Resolved] = []
        missing: list[Missing] = []
        musl = self.flavour == "musl"
        queue = [main]
        while queue:
            obj = queue.pop(0)
            for name in obj.info.needed:
                if musl and name.startswith("lib") and any(
                    name[3:].startswith(r + ".") for r in MUSL_RESERVED
                ):
                    if not any(r.name == name and r.path == loader_path for r in found):
                        found.append(Resolved(name, loader_path, loader_host or loader_path, obj.path))
                    continue
                if name in loader_names:
                    continue
                if any(name in o.names for o in loaded):
                    continue
                if "/" in name:
                    cand = _expand_dst(name, obj)
                    host = self.fs.file(cand)
                    hit = (cand, host) if host else None
                elif musl:
                    hit = self._musl_search(obj, name)
                else:
                    hit = self._glibc_search(obj, name, main)
                if hit is None:
                    missing.append(Missing(name, obj.path))
                    continue
                dep_path, dep_host = hit
                try:
                    ident = self.fs.identity(dep_host)
                except OSError:
                    ident = None
                if ident is not None and ident in ids:
                    for o in loaded:
                        if o.host_file == dep_host:
                            o.names.add(name)
                    continue
                dep_info = read_elf(dep_host)
                if dep_info is None:
                    missing.append(Missing(name, obj.path))
                    continue
                if ident is not None:
                    ids.add(ident)
                names = {name, dep_path}
                if dep_info.soname:
                    names.add(dep_info.soname)
                new = _Obj(dep_path, dep_host, dep_info, names, obj)
                loaded.append(new)
                queue.append(new)
                found.append(Resolved(name, dep_path, dep_host, obj.path))
        return found, missing


# --------------------------------------------------------------------------- copy_bom's autodep


@dataclass
class Dependency:
    src: str  # host path to copy (the path the loader printed)
    dest: str  # absolute path inside the image
    host_file: str  # file actually read (same as src for host files)


@dataclass
class AutodepResult:
    loader: tuple[str, str] | None = None  # (occlum loader on the host, interpreter path in image)
    deps: list[Dependency] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    host_files_read: set[str] = field(default_factory=set)


def may_need_libraries(host_file: str, stamp: bytes = b"") -> bool:
    """Only an executable or shared ELF can have a loader or DT_NEEDED entries: everything
    else is settled by one cached header read, before any path resolution for it.
    ``stamp``: as :func:`read_elf` takes it."""
    info = read_elf(host_file, stamp)
    return info is not None and info.etype in (ET_EXEC, ET_DYN)


def loader_pair(path: str, config: LoaderConfig, fs: HostFS | None = None) -> tuple[str, str] | None:
    """(Occlum loader, interpreter) for an ELF with PT_INTERP, else None."""
    host = (fs or HostFS()).file(path)
    info = read_elf(host) if host else None
    if info is None or info.etype not in (ET_EXEC, ET_DYN) or not info.interp:
        return None
    entry = config.by_name(info.interp)
    return (entry.loader if entry else info.interp, info.interp)


def infer_default_loader(paths: Iterable[str], config: LoaderConfig,
                         fs: HostFS | None = None) -> tuple[str, str] | None:
    """The single (loader, interp) pair shared by every ELF with an interpreter, if unique."""
    pairs = {p for p in (loader_pair(x, config, fs) for x in paths) if p is not None}
    return next(iter(pairs)) if len(pairs) == 1 else None


def _to_absolute(elf_path: str, printed: str) -> str | None:
    if printed.startswith("/"):
        return printed
    parent = elf_path.rsplit("/", 1)[0] if "/" in elf_path else "."
    joined = rust_join(parent, printed)
    return joined if joined.startswith("/") else None


def find_dependencies(path: str, config: LoaderConfig,
                      default_loader: tuple[str, str] | None = None,
                      fs: HostFS | None = None, display: str | None = None) -> AutodepResult:
    """copy_bom's ``find_dependent_shared_objects`` for one file, computed statically.

    ``path`` is the file as the loader would be given it; ``display`` names it in warnings.
    Returns the loader pair and every library with its destination in the image.
    """
    fs = fs or HostFS()
    shown = display or path
    res = AutodepResult()
    host = fs.file(path)
    info = read_elf(host) if host else None
    if host is None or info is None or info.etype not in (ET_EXEC, ET_DYN):
        return res
    if info.interp:
        entry = config.by_name(info.interp)
        pair = (entry.loader if entry else info.interp, info.interp)
    elif default_loader is not None:
        pair = default_loader
    else:
        if info.needed:
            res.warnings.append(
                f"cannot autodep for file {shown}. No dynamic loader can be found or inferred.")
        return res
    res.loader = pair
    occlum_loader, interp = pair
    entry = config.by_loader(occlum_loader)
    flavour = "musl" if "musl" in occlum_loader.rsplit("/", 1)[-1] or "musl" in interp else "glibc"
    emu = LoaderEmulator(flavour, entry.ld_library_path if entry else None, fs)
    found, missing = emu.list_deps(path, host, info, occlum_loader, interp)
    res.host_files_read |= emu.host_files_read
    res.missing = missing
    loader_dir = (entry.image_lib_dir if entry is not None and entry.image_lib_dir
                  else occlum_loader.rsplit("/", 1)[0] or "/")
    seen = set()
    for dep in found:
        absolute = _to_absolute(path, dep.path)
        if absolute is None:
            continue
        if entry is not None and (absolute.rsplit("/", 1)[0] or "/") in entry.lib_dirs:
            dest = rust_join(loader_dir, dep.name)
        else:
            dest = absolute
        if (absolute, dest) in seen or (absolute, dest) == (occlum_loader, interp):
            continue
        seen.add((absolute, dest))
        res.deps.append(Dependency(absolute, dest, dep.host_file))
    return res
