"""Helpers of ipoke.utils: atomic folders keep the permissions of a plain mkdir."""

from __future__ import annotations

import os

import pytest

from ipoke.utils import atomic_directory, umask_mode


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_directory_gets_the_mode_of_a_plain_mkdir(tmp_path, umask):
    # tempfile.mkdtemp creates 0700 folders: an exported model renamed from one was unreadable to other users.
    previous = os.umask(umask)
    try:
        assert umask_mode(0o777) == 0o777 & ~umask
        with atomic_directory(tmp_path / "out", marker="m.txt") as folder:
            (folder / "m.txt").write_text("x")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    assert (tmp_path / "out" / "m.txt").read_text() == "x"
    assert (tmp_path / "out").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o777 & ~umask
