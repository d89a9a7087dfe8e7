"""Helpers of ipoke.utils: atomic folders keep the permissions of a plain mkdir."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_atomic_directory_refuses_an_output_it_could_not_replace_before_the_work(tmp_path, monkeypatch):
    # A read-only earlier output failed only when it was replaced, after all the sampling, with a traceback.
    earlier = tmp_path / "out"
    (earlier / "sub").mkdir(parents=True)
    (earlier / "m.txt").write_text("old")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and str(path) != str(earlier / "sub"))
    work = []
    with pytest.raises(PermissionError, match=r"out cannot be replaced: the folder .*sub in it is not writable"):
        with atomic_directory(earlier, marker="m.txt"):
            work.append("done")
    assert work == [] and (earlier / "m.txt").read_text() == "old"
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and str(path) != str(tmp_path))
    with pytest.raises(PermissionError, match=r"cannot write .*new/deeper: the folder .* is not writable"):
        with atomic_directory(tmp_path / "new" / "deeper", marker="m.txt"):
            work.append("done")
    assert work == [] and not (tmp_path / "new").exists()


@pytest.mark.parametrize("interrupted", ["deleting the earlier output", "between the renames"])
def test_an_interrupted_replacement_leaves_one_whole_output(tmp_path, monkeypatch, interrupted):
    # Ctrl-C during the rmtree of the earlier output left half of it, marker included: later runs loaded it as a
    # finished output (an export missing networks). Now the folder is either the earlier output or the new one, whole.
    import shutil

    import ipoke.utils as utils

    target = tmp_path / "out"
    target.mkdir()
    for name in ("m.txt", "a", "b", "c"):
        (target / name).write_text("old")
    real_rmtree, real_rename = shutil.rmtree, Path.rename

    def rmtree_stopped_midway(path, *args, **kwargs):
        files = sorted(Path(path).rglob("*"))
        if len(files) > 1:
            files[-1].unlink()  # part of the work done, then the interrupt
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    def rename_stopped_before_the_new_output(self, destination):
        if Path(destination) == target.resolve() and ".old." not in str(self):
            raise KeyboardInterrupt
        return real_rename(self, destination)

    if interrupted == "deleting the earlier output":
        monkeypatch.setattr(utils.shutil, "rmtree", rmtree_stopped_midway)
    else:
        monkeypatch.setattr(Path, "rename", rename_stopped_before_the_new_output)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target, marker="m.txt") as folder:
            for name in ("m.txt", "a", "b", "c"):
                (folder / name).write_text("new")
    monkeypatch.undo()
    contents = {path.name: path.read_text() for path in target.iterdir()}
    assert contents in ({name: "old" for name in ("m.txt", "a", "b", "c")},
                        {name: "new" for name in ("m.txt", "a", "b", "c")})
    if interrupted == "between the renames":
        assert set(contents.values()) == {"old"}  # the earlier output was put back


def test_a_long_output_name_gets_a_temporary_name_the_file_system_takes(tmp_path):
    # `.<name>.pid<N>.<random>.tmp` of a legal 240-byte name went over the 255-byte limit (OSError mid-run).
    from ipoke.utils import write_text_atomic

    name = "日" * 80  # 240 bytes in UTF-8
    with atomic_directory(tmp_path / name, marker="m.txt") as folder:
        (folder / "m.txt").write_text("x")
    write_text_atomic(tmp_path / name / "long.json", "{}")
    write_text_atomic(tmp_path / (name + ".json"), "{}")
    assert (tmp_path / name / "m.txt").read_text() == "x" and (tmp_path / (name + ".json")).read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([name, name + ".json"])


def test_file_system_errors_are_one_line_and_others_stay_tracebacks():
    import errno

    from ipoke.cli import file_system_error

    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/video.npy")
    assert file_system_error(full) == ("No space left on device: /data/out/video.npy; free some space (or choose "
                                       "another --out) and run the command again")
    assert file_system_error(PermissionError(errno.EACCES, "Permission denied", "/ro")) == "Permission denied: /ro"
    assert file_system_error(PermissionError("cannot write /x: the folder / is not writable")).startswith("cannot")
    assert file_system_error(OSError(errno.ECONNRESET, "Connection reset")) is None
    assert file_system_error(OSError("131072 requested and 16320 written")) is None


def test_a_second_writer_of_one_output_folder_is_refused_at_once(tmp_path, capsys):
    # Two `ipoke data synth` (or quickstarts) into one folder deleted each other's temporary files, or left a model
    # mixed from both runs; the second is now refused while the first holds the folder, and may go on after it.
    from ipoke.cli import main
    from ipoke.utils import exclusive_output

    out = tmp_path / "syn"
    command = ["data", "synth", "--out", str(out), "--videos", "2", "--frames", "4", "--size", "32", "--workers", "1"]
    with exclusive_output(out, "test run"):
        assert main(command) == 2
        assert f"another ipoke data synth is writing {out} right now" in capsys.readouterr().err
        assert not out.exists()
    assert main(command) == 0 and (out / "ipoke_dataset.json").is_file()


def test_a_failed_torch_save_is_an_os_error(tmp_path, monkeypatch):
    # PyTorch reports a full disk as "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...":
    # `ipoke export` onto a full disk ended in that traceback. save_torch raises the OSError it is.
    import errno
    import shutil
    from collections import namedtuple

    import torch

    import ipoke.utils
    from ipoke.utils import save_torch

    def failing_save(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 218176 vs 218128")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 4096))
    with pytest.raises(OSError) as caught:
        save_torch({}, tmp_path / "a.pt")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "a.pt")
    assert isinstance(caught.value.__cause__, RuntimeError)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(OSError, match="writing failed .*unexpected pos") as caught:
        save_torch({}, tmp_path / "a.pt")
    assert caught.value.errno == errno.EIO
    monkeypatch.setattr(torch, "save", lambda obj, path: (_ for _ in ()).throw(RuntimeError("cannot pickle a lambda")))
    with pytest.raises(RuntimeError, match="cannot pickle a lambda"):
        save_torch({}, tmp_path / "a.pt")
    monkeypatch.undo()
    save_torch({"x": torch.arange(3)}, tmp_path / "b.pt")
    assert torch.equal(torch.load(tmp_path / "b.pt")["x"], torch.arange(3))
    assert ipoke.utils.FULL_DISK_BYTES == 1 << 20


def test_export_onto_a_full_disk_says_so_in_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    import torch

    from ipoke.cli import main

    def failing_save(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(1, 1, 0))
    assert main(["export", "--ckpt", str(tiny_model), "--out", str(tmp_path / "m")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("ipoke: error: No space left on device: ") and "free some space" in error
    assert not (tmp_path / "m").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_directory_removes_the_parents_it_made_when_the_work_fails(tmp_path):
    # A failed `ipoke sample --out new/a/b` left new/a behind.
    from ipoke.utils import atomic_directory

    with pytest.raises(RuntimeError, match="bad poke"):
        with atomic_directory(tmp_path / "new" / "a" / "b", marker="x.json") as folder:
            (folder / "x.json").write_text("{}")
            raise RuntimeError("bad poke")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()  # a parent that existed stays, and so does one that got other content meanwhile
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "kept" / "a" / "b", marker="x.json"):
            (tmp_path / "kept" / "a" / "notes.txt").write_text("someone else's")
            raise RuntimeError
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == ["kept", "kept/a",
                                                                                         "kept/a/notes.txt"]
    with atomic_directory(tmp_path / "ok" / "c", marker="x.json") as folder:
        (folder / "x.json").write_text("{}")
    assert (tmp_path / "ok" / "c" / "x.json").is_file()


def test_exclusive_output_locks_a_new_nested_folder_and_cleans_up_when_nothing_was_written(tmp_path):
    # With --out's parent missing there was no lock at all: two exports into new/sub/out both "succeeded", the
    # later one silently replacing the other's model.
    from ipoke.utils import exclusive_output

    target = tmp_path / "new" / "sub" / "out"
    with exclusive_output(target, "first run"):
        assert (tmp_path / "new" / "sub" / ".out.lock").is_file()
        with pytest.raises(FileExistsError, match=f"another second run is writing {target} right now"):
            with exclusive_output(target, "second run"):
                pass
    assert list(tmp_path.iterdir()) == []  # nothing written: the parents it made and the lock file are gone
    with exclusive_output(target, "a run"):
        target.mkdir()
    assert target.is_dir() and (target.parent / ".out.lock").is_file()  # written: kept (lock files stay)
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    with exclusive_output(blocked / "out", "a run"):  # a file in the way: no lock, the writer reports it
        pass
    assert blocked.read_text() == "x"


def test_write_text_atomic_writes_through_links_devices_and_pipes(tmp_path):
    # `ipoke evaluate --out` renamed its file over whatever was there: a symlink became a plain file (its target
    # untouched), a FIFO or device too (as root, --out /dev/null replaced /dev/null).
    import threading

    from ipoke.utils import unwritable_reason, write_text_atomic

    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.json"  # its target's folder is made, as for a plain path
    dangling.symlink_to(tmp_path / "missing" / "out.json")
    assert unwritable_reason(dangling) is None
    write_text_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "missing" / "out.json").read_text() == "made"
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    assert "cannot be resolved" in unwritable_reason(tmp_path / "loop1")
    assert unwritable_reason(os.devnull) is None  # (it named the folder /dev, which only root may write)
    write_text_atomic(os.devnull, "discarded")
    assert Path(os.devnull).is_char_device()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert received == ["through the pipe"] and fifo.is_fifo()
