"""A small model zoo: refer to trained or downloaded models by name.

The registry is a YAML file (``$IPOKE_HOME/models.yaml``, default ``~/.cache/ipoke/models.yaml``) mapping a name
(e.g. ``plants_64``, as the reference's model names) to an exported model folder, its resolution, and a SHA-256
checksum of its files. ``Poker.from_checkpoint("plants_64")``, ``ipoke sample --ckpt plants_64`` and
``ipoke evaluate --ckpt plants_64`` accept registered names; the checksum is verified on every load, so a model
that changed on disk is refused rather than silently used.

    ipoke zoo register plants_64 runs/export/plants_64     # after `ipoke export` or `ipoke quickstart`
    ipoke zoo list
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from ipoke.utils import walk_following_links, write_text_atomic

ENV_HOME = "IPOKE_HOME"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ZooError(ValueError):
    """A registry problem caused by its user: unknown or invalid name, name taken, unreadable registry."""


def registry_file() -> Path:
    """Where the registry lives (``$IPOKE_HOME/models.yaml`` or ``~/.cache/ipoke/models.yaml``)."""
    home = os.environ.get(ENV_HOME)
    # expanduser: a quoted IPOKE_HOME='~/models' made a registry under ./~ in every working folder.
    return Path(home).expanduser() / "models.yaml" if home else Path.home() / ".cache" / "ipoke" / "models.yaml"


def check_registry_writable() -> None:
    """Raise :class:`ZooError` when the registry cannot be written (``IPOKE_HOME`` is a file, or read-only), so that
    ``ipoke export --name`` finds out before it exports rather than after."""
    from ipoke.utils import unwritable_reason

    path = registry_file()
    reason = unwritable_reason(path) or unwritable_reason(path.with_name(f".{path.name}.lock"))
    if reason is not None:
        raise ZooError(f"the model registry {path} cannot be written: {reason}; set {ENV_HOME} to a writable folder")


@contextmanager
def _locked() -> Iterator[None]:
    """Hold an exclusive lock on the registry while it is read, changed and written: without it, models registered
    at the same time (parallel `ipoke export --name` runs of a sweep) silently lost each other's entries."""
    check_registry_writable()
    path = registry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks; concurrent writers are not supported
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load() -> dict[str, dict[str, Any]]:
    path = registry_file()
    if not path.exists():
        return {}
    try:
        entries = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ZooError(f"the model registry {path} is not valid YAML ({error}); fix or delete it") from error
    if isinstance(entries, dict):
        # A hand-written name YAML reads as a number (`2024:`) is the name "2024" (it crashed sorting and joining).
        named = {str(name): entry for name, entry in entries.items()}
        if len(named) != len(entries):
            twice = sorted({str(name) for name in entries if not isinstance(name, str)} & set(entries))
            raise ZooError(f"the model registry {path} lists {twice} twice (once quoted, once not); fix or delete "
                           "it")
        entries = named
    if not isinstance(entries, dict) or not all(isinstance(entry, dict) and isinstance(entry.get("path"), str)
                                                and isinstance(entry.get("sha256"), str)
                                                for entry in entries.values()):
        raise ZooError(f"the model registry {path} is not a mapping of names to models (each with a path and a "
                       "sha256; `ipoke zoo register` writes them); fix or delete it")
    return entries


def _save(entries: dict[str, dict[str, Any]]) -> None:
    path = registry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(entries, sort_keys=True))


def folder_checksum(folder: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and contents of every file in a folder (order independent of the OS).

    Hidden files and folders (a name starting with ``.``: Finder's ``.DS_Store``, an editor's swap file) are left
    out: opening a model's folder made it "changed on disk" and unloadable by name. A model never holds any, so
    checksums registered before are unchanged.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    # Links to folders are followed, as loading does (Path.rglob did not: weights behind a linked network folder
    # could change unnoticed).
    files = [parent / name for parent, _, names in walk_following_links(folder) for name in names
             if not name.startswith(".") and (parent / name).is_file()]
    for file in sorted(files):
        digest.update(str(file.relative_to(folder)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def entries() -> dict[str, dict[str, Any]]:
    """All registered models: ``{name: {"path", "sha256", "size", "n_frames"}}``."""
    return _load()


def names() -> list[str]:
    """Registered model names."""
    return sorted(_load())


def is_registered(name: str) -> bool:
    return name in _load()


def check_name(name: str) -> None:
    """Refuse a name the registry cannot hold (``ipoke export --name`` checks it before exporting)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ZooError(f"invalid model name {name!r}: use letters, digits, '_', '.' and '-', starting with a letter "
                       "or digit")


def register(name: str, folder: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Register an exported model folder under ``name`` (records its checksum and settings)."""
    from ipoke.models.base import WEIGHTS_FILE
    from ipoke.sampling import MODEL_FILE, ROLES

    check_name(name)
    folder = Path(folder).resolve()
    if not (folder / MODEL_FILE).exists():
        raise FileNotFoundError(f"{folder} is not an exported model (no {MODEL_FILE}); make one with `ipoke export`")
    try:
        manifest = yaml.safe_load((folder / MODEL_FILE).read_text())
    except yaml.YAMLError:
        manifest = None  # refused below, like any manifest that is not a mapping naming the networks
    if not isinstance(manifest, dict) or not isinstance(manifest.get("networks"), dict):
        raise ZooError(f"{folder / MODEL_FILE} is not the manifest of an exported model (it names no networks); "
                       "export the model again with `ipoke export`")
    missing = [f"{role}" for role in ROLES if not isinstance(manifest["networks"].get(role), str)
               or not (folder / manifest["networks"][role] / WEIGHTS_FILE).is_file()]
    if missing:  # a copy cut off, say: registered, it was listed as fine and failed at every load
        raise ZooError(f"{folder} is not a complete exported model: the weights of {missing} are missing; copy or "
                       "export it again")
    checksum = folder_checksum(folder)  # outside the lock: it reads every weight
    with _locked():
        entries = _load()
        if name in entries and not overwrite:
            raise ZooError(f"model name {name!r} is taken (by {entries[name]['path']}); pass overwrite=True "
                           "(--overwrite) to replace it")
        entries[name] = {"path": str(folder), "sha256": checksum, "size": manifest.get("size"),
                         "n_frames": manifest.get("n_frames")}
        _save(entries)
    return entries[name]


def _entry(entries: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if name not in entries:
        raise ZooError(f"no model named {name!r}; registered: {', '.join(sorted(entries)) or 'none'}")
    return entries[name]


def unregister(name: str) -> None:
    with _locked():
        entries = _load()
        _entry(entries, name)
        del entries[name]
        _save(entries)


def _check(entry: dict[str, Any]) -> tuple[str, str | None]:
    """``(status, checksum)``: ``"ok"``, ``"missing"`` (its folder is gone; no checksum) or ``"changed on disk"``."""
    folder = Path(entry["path"])
    if not folder.exists():
        return "missing", None
    checksum = folder_checksum(folder)
    return ("ok" if checksum == entry["sha256"] else "changed on disk"), checksum


def entry_status(entry: dict[str, Any]) -> str:
    """``"ok"``, ``"missing"`` or ``"changed on disk"`` for an entry of :func:`entries`."""
    return _check(entry)[0]


def resolve(name: str) -> Path:
    """The folder of a registered model, after checking its checksum."""
    entry = _entry(_load(), name)
    folder = Path(entry["path"])
    state, checksum = _check(entry)
    if state == "missing":
        raise FileNotFoundError(f"model {name!r} is registered at {folder}, which no longer exists")
    if state != "ok":
        raise ZooError(f"model {name!r} at {folder} changed on disk (checksum {checksum[:12]} != registered "
                       f"{entry['sha256'][:12]}); re-register it with `ipoke zoo register --overwrite "
                       f"{shlex.quote(name)} {shlex.quote(str(folder))}`")
    return folder
