"""Rust crates with dependencies, built offline from the three sources the cargo rules take:
a vendored directory, a directory registry, and a fetch action keyed by Cargo.lock.

The dependency is a tiny crate made here (``greet``), laid out as each source lays it out:
a directory source entry with its ``.cargo-checksum.json`` (vendored, registry), and a
.crate file behind a git index reached by a ``file://`` URL. That last one stands in for
crates.io, which this machine cannot reach: cargo clones the index with libgit2 and
downloads the .crate with curl, as it would over the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.cargo_fetch import lock_packages, unpack_crate
from tests.support.workspace import make_workspace, outcomes, run_doit

CARGO = shutil.which("cargo") or (
    os.path.expanduser("~/.cargo/bin/cargo")
    if os.access(os.path.expanduser("~/.cargo/bin/cargo"), os.X_OK) else None)
needs_cargo = pytest.mark.skipif(CARGO is None, reason="cargo is not installed on this machine "
                                 "(apt-get install cargo rustc, or rustup)")
needs_git = pytest.mark.skipif(shutil.which("git") is None,
                               reason="git is not installed (the stand-in registry index is a "
                                      "git repository)")

APP_TOML = ('[package]\nname = "app"\nversion = "0.1.0"\nedition = "2018"\n\n'
            '[dependencies]\ngreet = "0.1"\n')
APP_MAIN = 'fn main() { println!("{}", greet::greet()); }\n'


def greet_files(text: str, version: str = "0.1.0") -> dict[str, str]:
    return {"Cargo.toml": f'[package]\nname = "greet"\nversion = "{version}"\nedition = "2018"\n',
            "src/lib.rs": f'pub fn greet() -> &\'static str {{ "{text}" }}\n'}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dir_source_entry(dest: Path, files: dict[str, str], package: str | None,
                     list_files: bool = True) -> None:
    """A crate as a directory source holds it: its files plus .cargo-checksum.json, whose
    "files" cargo re-hashes before building and whose "package" must match the lock file
    (cargo's source-replacement documentation, "Directory Sources"). Debian's registry lists
    no files, so cargo checks nothing there."""
    for rel, text in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    listed = {rel: sha(text.encode()) for rel, text in files.items()} if list_files else {}
    (dest / ".cargo-checksum.json").write_text(json.dumps({"files": listed, "package": package}))


def crate_tarball(name: str, version: str, files: dict[str, str]) -> bytes:
    """A .crate: a gzipped tar of name-version/ (what `cargo package` uploads)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{rel}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def git_registry(root: Path, crates: list[tuple[str, dict[str, str]]]) -> str:
    """A registry index (git, file://) with .crate downloads beside it; returns its URL."""
    index, dl = root / "index", root / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    lines = []
    for version, files in crates:
        data = crate_tarball("greet", version, files)
        (dl / f"greet-{version}.crate").write_bytes(data)
        lines.append(json.dumps({"name": "greet", "vers": version, "deps": [], "cksum": sha(data),
                                 "features": {}, "yanked": False}))
    # index layout for a 5-letter name: first two letters / next two letters / name
    (index / "gr" / "ee").mkdir(parents=True, exist_ok=True)
    (index / "gr" / "ee" / "greet").write_text("\n".join(lines) + "\n")
    (index / "config.json").write_text(json.dumps({"dl": f"file://{dl}/{{crate}}-{{version}}.crate"}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    if not (index / ".git").exists():
        subprocess.run([*git, "init", "-q"], cwd=index, check=True)
    subprocess.run([*git, "add", "-A"], cwd=index, check=True)
    subprocess.run([*git, "commit", "-qm", "index"], cwd=index, check=True)
    return f"file://{index}"


def build(root: Path, cache: Path, *args: str, env: dict[str, str] | None = None):
    result = run_doit(root, *(args or ("build",)), cache=cache, env=env)
    assert result.returncode == 0, result.output
    return outcomes(root)


def ran(root: Path) -> list[str]:
    return sorted(k for k, v in outcomes(root).items() if v == "run")


def output(binary: Path) -> str:
    return subprocess.run([binary], capture_output=True, text=True, check=True).stdout


def failing(root: Path, cache: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = run_doit(root, *(args or ("build",)), cache=cache, env=env)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output, result.output
    return result.output


# ---------------------------------------------------------------------------- registry

@needs_cargo
def test_directory_registry_build_rebuilds_when_a_registry_crate_changes(tmp_path):
    registry = tmp_path / "registry"
    dir_source_entry(registry / "greet-0.1.0", greet_files("from the registry"), None,
                     list_files=False)  # Debian's shape: no per-file checksums
    ws = make_workspace(tmp_path / "ws", {
        "app/Cargo.toml": APP_TOML, "app/src/main.rs": APP_MAIN,
        "app/BUILD.py": f'cargo_binary(name = "app", registry = "{registry}")\n',
    })
    cache = tmp_path / "cache"
    build(ws, cache)
    binary = ws / "out/bin/app/app/app"
    assert output(binary) == "from the registry\n"
    assert not (ws / "app/Cargo.lock").exists()  # cargo never writes into the sources

    build(ws, cache)
    assert ran(ws) == []
    # the registry is outside the workspace: its crate is a discovered input of the build
    (registry / "greet-0.1.0/src/lib.rs").write_text(
        'pub fn greet() -> &\'static str { "changed" }\n')
    build(ws, cache)
    assert ran(ws) == ["//app:app:cargo-build"]
    assert output(binary) == "changed\n"

    # another checkout sharing the cache, the registry path the same but its crate not:
    # the cached result was made from other crate files, so it is not used
    other = make_workspace(tmp_path / "other", {
        "app/Cargo.toml": APP_TOML, "app/src/main.rs": APP_MAIN,
        "app/BUILD.py": f'cargo_binary(name = "app", registry = "{registry}")\n',
    })
    (registry / "greet-0.1.0/src/lib.rs").write_text(
        'pub fn greet() -> &\'static str { "third" }\n')
    assert build(other, cache)["//app:app:cargo-build"] == "run"
    assert output(other / "out/bin/app/app/app") == "third\n"


@needs_cargo
def test_workspace_registry_setting_and_a_missing_crate_hint(tmp_path):
    """WORKSPACE.yaml cargo.registry (relative to the root) is the default; a crate the
    registry lacks fails with cargo's message and one hint."""
    ws = make_workspace(tmp_path / "ws", {
        "app/Cargo.toml": APP_TOML, "app/src/main.rs": APP_MAIN,
        "app/BUILD.py": 'cargo_binary(name = "app")\n',
    }, "source_date_epoch: 0\ncargo:\n  registry: third_party/registry\n")
    cache = tmp_path / "cache"
    out = failing(ws, cache)
    assert "error: //app:app: registry: " in out and "third_party/registry is not a directory" in out
    dir_source_entry(ws / "third_party/registry/greet-0.1.0", greet_files("ws default"), None)
    build(ws, cache)
    assert output(ws / "out/bin/app/app/app") == "ws default\n"

    (ws / "app/Cargo.toml").write_text(APP_TOML + 'absent_crate = "1"\n')
    out = failing(ws, cache)
    assert "no matching package named `absent_crate` found" in out


@needs_cargo
def test_without_a_dependency_source_the_error_says_how_to_give_one(tmp_path):
    ws = make_workspace(tmp_path / "ws", {
        "app/Cargo.toml": APP_TOML, "app/src/main.rs": APP_MAIN,
        "app/BUILD.py": 'cargo_binary(name = "app")\n',
    }, "source_date_epoch: 0\n")
    env = {"CARGO_HOME": str(tmp_path / "empty-cargo-home"),
           "PATH": f"{os.path.dirname(CARGO)}{os.pathsep}{os.environ.get('PATH', '')}"}
    # an empty CARGO_HOME: no crates.io index cached, so offline resolution must fail here
    # too (rustup's proxies still find their toolchains through RUSTUP_HOME)
    env.setdefault("RUSTUP_HOME", os.environ.get("RUSTUP_HOME")
                   or os.path.expanduser("~/.rustup"))
    out = failing(ws, tmp_path / "cache", env=env)
    assert "hint: builds are offline; set vendor = ..., registry = ..." in out


# ---------------------------------------------------------------------------- vendored

VENDOR_CONFIG = ('[source.crates-io]\nreplace-with = "vendored-sources"\n\n'
                 '[source.vendored-sources]\ndirectory = "vendor"\n')


@needs_cargo
def test_vendored_crates_auto_detected_and_by_attribute(tmp_path):
    """`cargo vendor` output in the crate: found through the crate's own .cargo/config.toml,
    or named with vendor = ...; a changed vendored file changes the key."""
    files = {"a/Cargo.toml": APP_TOML, "a/src/main.rs": APP_MAIN,
             "a/.cargo/config.toml": VENDOR_CONFIG,
             "a/BUILD.py": 'cargo_binary(name = "app")\n',
             "b/Cargo.toml": APP_TOML, "b/src/main.rs": APP_MAIN,
             "b/BUILD.py": 'cargo_binary(name = "app", vendor = "third_party")\n'}
    ws = make_workspace(tmp_path / "ws", files)
    dir_source_entry(ws / "a/vendor/greet", greet_files("vendored a"), "0" * 64)
    dir_source_entry(ws / "b/third_party/greet", greet_files("vendored b"), "1" * 64)
    cache = tmp_path / "cache"
    build(ws, cache)
    assert output(ws / "out/bin/a/app/app") == "vendored a\n"
    assert output(ws / "out/bin/b/app/app") == "vendored b\n"

    # the vendored crate is an input: changing it (and its checksum, as a re-vendor does)
    # re-runs exactly that build
    dir_source_entry(ws / "b/third_party/greet", greet_files("re-vendored"), "1" * 64)
    build(ws, cache)
    assert ran(ws) == ["//b:app:cargo-build"]
    assert output(ws / "out/bin/b/app/app") == "re-vendored\n"

    # cargo checks the vendored files against their checksums
    (ws / "b/third_party/greet/src/lib.rs").write_text(
        'pub fn greet() -> &\'static str { "tampered" }\n')
    out = failing(ws, cache)
    assert "checksum" in out and "greet" in out


def test_vendor_and_source_attribute_errors(tmp_path):
    files = {"a/Cargo.toml": APP_TOML, "a/src/main.rs": APP_MAIN}
    cases = [
        ('cargo_binary(name = "x", vendor = "vendor", fetch = True)\n',
         "vendor and fetch: set only one of vendor, registry and fetch"),
        ('cargo_binary(name = "x", vendor = "../elsewhere")\n',
         "vendor: '../elsewhere' must be a directory inside the crate (a)"),
        ('cargo_binary(name = "x", vendor = "vendor")\n',
         "vendor: no files under a/vendor (run `cargo vendor` in a first)"),
        ('cargo_binary(name = "x", fetch = True)\n',
         "fetch: a/Cargo.lock is missing; fetching is keyed by the lock file"),
    ]
    for n, (build_py, message) in enumerate(cases):
        ws = make_workspace(tmp_path / f"ws{n}", {**files, "a/BUILD.py": build_py})
        out = failing(ws, tmp_path / "cache", "list")
        assert f"a/BUILD.py:1: {message}" in out, out


# ---------------------------------------------------------------------------- fetch

def fetch_workspace(root: Path, registry_url: str) -> Path:
    """A crate whose .cargo/config.toml sends crates.io requests to the stand-in registry,
    with a Cargo.lock cargo resolved against it."""
    config = (f'[source.crates-io]\nreplace-with = "standin"\n\n'
              f'[source.standin]\nregistry = "{registry_url}"\n')
    ws = make_workspace(root, {
        "app/Cargo.toml": APP_TOML, "app/src/main.rs": APP_MAIN,
        "app/.cargo/config.toml": config,
        "app/BUILD.py": 'cargo_binary(name = "app", fetch = True)\n',
    })
    lock(ws, root.parent / "lock-home")
    return ws


def lock(ws: Path, home: Path) -> None:
    env = dict(os.environ, CARGO_HOME=str(home))
    env.setdefault("RUSTUP_HOME", os.path.expanduser("~/.rustup"))
    # in the crate directory: cargo reads .cargo/config.toml from where it runs
    subprocess.run([CARGO, "generate-lockfile"], cwd=ws / "app", env=env, check=True,
                   capture_output=True)


@needs_cargo
@needs_git
def test_fetch_action_downloads_once_then_builds_offline_and_caches(tmp_path):
    remote = tmp_path / "remote"
    url = git_registry(remote, [("0.1.0", greet_files("fetched"))])
    ws = fetch_workspace(tmp_path / "ws", url)
    cache = tmp_path / "cache"
    result = build(ws, cache)
    assert result["//app:app:cargo-fetch"] == "run"
    assert output(ws / "out/bin/app/app/app") == "fetched\n"
    # the fetched tree is a directory source: every file listed with its sha256, and the
    # package checksum is the one Cargo.lock pins
    crates = ws / "out/private/app/app/crates"
    checks = json.loads((crates / "greet-0.1.0/.cargo-checksum.json").read_text())
    pinned = [p for p in lock_packages((ws / "app/Cargo.lock").read_text())
              if p["name"] == "greet"][0]["checksum"]
    assert checks["package"] == pinned == sha((remote / "dl/greet-0.1.0.crate").read_bytes())
    assert checks["files"]["src/lib.rs"] == sha((crates / "greet-0.1.0/src/lib.rs").read_bytes())

    # a source edit rebuilds offline; the fetch (keyed by the lock file) stays
    main = ws / "app/src/main.rs"
    main.write_text(main.read_text().replace('"{}"', '"{}!"'))
    build(ws, cache)
    assert ran(ws) == ["//app:app:cargo-build"]
    assert output(ws / "out/bin/app/app/app") == "fetched!\n"

    # no "network" any more: a second checkout restores the fetch from the cache
    shutil.rmtree(remote)
    other = tmp_path / "other"
    shutil.copytree(ws, other, ignore=shutil.ignore_patterns("out"))
    result = build(other, cache)
    assert result["//app:app:cargo-fetch"] == "cache_hit_local"
    assert output(other / "out/bin/app/app/app") == "fetched!\n"


@needs_cargo
@needs_git
def test_a_changed_lock_file_fetches_again(tmp_path):
    remote = tmp_path / "remote"
    url = git_registry(remote, [("0.1.0", greet_files("old"))])
    ws = fetch_workspace(tmp_path / "ws", url)
    cache = tmp_path / "cache"
    build(ws, cache)
    assert output(ws / "out/bin/app/app/app") == "old\n"
    # a new release, and a lock file updated to it
    git_registry(remote, [("0.1.0", greet_files("old")), ("0.1.1", greet_files("new", "0.1.1"))])
    shutil.rmtree(tmp_path / "lock-home")
    lock(ws, tmp_path / "lock-home")
    assert 'version = "0.1.1"' in (ws / "app/Cargo.lock").read_text()
    build(ws, cache)
    assert ran(ws) == ["//app:app:cargo-build", "//app:app:cargo-fetch"]
    assert output(ws / "out/bin/app/app/app") == "new\n"
    assert sorted(os.listdir(ws / "out/private/app/app/crates")) == ["greet-0.1.1"]


@needs_cargo
@needs_git
def test_fetch_refuses_a_download_that_does_not_match_the_lock_file(tmp_path):
    remote = tmp_path / "remote"
    url = git_registry(remote, [("0.1.0", greet_files("real"))])
    ws = fetch_workspace(tmp_path / "ws", url)
    text = (ws / "app/Cargo.lock").read_text()
    pinned = [p for p in lock_packages(text) if p["name"] == "greet"][0]["checksum"]
    (ws / "app/Cargo.lock").write_text(text.replace(pinned, "ab" * 32))
    out = failing(ws, tmp_path / "cache")
    assert "//app:app: cargo fetch failed" in out and "checksum" in out


# ---------------------------------------------------------------------------- no cargo

def _bin_without_cargo(where: Path) -> Path:
    """A PATH directory with the C toolchain and nothing of Rust."""
    where.mkdir(parents=True)
    for tool in ("gcc", "cc", "as", "ld", "ld.bfd", "ar"):
        found = shutil.which(tool)
        if found:
            os.symlink(os.path.realpath(found), where / tool)
    return where


def test_no_cargo_fails_rust_targets_with_one_line_and_leaves_c_alone(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (needed for the C target beside the Rust one)")
    ws = make_workspace(tmp_path / "ws", {
        "app/Cargo.toml": '[package]\nname = "demo"\nversion = "0.1.0"\nedition = "2021"\n',
        "app/src/main.rs": "fn main() {}\n",
        "app/BUILD.py": 'cargo_binary(name = "demo")\n',
        "c/app.c": "int main(void) { return 0; }\n",
        "c/BUILD.py": 'occlum_cc_binary(name = "app", srcs = ["app.c"], toolchain = ["gcc"])\n',
    }, "source_date_epoch: 0\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": str(_bin_without_cargo(tmp_path / "bin")), "HOME": str(home),
           "CARGO_HOME": str(home / ".cargo")}
    out = failing(ws, tmp_path / "cache", env=env)
    errors = [line for line in out.splitlines() if line.startswith("error")]
    assert errors == [
        "error: //app:demo: no cargo toolchain found: tried occlum-cargo, cargo (on PATH and "
        "in $CARGO_HOME/bin); install Rust with `apt-get install cargo rustc` (Debian/Ubuntu) "
        "or rustup, or set toolchains.cargo in WORKSPACE.yaml"], out
    result = run_doit(ws, "//c:app", cache=tmp_path / "cache", env=env)
    assert result.returncode == 0, result.output


# ---------------------------------------------------------------------------- the formats

def test_lock_packages_reads_what_cargo_writes():
    text = ('# This file is automatically @generated by Cargo.\nversion = 3\n\n'
            '[[package]]\nname = "app"\nversion = "0.1.0"\ndependencies = [\n "greet",\n]\n\n'
            '[[package]]\nname = "greet"\nversion = "0.1.0"\n'
            'source = "registry+https://github.com/rust-lang/crates.io-index"\n'
            'checksum = "' + "ab" * 32 + '"\n\n[metadata]\nx = "y"\n')
    assert lock_packages(text) == [
        {"name": "app", "version": "0.1.0"},
        {"name": "greet", "version": "0.1.0",
         "source": "registry+https://github.com/rust-lang/crates.io-index",
         "checksum": "ab" * 32}]


def test_unpack_crate_keeps_inside_and_refuses_escapes(tmp_path):
    good = crate_tarball("greet", "0.1.0", greet_files("x"))
    files = unpack_crate(good, "greet", "0.1.0", tmp_path / "ok")
    assert files["src/lib.rs"] == sha((tmp_path / "ok/src/lib.rs").read_bytes())
    assert oct((tmp_path / "ok/src/lib.rs").stat().st_mode & 0o777) == oct(0o644)
    for name in ("greet-0.1.0/../../evil", "other-0.1.0/x", "/abs"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(UserError):
            unpack_crate(buf.getvalue(), "greet", "0.1.0", tmp_path / f"bad{len(name)}")
    assert not (tmp_path / "evil").exists()
