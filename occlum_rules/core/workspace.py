"""WORKSPACE.yaml: where the workspace starts and how it builds.

The file marks the workspace root (like Bazel's WORKSPACE) and holds every setting that is
not a property of one target: toolchains, the Occlum install, SGX mode, signing, caching and
the reproducibility policy. Every key is checked; an unknown or mistyped key is an error that
names the file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core.yamlcheck import Field, Schema, check, compose
from occlum_rules.errors import UserError
from occlum_rules.process import run_tool

WORKSPACE_FILE = "WORKSPACE.yaml"

_STR_OR_LIST = ["union", str, [str]]

SCHEMA = Schema({
    "name": Field(str, "a name for the workspace, shown in reports", "workspace"),
    "build_file": Field(str, "file name of BUILD files", "BUILD.py"),
    "output_dir": Field(str, "directory (relative to the root) that receives every output", "out"),
    "source_date_epoch": Field(["union", int, ("git", "env")],
                               "timestamp for reproducible outputs: a number, 'git' (last commit "
                               "time) or 'env' ($SOURCE_DATE_EPOCH, else 0)", "env"),
    "sgx_mode": Field(("HW", "SIM", "HYPER"), "default SGX mode of instances", "HW"),
    "edmm": Field(bool, "build instances for EDMM platforms (HW mode only)", False),
    "stages": Field(("python", "occlum"), "built-in Python stages or the installed Occlum tools",
                    "python"),
    "occlum": Field(Schema({
        "home": Field(str, "Occlum install prefix (else $OCCLUM_HOME, else /opt/occlum)"),
    }), "the Occlum install"),
    "toolchains": Field(Schema({
        "cc": Field(_STR_OR_LIST, "C compiler or fallback chain", ["occlum-gcc", "musl-gcc", "gcc"]),
        "cargo": Field(_STR_OR_LIST, "cargo or fallback chain", ["occlum-cargo", "cargo"]),
        "go": Field(_STR_OR_LIST, "go or fallback chain", ["occlum-go", "go"]),
    }), "compilers"),
    "cargo": Field(Schema({
        "registry": Field(str, "directory registry that Rust targets without their own source "
                          "settings build their crates.io dependencies from, e.g. Debian's "
                          "/usr/share/cargo/registry (absolute, or relative to the root)"),
    }), "Rust dependencies"),
    "signing": Field(Schema({
        "key": Field(str, "PEM signing key (RSA-3072, e=3), relative to the root"),
        "mode": Field(("online", "offline"), "sign in the build, or stop after gendata", "online"),
        "command": Field([str], "external signer command for two-step signing; {material} and "
                         "{signature} are replaced by the file paths"),
        "public_key": Field(str, "public key (PEM) matching the offline signer, for catsig"),
        "signatures_dir": Field(str, "where offline signatures are looked for (default: next to "
                                "the BUILD file)"),
    }), "enclave signing"),
    "provenance": Field(Schema({
        "signing_key": Field(str, "PEM private key (Ed25519 or ECDSA P-256), relative to the "
                         "root, that signs occlum_provenance statements as DSSE envelopes; "
                         "never the enclave signing key"),
    }), "build provenance (occlum_provenance)"),
    "cache": Field(Schema({
        "dir": Field(str, "local store (else $OCCLUM_RULES_CACHE, else the XDG cache dir)"),
        "remote": Field(str, "remote cache: an http(s):// base URL (Bazel HTTP cache "
                        "protocol) or grpc(s)://host:port (Remote Execution API)"),
        "instance_name": Field(str, "REAPI instance name of a grpc(s):// remote cache"),
        "upload": Field(bool, "upload results to the remote cache", False),
    }), "the action cache"),
    "execution": Field(Schema({
        "remote": Field(str, "remote execution: grpc(s)://host:port of a REAPI Execution "
                        "service (BuildGrid); eligible actions run on its workers"),
        "instance_name": Field(str, "REAPI instance name of the execution service"),
    }), "remote execution"),
    "vars": Field(Schema(open=True), "variables for Occlum.json.j2 templates"),
})


@dataclass
class Workspace:
    root: Path
    name: str = "workspace"
    build_file: str = "BUILD.py"
    output_dir: str = "out"
    source_date_epoch_policy: Any = "env"
    sgx_mode: str = "HW"
    edmm: bool = False
    stages: str = "python"
    occlum_home: str | None = None
    toolchains: dict[str, list[str]] = field(default_factory=dict)
    cargo: dict[str, Any] = field(default_factory=dict)
    signing: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None

    @property
    def out(self) -> Path:
        return self.root / self.output_dir

    @property
    def state_dir(self) -> Path:
        return self.out / ".occlum-rules"

    def cache_dir(self, environ: dict[str, str] | None = None) -> Path:
        env = os.environ if environ is None else environ
        if env.get("OCCLUM_RULES_CACHE"):
            return Path(env["OCCLUM_RULES_CACHE"]).expanduser().resolve()
        if self.cache.get("dir"):
            return (self.root / os.path.expanduser(self.cache["dir"])).resolve()
        base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "occlum-rules"

    def source_date_epoch(self) -> int:
        """Resolve the SOURCE_DATE_EPOCH policy to one number for this build."""
        policy = self.source_date_epoch_policy
        if isinstance(policy, int):
            return policy
        if policy == "git":
            try:
                text = run_tool(["git", "log", "-1", "--format=%ct"], "git log",
                                cwd=self.root).stdout.strip()
                return int(text)
            except (UserError, ValueError):
                raise UserError("source_date_epoch is 'git' but the last commit time could not be "
                                "read (is this a git checkout with a commit?)",
                                where=str(self.config_path)) from None
        value = os.environ.get("SOURCE_DATE_EPOCH", "0")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number") from None


def find_root(start: Path) -> Path:
    here = start.resolve()
    for candidate in (here, *here.parents):
        if (candidate / WORKSPACE_FILE).is_file():
            return candidate
    raise UserError(f"no {WORKSPACE_FILE} in {here} or any parent directory; "
                    f"create one at the root of your workspace")


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def load_workspace(root: Path) -> Workspace:
    path = root / WORKSPACE_FILE
    data = check(path, compose(path), SCHEMA)
    ws = Workspace(root=root.resolve(), config_path=path)
    ws.name = data.get("name", ws.name)
    ws.build_file = data.get("build_file", ws.build_file)
    if "/" in ws.build_file or ws.build_file in ("", ".", ".."):
        raise UserError(f"build_file must be a plain file name, got {ws.build_file!r}", where=str(path))
    ws.output_dir = data.get("output_dir", ws.output_dir)
    out = Path(ws.output_dir)
    if out.is_absolute() or ".." in out.parts or ws.output_dir in ("", "."):
        raise UserError("output_dir must be a directory inside the workspace, such as 'out'",
                        where=str(path))
    ws.source_date_epoch_policy = data.get("source_date_epoch", "env")
    ws.sgx_mode = data.get("sgx_mode", ws.sgx_mode)
    ws.edmm = data.get("edmm", ws.edmm)
    ws.stages = data.get("stages", ws.stages)
    ws.occlum_home = (data.get("occlum") or {}).get("home")
    chains = {name: _as_list(f.default) for name, f in SCHEMA.fields["toolchains"].kind.fields.items()}
    for name, value in (data.get("toolchains") or {}).items():
        chains[name] = _as_list(value)
    ws.toolchains = chains
    ws.cargo = dict(data.get("cargo") or {})
    ws.signing = dict(data.get("signing") or {})
    ws.cache = dict(data.get("cache") or {})
    ws.execution = dict(data.get("execution") or {})
    ws.provenance = dict(data.get("provenance") or {})
    ws.vars = dict(data.get("vars") or {})
    return ws


def schema_doc() -> str:
    """The WORKSPACE.yaml reference, rendered from the schema so the docs cannot drift."""
    lines: list[str] = []

    def walk(schema: Schema, prefix: str) -> None:
        for name, f in schema.fields.items():
            key = f"{prefix}{name}"
            if isinstance(f.kind, Schema) and f.kind.fields:
                lines.append(f"- `{key}`: {f.doc}")
                walk(f.kind, key + ".")
            else:
                default = f" (default: `{f.default}`)" if f.default is not None else ""
                lines.append(f"- `{key}`: {f.doc}{default}")

    walk(SCHEMA, "")
    return "\n".join(lines)
