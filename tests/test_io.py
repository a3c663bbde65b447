"""_io.atomic_open: all or nothing."""

import os

import pytest

from jaxviz import _io


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    _io.atomic_write_text(p, "one")
    _io.atomic_write_text(p, "two")
    assert p.read_text() == "two" and os.listdir(p.parent) == ["f.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    _io.atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError):
        with _io.atomic_open(p) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
