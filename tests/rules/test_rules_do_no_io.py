"""Rules declare, analysis reads: no module under rules/ touches the file system or runs a
process, none imports another rule module for a helper, and none reaches into the stages,
the actions adapters, the executor or the CLIs (docs/architecture.md).

The check reads the source of every rule module (an AST scan, so a helper hidden behind an
alias still shows up by its call) and names each offence with its file and line.
"""

from __future__ import annotations

import ast

from tests.support.workspace import REPO

RULES_DIR = REPO / "rules"

# Calls that read, list, stat or write files, or start processes. Matched on the called
# name (``open(...)``, ``x.read_text()``, ``os.path.exists(...)``), whatever the receiver.
_FORBIDDEN_NAMES = {
    "open", "walk", "scandir", "listdir", "is_file", "is_dir", "isfile", "isdir", "exists",
    "lexists", "stat", "lstat", "glob", "rglob", "iglob", "iterdir", "read_text", "read_bytes",
    "write_text", "write_bytes", "getsize", "getmtime", "islink", "readlink", "realpath",
    "resolve", "samefile", "access", "mkdir", "makedirs", "unlink", "rmdir", "touch", "run",
    "check_output", "check_call", "chmod", "symlink",
}
# Names that are file operations only on these modules (``"a-b".replace`` is a string's).
_FORBIDDEN_ON = {"replace": {"os", "shutil"}, "remove": {"os"}, "rename": {"os"},
                 "system": {"os"}, "popen": {"os"}, "copy": {"shutil"}}
# ``ctx.actions.run(...)`` declares an action (it runs nothing at analysis time); ``ctx.fs``
# is analysis's recorded view of the file system, the one way a rule may ask.
_ALLOWED_RECEIVERS = {"actions", "fs"}
_FORBIDDEN_MODULES = {"subprocess", "shutil", "glob", "tempfile", "io"}
# Layers a rule never reaches into: it declares actions and asks ctx.fs / the toolchains.
_FOREIGN_LAYERS = ("occlum_rules.stages", "occlum_rules.actions", "occlum_rules.standin",
                   "occlum_rules.cli", "occlum_rules.core.executor")


def _foreign_layer(module: str) -> str | None:
    return next((layer for layer in _FOREIGN_LAYERS
                 if module == layer or module.startswith(layer + ".")), None)


def _called_name(node: ast.Call) -> tuple[str | None, str | None]:
    """(name, receiver name) of a call: ``os.path.isfile(x)`` -> ("isfile", "path")."""
    func = node.func
    if isinstance(func, ast.Name):
        return func.id, None
    if isinstance(func, ast.Attribute):
        base = func.value
        receiver = base.attr if isinstance(base, ast.Attribute) else (
            base.id if isinstance(base, ast.Name) else None)
        return func.attr, receiver
    return None, None


def _is_rule_module(module: str | None) -> bool:
    if not module:
        return False
    return module == "occlum_rules.rules" or module.startswith("occlum_rules.rules.") \
        or module == "rules" or module.startswith("rules.")


def offences(source: str, where: str) -> list[str]:
    """Each forbidden call or import in one rule module's source, as ``file:line: what``."""
    tree = ast.parse(source, filename=where)
    is_init = where.endswith("__init__.py")
    found: list[str] = []
    references: list[str] = []
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name, receiver = _called_name(node)
            if (name in _FORBIDDEN_NAMES and receiver not in _ALLOWED_RECEIVERS) or (
                    name in _FORBIDDEN_ON and receiver in _FORBIDDEN_ON[name]):
                shown = f"{receiver}.{name}" if receiver else name
                found.append(f"{where}:{node.lineno}: calls {shown}()")
        elif isinstance(node, ast.Attribute) and id(node) not in called:
            # a file function passed along uncalled, e.g. ``missing(entries, os.path.exists)``
            receiver = node.value.attr if isinstance(node.value, ast.Attribute) else (
                node.value.id if isinstance(node.value, ast.Name) else None)
            if receiver in ("os", "path", "shutil") and (
                    node.attr in _FORBIDDEN_NAMES or node.attr in _FORBIDDEN_ON):
                references.append(f"{where}:{node.lineno}: uses {receiver}.{node.attr}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _FORBIDDEN_MODULES:
                    found.append(f"{where}:{node.lineno}: imports {alias.name}")
                elif _is_rule_module(alias.name) and not is_init:
                    found.append(f"{where}:{node.lineno}: imports rule module {alias.name}")
                elif _foreign_layer(alias.name):
                    found.append(f"{where}:{node.lineno}: imports {alias.name} "
                                 f"({_foreign_layer(alias.name)} is not for rules)")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # a relative import inside rules/ is another rule module
                if not is_init:
                    found.append(f"{where}:{node.lineno}: imports rule module "
                                 f"{'.' * node.level}{module}")
            elif module.split(".")[0] in _FORBIDDEN_MODULES:
                found.append(f"{where}:{node.lineno}: imports from {module}")
            elif _is_rule_module(module) and not is_init:
                found.append(f"{where}:{node.lineno}: imports rule module {module}")
            elif _foreign_layer(module):
                found.append(f"{where}:{node.lineno}: imports from {module} "
                             f"({_foreign_layer(module)} is not for rules)")
    return found + references


def test_every_rule_module_is_scanned():
    modules = sorted(p.name for p in RULES_DIR.glob("*.py"))
    # the rule families the README lists: a renamed module must not drop out of the scan
    for family in ("cc.py", "cargo.py", "go.py", "bom.py", "instance.py", "package.py"):
        assert family in modules


def test_rule_modules_do_no_file_io_and_import_no_other_rule_module():
    found = [o for path in sorted(RULES_DIR.glob("*.py"))
             for o in offences(path.read_text(), path.relative_to(REPO).as_posix())]
    assert found == [], "rules must ask ctx.fs / ctx.toolchains instead:\n" + "\n".join(found)


def test_the_scan_catches_each_kind_of_offence():
    """The scanner itself: every forbidden shape in a module is reported (so an empty
    result above means something)."""
    text = (
        "import os\nimport subprocess\nfrom pathlib import Path\n"
        "from occlum_rules.rules.cargo import tree_inputs\n"
        "from . import cc\n"
        "def f(ctx, p):\n"
        "    from occlum_rules.stages.instance_layout import build_lib\n"
        "    import occlum_rules.core.executor\n"
        "    open(p)\n"
        "    os.walk(p)\n"
        "    os.scandir(p)\n"
        "    os.listdir(p)\n"
        "    Path(p).read_text()\n"
        "    Path(p).write_bytes(b'')\n"
        "    Path(p).is_file()\n"
        "    os.path.isdir(p)\n"
        "    os.path.exists(p)\n"
        "    os.stat(p)\n"
        "    Path(p).glob('*')\n"
        "    Path(p).iterdir()\n"
        "    subprocess.run(['x'])\n"
        "    os.replace(p, p)\n"
        "    missing(p, os.path.exists)\n"
        "    ctx.actions.run(name='ok')\n"
        "    ctx.fs.is_file(p)\n"
        "    'a-b'.replace('-', '_')\n"
    )
    found = offences(text, "rules/sample.py")
    shown = "\n".join(found)
    for what in ("imports subprocess", "imports rule module occlum_rules.rules.cargo",
                 "imports rule module .", "calls open()", "calls os.walk()",
                 "calls os.scandir()", "calls os.listdir()", "calls read_text()",
                 "calls write_bytes()", "calls is_file()", "calls path.isdir()",
                 "calls path.exists()", "calls os.stat()", "calls glob()", "calls iterdir()",
                 "calls subprocess.run()", "calls os.replace()",
                 "uses path.exists", "imports from occlum_rules.stages.instance_layout",
                 "imports occlum_rules.core.executor"):
        assert what in shown, f"{what!r} not reported:\n{shown}"
    for allowed in ("actions.run", "fs.is_file", "calls replace()"):
        assert allowed not in shown
