"""Does the image hold what ``occlum run`` of this instance needs? Checked before the image
is written, from the layers' entry lists (no tar is extracted).

Two things fail at run time in a container and nowhere earlier: the PAL's shared libraries
(the SGX uRTS and uae-service libraries, ``_sim`` variants in SIM mode) missing from the
runtime base, and an entrypoint program that is not there. The PAL's DT_NEEDED names are
looked up as the dynamic loader would for a process of the image: DT_RPATH/DT_RUNPATH of the
PAL ($ORIGIN = its directory in the image), LD_LIBRARY_PATH from the image's Env, then the
standard library directories. Only the PAL's own DT_NEEDED entries are checked, not the
libraries' dependencies in turn.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from occlum_rules.errors import UserError
from occlum_rules.stages.bom.elf_deps import read_elf
from occlum_rules.stages.oci.fsview import ImageFS

STANDARD_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
                     "/usr/lib64", "/lib", "/usr/lib")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Pal:
    """The PAL ``occlum run`` loads: its file on the build machine and its place in the image."""

    file: str          # on disk (read with pyelftools)
    image_path: str    # absolute path in the container
    description: str   # "stand-in PAL" or "Occlum 0.30.1 PAL"


def _env_value(env: list[str], name: str) -> str | None:
    for item in env:
        key, sep, value = item.partition("=")
        if sep and key == name:
            return value
    return None


def library_dirs(pal: Pal, rpath: tuple[str, ...], env: list[str]) -> list[str]:
    origin = posixpath.dirname(pal.image_path)
    dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in rpath]
    dirs += [d for d in (_env_value(env, "LD_LIBRARY_PATH") or "").split(":") if d]
    dirs += STANDARD_LIB_DIRS
    return list(dict.fromkeys(d for d in dirs if d.startswith("/")))


def check_pal_libraries(fs: ImageFS, pal: Pal, sgx_mode: str, env: list[str]) -> list[str]:
    """Where each DT_NEEDED library of the PAL resolves; UserError naming the first missing
    one (and the others) with the SGX mode and the PAL."""
    info = read_elf(pal.file)
    if info is None:
        raise UserError(f"{pal.file}: the PAL is not a readable ELF file")
    dirs = library_dirs(pal, (info.runpath if info.runpath is not None else info.rpath) or (), env)
    found, missing = [], []
    for name in info.needed:
        where = next((f"/{hit[0]}" for d in dirs
                      if (hit := fs.find_file(posixpath.join(d, name).lstrip("/")))), None)
        if where is None:
            missing.append(name)
        else:
            found.append(f"{name} -> {where}")
    if missing:
        others = f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""
        raise UserError(
            f"the image has no {missing[0]}, which the {sgx_mode}-mode PAL "
            f"{posixpath.basename(pal.image_path)} ({pal.description}, {pal.image_path}) needs "
            f"(DT_NEEDED){others}; looked in {', '.join(dirs)} of the base and layers. Add a "
            "layer that provides it (for example an oci_layer of a BOM listing it), or set "
            "LD_LIBRARY_PATH in env to where the base keeps it")
    return found


def check_program(fs: ImageFS, argv: list[str], env: list[str], workdir: str) -> str:
    """The image path of the program the container starts; UserError when it is absent or
    not executable."""
    if not argv:
        raise UserError("the image has neither entrypoint nor cmd: nothing to run")
    program = argv[0]
    if "/" in program:
        candidates = [program if program.startswith("/") else posixpath.join(workdir or "/",
                                                                               program)]
    else:
        path = _env_value(env, "PATH") or DEFAULT_PATH
        candidates = [posixpath.join(d or "/", program) for d in path.split(":")]
    for candidate in candidates:
        hit = fs.find_file(candidate.lstrip("/"))
        if hit is not None:
            if not hit[1].mode & 0o111:
                raise UserError(f"the entrypoint program {program} (/{hit[0]}) is not "
                                "executable in the image")
            return "/" + hit[0]
    looked = candidates[0] if len(candidates) == 1 else "PATH " + ":".join(
        posixpath.dirname(c) for c in candidates)
    raise UserError(f"the entrypoint program {program} is not in the image (looked for "
                    f"{looked} in the base and layers, following links)")
