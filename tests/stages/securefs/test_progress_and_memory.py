"""Progress output rules, and bounded memory when protecting a large file."""

from __future__ import annotations

import io
import os
import tracemalloc

from occlum_rules.stages.securefs.pfs import protect_file, read_protected
from occlum_rules.stages.securefs.progress import Progress
from occlum_rules.stages.securefs.sefs import pack_image


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_progress_only_on_a_tty_for_big_images():
    assert Progress("x", 10, 10**9, stream=FakeTty()).live
    assert not Progress("x", 10, 1000, stream=FakeTty()).live  # too small to bother
    assert not Progress("x", 10, 10**9, stream=io.StringIO()).live  # a log, not a terminal


def test_live_line_and_summary(tmp_path):
    out = FakeTty()
    p = Progress("sefs pack", 2, 2 * 1024 * 1024, live=True, summary=True, stream=out)
    p._last = -1e9
    p.advance(1, 1024 * 1024)
    p.finish("incremental")
    text = out.getvalue()
    assert "1/2 inodes" in text and "MB/s" in text
    assert text.endswith("(incremental)\n") and "sefs pack: 1 inodes, 1.0 MiB" in text


def test_pack_is_quiet_unless_asked(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x" * 5000)
    pack_image(tmp_path / "src", tmp_path / "a")
    assert capsys.readouterr().err == ""
    pack_image(tmp_path / "src", tmp_path / "b", summary=True, label="image")
    assert capsys.readouterr().err.startswith("image: 2 inodes, 0.0 MiB")


def test_protecting_a_large_file_uses_bounded_memory(tmp_path):
    src = tmp_path / "big"
    with open(src, "wb") as f:
        for i in range(48):
            f.write(bytes([i]) * (1024 * 1024))  # 48 MiB: 123 MHT nodes, 4 with children
    tracemalloc.start()
    try:
        protect_file(src, tmp_path / "big.protected")
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak
    assert os.path.getsize(tmp_path / "big.protected") > 48 * 1024 * 1024
    data, _ = read_protected(tmp_path / "big.protected")
    assert data[:3] == b"\0\0\0" and data[-1] == 47 and len(data) == 48 * 1024 * 1024
