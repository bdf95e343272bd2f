"""Environment-variable expansion with copy_bom's exact rules.

copy_bom passes every path of a target through the Rust ``shellexpand::env`` crate (2.1)
*after* joining it with the image root. We mirror that crate rather than ``os.path.expandvars``
because the two disagree on the cases BOMs actually hit: a variable set to the empty string
expands to nothing, ``${VAR:-default}`` only uses the default when VAR is unset (not when it
is empty), ``$$`` is an escaped dollar, and one unset variable leaves the *whole* string
untouched (the caller then warns and uses the literal text).
"""

from __future__ import annotations

from collections.abc import Mapping


def _is_name_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def expand(text: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """Expand ``text``; return ``(result, None)`` or ``(text, unset_var_name)`` on failure."""
    if "$" not in text:
        return text, None
    out: list[str] = []
    rest = text
    while True:
        idx = rest.find("$")
        if idx < 0:
            out.append(rest)
            break
        out.append(rest[:idx])
        rest = rest[idx:]
        nxt = rest[1:2]
        if nxt == "{":
            close = rest.find("}")
            if close < 0:  # unbalanced: keep "${" and go on
                out.append(rest[:2])
                rest = rest[2:]
                continue
            inner_end = close
            default = None
            split = rest[:close].find(":-")
            if split >= 0 and split != 2:
                default = rest[split + 2 : close]
                inner_end = split
            name = rest[2:inner_end]
            value = env.get(name) if name else None
            if value is not None:
                out.append(value)
            elif default is not None:
                out.append(default)
            else:
                return text, name
            rest = rest[close + 1 :]
        elif nxt and _is_name_char(nxt):
            end = 2
            while end < len(rest) and _is_name_char(rest[end]):
                end += 1
            name = rest[1:end]
            value = env.get(name)
            if value is None:
                return text, name
            out.append(value)
            rest = rest[end:]
        else:
            out.append("$")
            rest = rest[2:] if nxt == "$" else rest[1:]
    return "".join(out), None
