"""The kernel copy: exact where the kernel copies, and a clean refusal where it does not."""

from __future__ import annotations

import os

from occlum_rules.file_copy import kernel_copy


def test_a_regular_file_is_copied_whole(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 * 2**20 + 5))
    with open(src, "rb") as fin, open(tmp_path / "dst", "wb") as out:
        assert kernel_copy(fin.fileno(), out.fileno(), src.stat().st_size)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_a_pipe_is_refused_and_the_target_left_empty(tmp_path):
    r, w = os.pipe()
    os.write(w, b"x" * 4096)
    os.close(w)
    try:
        with open(tmp_path / "dst", "wb") as out:
            assert not kernel_copy(r, out.fileno(), 4096)
            assert os.lseek(out.fileno(), 0, os.SEEK_CUR) == 0
    finally:
        os.close(r)
    assert (tmp_path / "dst").read_bytes() == b""


def test_a_source_shorter_than_announced_is_refused(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"y" * 1000)
    with open(src, "rb") as fin, open(tmp_path / "dst", "wb") as out:
        assert not kernel_copy(fin.fileno(), out.fileno(), 5000)
    assert (tmp_path / "dst").read_bytes() == b""
