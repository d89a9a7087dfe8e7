"""Small helpers shared across ipoke."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Free space below which a failed write is taken for a full disk (see save_torch).
FULL_DISK_BYTES = 1 << 20


class NotFoundError(KeyError):
    """A named entry (video, flow, network) that is not there; prints its message without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def umask_mode(mode: int = 0o777) -> int:
    """``mode`` with the process's umask applied: what ``mkdir`` (0o777) or ``open`` (0o666) would give.

    ``tempfile.mkdtemp`` and ``mkstemp`` create private 0700/0600 entries; a model folder or weight cache renamed from
    one would stay unreadable to the other users of a shared machine, so callers reset the mode with this.
    """
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def is_whole_number(value: Any, minimum: int) -> bool:
    """Whether ``value`` is a whole number (an int, or a float, numpy or 0-d tensor value equal to one; not a bool)
    of at least ``minimum``."""
    return not isinstance(value, bool) and int(value) == value and value >= minimum


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads(limit: int = 8) -> int:
    """Parallel workers for CPU-side work (threads where it releases the GIL, as OpenCV's DIS; processes where it does
    not, as the simulations): the available cores, at most ``limit``."""
    return max(1, min(limit, available_cores()))


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The nearest of ``path`` and its parents that exists, if it is not a folder (then nothing can be created at
    ``path``: ``mkdir`` would fail with ``NotADirectoryError`` or ``FileExistsError``); None otherwise."""
    path = Path(path)
    existing = next((candidate for candidate in (path, *path.parents) if candidate.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def walk_following_links(root: str | os.PathLike, *, key: Callable[[str], Any] | None = None
                         ) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk(root)`` following links to folders, hidden folders (``.``) left out, each real folder visited once (a
    link that points back up the tree cannot loop, and a folder reached through two links is read once).

    Yields ``(folder, subfolders, files)``, subfolders sorted by ``key``, files as ``os.walk`` lists them (hidden
    ones included); the caller may remove subfolders from the yielded list to leave them out, as with ``os.walk``.
    """
    visited = {os.path.realpath(root)}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        kept = []
        for name in sorted((name for name in subfolders if not name.startswith(".")), key=key):
            real = os.path.realpath(os.path.join(folder, name))
            if real not in visited:
                visited.add(real)
                kept.append(name)
        yield Path(folder), kept, files
        subfolders[:] = kept


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why a file or folder cannot be created at ``path`` (checked before long work, not after it), or None.

    The nearest existing ancestor must be a folder this process may write into; an existing ``path`` must itself be
    writable (it is replaced). Root passes these checks, as it passes the writes.
    """
    path = Path(path).absolute()
    if path.is_symlink():  # written through (write_text_atomic), so its target is what must be writable
        try:
            path = _link_target(path)
        except OSError as error:
            return str(error)
    if path.exists() and not path.is_file() and not path.is_dir():  # a device or pipe (/dev/null) is written into
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        return f"{blocker} is a file, so nothing can be created inside it"
    existing = next(candidate for candidate in (path.parent, *path.parents) if candidate.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the folder {existing} is not writable"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} exists and is not writable"
    return None


def _temporary_stem(name: str) -> str:
    """``name`` cut to at most 100 bytes, for a temporary sibling's name: ``.<name>.pid<N>.<random>.tmp`` of a legal
    name of 230 to 255 bytes was longer than the file system allows."""
    while len(name.encode("utf-8", "surrogateescape")) > 100:
        name = name[:-1]
    return name


def _link_target(link: Path) -> Path:
    """The path a symbolic link leads to (which need not exist); ``OSError`` for a loop of links."""
    try:
        return link.resolve(strict=False)
    except (RuntimeError, OSError) as error:  # (Python < 3.13 raises RuntimeError for a loop)
        raise OSError(f"{link} is a symbolic link that cannot be resolved (a loop of links?)") from error


def _missing_folders(path: Path) -> list[Path]:
    """The folders among ``path`` and its parents that do not exist yet, deepest first (for :func:`_remove_created`
    once a call that made them has failed)."""
    return [folder for folder in (path, *path.parents) if not folder.exists()]


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, with a failed write raised as the :class:`OSError` it is.

    PyTorch reports a write that fails (a full disk above all) as ``RuntimeError: [enforce fail at
    inline_container.cc:...] unexpected pos ...``, which reached users as a traceback; here it is ``OSError(ENOSPC)``
    when the file system is (nearly) full, ``OSError(EIO)`` with PyTorch's message otherwise. The partial file is
    left to the caller (they write into temporary files).
    """
    import errno

    import torch

    try:
        torch.save(obj, path)
    except RuntimeError as error:
        # PyTorch's messages for a failed write of the archive (its own wording, so a match on its words).
        if not any(words in str(error).lower() for words in ("unexpected pos", "failed writing", "write failed")):
            raise
        try:
            full = shutil.disk_usage(Path(path).parent).free < FULL_DISK_BYTES
        except OSError:
            full = False
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        raise OSError(errno.EIO, f"writing failed ({error})", str(path)) from error


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a hidden sibling of ``path`` and rename it over ``path``: readers see the old or the new
    file, never half of one. A symbolic link is followed (its target replaced, the link kept); a device or pipe is
    written into directly."""
    path = Path(path)
    if path.is_symlink():  # replace the file it points to and keep the link (the link itself was replaced)
        path = _link_target(path)
        path.parent.mkdir(parents=True, exist_ok=True)  # a dangling link's target folder, as for a plain path
    if path.exists() and not path.is_file() and not path.is_dir():
        # A device or pipe (`--out /dev/null`, `--out >(jq .)`) is written into: renaming over it replaced it with a
        # plain file (as root, /dev/null itself).
        with open(path, "w") as file:
            file.write(text)
        return
    # A name of its own per writer: with one fixed name, two processes writing the same file at once overwrote and
    # renamed away each other's temporary file.
    handle, tmp_name = tempfile.mkstemp(prefix=f".{_temporary_stem(path.name)}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        tmp.chmod(umask_mode(0o666))  # mkstemp makes it private (0600)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_orphaned_temporaries(target: Path) -> None:
    """Delete the temporary siblings of ``target`` (``.<name>.pid<N>.*.tmp``) whose writing process no longer runs on
    this machine: a killed ``ipoke sample``/``export`` left them behind for good (Ctrl-C and SIGTERM clean up)."""
    import re

    pattern = re.compile(rf"\.{re.escape(_temporary_stem(target.name))}\.pid(\d+)\..*\.tmp")
    if not target.parent.is_dir():
        return
    for sibling in target.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match is None or not sibling.is_dir() or sibling.is_symlink():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(sibling, ignore_errors=True)
        except (PermissionError, OverflowError, OSError):
            pass  # a process of another user (alive), or not a pid we can ask about: keep it


@contextmanager
def atomic_directory(target: str | os.PathLike, *, marker: str) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``target`` only if the block succeeds.

    Yields the temporary folder (a hidden sibling of ``target``). On success an existing ``target`` is replaced; on
    any error the temporary folder is deleted (and the parent folders this call created) and ``target`` is left as it
    was, so readers never see half a folder.

    Args:
        target: The folder to write.
        marker: A file that every folder of this kind holds (e.g. ``poker.yaml``). An existing ``target`` is only
            replaced when it is empty or holds this file; any other folder, or a file, raises
            :class:`FileExistsError` before anything is written, so a mistyped output path never deletes user files.
    """
    target = Path(target).resolve()
    blocker = file_in_the_way(target)
    if blocker is not None and blocker != target:
        raise FileExistsError(f"{blocker} is a file, so the folder {target} cannot be created inside it; choose "
                              "another output folder")
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is a file; choose another output folder")
        if any(target.iterdir()) and not (target / marker).is_file():
            raise FileExistsError(f"{target} exists and is not an output of this kind (no {marker}); choose another "
                                  "output folder or empty this one: it is never deleted")
        if Path.cwd().resolve().is_relative_to(target):
            raise FileExistsError(f"{target} is the current folder or holds it; write somewhere else")
        # Checked now: replacing it comes after the work (a read-only earlier output failed only then).
        locked = next((folder for folder, _, _ in os.walk(target) if not os.access(folder, os.W_OK | os.X_OK)), None)
        if locked is not None:
            raise PermissionError(f"{target} cannot be replaced: the folder {locked} in it is not writable; choose "
                                  "another output folder or make it writable")
    reason = unwritable_reason(target)
    if reason is not None:
        raise PermissionError(f"cannot write {target}: {reason}; choose another output folder")
    created = _missing_folders(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temporaries(target)
    # The writer's process id is in the name, so that a later run can tell an orphan (its writer was killed with
    # SIGKILL, or the machine went down) from the folder of a writer still at work.
    tmp = Path(tempfile.mkdtemp(prefix=f".{_temporary_stem(target.name)}.pid{os.getpid()}.", suffix=".tmp",
                                dir=target.parent))
    tmp.chmod(umask_mode(0o777))  # mkdtemp makes it private (0700)
    old = None
    try:
        yield tmp
        if target.exists():
            # Renamed away, not deleted in place: Ctrl-C during a long rmtree left half the earlier folder with its
            # marker, which later runs took for a finished output. Its name is a temporary's (cleaned up as an
            # orphan if this process is killed between the renames).
            old = Path(tempfile.mkdtemp(prefix=f".{_temporary_stem(target.name)}.pid{os.getpid()}.", suffix=".old.tmp",
                                        dir=target.parent))
            target.rename(old / "previous")
        tmp.rename(target)
    except BaseException:
        if old is not None and not target.exists() and (old / "previous").exists():
            (old / "previous").rename(target)  # interrupted between the renames: the earlier output is put back
        for folder in (tmp, old):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        _remove_created(created)  # the parents this call made, unless something else is in them now
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # interrupted here, the new output is complete; the rest is an orphan


@contextmanager
def exclusive_output(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``target`` (an output folder) for this process: a second process asking for it meanwhile fails at once.

    Two runs writing one folder (two quickstarts, two ``ipoke data synth``) deleted each other's temporary files,
    failed with messages about missing files, or, worst, left a model whose cINN was trained for the other run's
    autoencoder. The lock is ``flock`` on a hidden sibling file ``.<name>.lock`` (kept: deleting lock files races);
    the system releases it when the process ends, ``kill -9`` included. Missing parent folders are created first (and
    removed again with the lock file when ``target`` was not written). Without ``fcntl`` (Windows), or where the
    sibling cannot be created (a read-only parent, a file in the way: the writes fail then anyway), nothing is
    locked.

    Raises:
        FileExistsError: Another process holds ``target``; the message says so (one line from the ``ipoke`` command).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    target = Path(target).absolute()
    lock = target.parent / f".{_temporary_stem(target.name)}.lock"
    # Missing parents are made here, so that the lock holds for a new nested --out too (without them there was no
    # lock, and the writer made the parents anyway); removed again, with the lock file, if nothing was written.
    created = _missing_folders(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a file in the way, a read-only parent: the writes fail with their own message
        _remove_created(created)
        yield
        return
    locked = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"another {what} is writing {target} right now; wait for it to finish, or choose "
                                  "another output folder") from None
        locked = True
        yield
    finally:
        os.close(handle)
        # Only the holder cleans up: a refused run that had seen the parents missing deleted the holder's lock file.
        if locked and created and not target.exists():
            lock.unlink(missing_ok=True)
            _remove_created(created)


def _remove_created(folders: list[Path]) -> None:
    """Remove the folders a call created (deepest first), stopping at the first that holds something now."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def writes_exclusively(argument: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function that writes the output folder named by its parameter ``argument``: it runs only while
    holding that folder (:func:`exclusive_output`)."""
    import functools
    import inspect

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with exclusive_output(bound.arguments[argument], what):
                return function(*args, **kwargs)

        return wrapper

    return decorate


def ignore_interrupts_in_worker() -> None:
    """Initializer of pool workers: Ctrl-C reaches the whole process group, but only the main process handles it (by
    ending the workers with :func:`stop_process_pool`); a worker would otherwise print its own traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The main process turns SIGTERM into Terminated (see terminate_as_interrupt); a forked worker inherits that
    # handler, but must simply end when the main process (or anyone) terminates it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _end_with_parent()


def _end_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies: after a ``kill -9`` of ``ipoke data synth/prepare``
    the pool workers kept writing into the output, then hung forever on their pipe. A no-op elsewhere."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol: workers are then only ended by the pool
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, SLURM, ``docker stop``) raised in the main process, so that the Ctrl-C clean-up runs: pool
    workers are stopped (they used to outlive a terminated ``ipoke data synth --workers 2`` and keep writing)."""


def interrupt_behind(error: SystemExit) -> KeyboardInterrupt | None:
    """The interrupt that ended a Lightning run with ``error``, or None when it was a plain exit.

    Lightning ends a run stopped by SIGTERM with ``SIGTERMException`` (a ``SystemExit`` without a code: the shell saw
    status 0), and one stopped by Ctrl-C (or by :class:`Terminated`, raised by the handler of
    :func:`terminate_as_interrupt`, which Lightning chains after its own) with ``sys.exit(1)`` while handling it.
    Returns :class:`Terminated` for SIGTERM, ``KeyboardInterrupt`` for Ctrl-C.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(error, SIGTERMException) or isinstance(error.__context__, Terminated):
        return Terminated()
    if isinstance(error.__context__, KeyboardInterrupt):
        return KeyboardInterrupt()
    return None


def terminate_as_interrupt() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread (a no-op elsewhere)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):  # noqa: ANN001, ANN202, ARG001
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def stop_process_pool(executor) -> None:  # noqa: ANN001 - concurrent.futures.ProcessPoolExecutor
    """End a process pool now (on Ctrl-C): cancel the queued jobs and terminate the workers, so that neither the jobs
    already handed to a worker nor those in progress keep running. The dataset writers write each video to a hidden
    ``.tmp`` folder first, so a video in progress leaves only that, which the next run deletes."""
    terminate_workers = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate_workers is not None:
        terminate_workers()
        return
    processes = list((executor._processes or {}).values())
    manager = executor._executor_manager_thread
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
    if manager is not None:
        manager.join(timeout=10)  # it sees the workers gone and marks what was left as not done
