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


def test_atomic_directory_removes_the_temporaries_of_killed_writers_only(tmp_path):
    # A writer killed with SIGKILL left `.out.<random>.tmp` beside its output for good.
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    dead_pid = int(finished.stdout)  # that process has ended
    orphan = tmp_path / f".out.pid{dead_pid}.abc123.tmp"
    alive = tmp_path / f".out.pid{os.getpid()}.def456.tmp"  # a writer still at work (this process)
    other = tmp_path / f".other.pid{dead_pid}.ghi789.tmp"  # another output's temporary
    for folder in (orphan, alive, other):
        (folder / "half").mkdir(parents=True)
    with atomic_directory(tmp_path / "out", marker="done.txt") as tmp:
        (tmp / "done.txt").write_text("ok")
        assert f".out.pid{os.getpid()}." in tmp.name
    assert (tmp_path / "out" / "done.txt").read_text() == "ok"
    assert not orphan.exists() and alive.exists() and other.exists()
