"""actions/cc.py: the link adapter runs the real compiler and insists on a PIE."""

from __future__ import annotations

import pytest

from occlum_rules.actions.cc import link
from occlum_rules.errors import UserError
from occlum_rules.stages.elfcheck import pie_kind
from tests.actions.support import make_ctx
from tests.stages.bom.helpers import need_tool

SOURCE = "int main(void) { return 0; }\n"


@pytest.fixture
def ws(tmp_path):
    need_tool("cc")
    (tmp_path / "main.c").write_text(SOURCE)
    return tmp_path


def test_link_writes_a_pie(ws):
    ctx = make_ctx(ws, outputs=["out/app"],
                   params={"argv": ["cc", "-fPIE", "-pie", "main.c", "-o", "${OUT:0}"]})
    link(ctx)
    assert pie_kind(ws / "out/app") == "pie"


def test_link_refuses_a_non_pie_naming_the_target(ws):
    ctx = make_ctx(ws, outputs=["out/app"], label="//app:main",
                   params={"argv": ["cc", "-fno-PIE", "-no-pie", "main.c", "-o", "${OUT:0}"]})
    with pytest.raises(UserError, match=r"//app:main: the linked file is not-pie, .*position-independent"):
        link(ctx)


def test_a_failing_link_is_one_error_with_the_tools_output(ws):
    ctx = make_ctx(ws, outputs=["out/app"], label="//app:main",
                   params={"argv": ["cc", "missing.c", "-o", "${OUT:0}"]})
    with pytest.raises(UserError, match=r"//app:main: link failed \(exit 1\):\n.*missing\.c"):
        link(ctx)
