"""Files and folders written whole or not at all (medr3/atomic.py): what a crash mid-write leaves behind."""

from __future__ import annotations

import os

import pytest

from medr3 import atomic
from medr3.atomic import atomic_dir, write_text_atomic


def test_write_text_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "new"
    assert os.listdir(path.parent) == ["report.json"]


def test_a_write_that_fails_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    write_text_atomic(path, "previous")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "half")
    assert path.read_text(encoding="utf-8") == "previous" and os.listdir(tmp_path) == ["manifest.json"]


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "old-weights").write_text("1")
    with atomic_dir(out) as tmp:
        assert not (tmp / "old-weights").exists()
        (tmp / "weights").write_text("2")
    assert os.listdir(out) == ["weights"] and os.listdir(tmp_path) == ["model"]


def test_a_folder_that_fails_midway_is_removed_and_the_old_one_kept(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (out / "weights").read_text() == "good" and os.listdir(tmp_path) == ["model"]
