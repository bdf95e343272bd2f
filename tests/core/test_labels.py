import pytest

from occlum_rules.core.labels import Label, parse_label
from occlum_rules.errors import UserError


def test_absolute_relative_and_short_forms():
    assert parse_label("//examples/hello:app") == Label("examples/hello", "app")
    assert parse_label("//examples/hello") == Label("examples/hello", "hello")
    assert parse_label(":app", "pkg") == Label("pkg", "app")
    assert parse_label("app", "pkg") == Label("pkg", "app")
    assert str(Label("a/b", "c")) == "//a/b:c"


@pytest.mark.parametrize("text", ["//../x:y", "//a/../b:c", "//a:", "//a:../x", "/abs:x",
                                  "@repo//a:b", "//a//b:c"])
def test_bad_labels_are_refused(text):
    with pytest.raises(UserError, match="bad label"):
        parse_label(text, "pkg")


def test_relative_label_needs_package():
    with pytest.raises(UserError, match="relative label needs a package"):
        parse_label(":x")
