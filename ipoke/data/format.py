"""The prepared dataset format: writing videos atomically, rebuilding the index, reading clips memory-mapped.

The layout is specified in ``docs/data_format.md``. In short::

    DATASET/ipoke_dataset.json              index (format version, size, flow_lags, one entry per video)
    DATASET/videos/<video_id>/meta.json     this video's entry
    DATASET/videos/<video_id>/frames.npy    uint8   (N, S, S, 3)
    DATASET/videos/<video_id>/flow.npy      float16 (F, L, 2, S, S), flow from flow_starts[f] to +flow_lags[l]
    DATASET/videos/<video_id>/flow_starts.npy  int32 (F,)
    optional: masks.npy uint8 (N, S, S), keypoints.npy float32 (N, K, 2), pokes.npy float32 (P, 4), scene.json

A video is written into a hidden ``videos/.<id>.*.tmp/`` folder and renamed when complete, so a folder without the
leading dot is always whole; writers skip finished videos when re-run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ipoke.utils import NotFoundError, atomic_directory, file_in_the_way, write_text_atomic

FORMAT_NAME = "ipoke-prepared"
FORMAT_VERSION = 1
INDEX_FILE = "ipoke_dataset.json"
VIDEOS_DIR = "videos"
# Written by `ipoke data prepare` (ipoke.data.prepare) when a run starts; the index only when it ends.
PREPARE_SETTINGS_FILE = ".ipoke_prepare.json"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
OPTIONAL_ARRAYS = {"masks": np.uint8, "keypoints": np.float32, "pokes": np.float32}
_INDEX_REMEDY = ("delete it and re-run the `ipoke data synth`/`ipoke data prepare` command that wrote the dataset, "
                 "with the same options (finished videos are kept)")


class DatasetFormatError(ValueError):
    """A folder is not a prepared ipoke dataset, a video in it is malformed, or it lacks the clips asked of it (their
    flow lag, a split)."""


def is_dataset(root: str | os.PathLike) -> bool:
    """True if ``root`` holds an ipoke dataset index."""
    return (Path(root) / INDEX_FILE).is_file()


def finished_meta_files(root: str | os.PathLike) -> list[Path]:
    """The ``meta.json`` of every finished video folder of ``root``, sorted; hidden folders are skipped (a writer's
    temporary folder holds its ``meta.json`` just before it is renamed, and a killed run can leave it behind)."""
    videos = Path(root) / VIDEOS_DIR
    if not videos.is_dir():
        return []
    return sorted(path for path in videos.glob("*/meta.json") if not path.parent.name.startswith("."))


def remove_if_nothing_finished(root: str | os.PathLike, *, created_root: bool) -> bool:
    """Remove what an interrupted or failed writer left in a new or empty ``root`` where no video was finished (the
    ``videos`` folder, the index, the prepare settings; ``root`` itself if the run created it), so that the corrected
    command starts there afresh instead of being refused for other settings; True if it did."""
    root = Path(root)
    if finished_meta_files(root):
        return False
    shutil.rmtree(root / VIDEOS_DIR, ignore_errors=True)
    for name in (INDEX_FILE, PREPARE_SETTINGS_FILE):
        (root / name).unlink(missing_ok=True)
    if created_root:
        shutil.rmtree(root, ignore_errors=True)
    return True


def unfinished_prepare_message(root: str | os.PathLike) -> str | None:
    """What to do with a folder that an ``ipoke data prepare`` run started but did not finish (its settings file but
    no index: interrupted, or stopped at a bad video); None for any other folder."""
    root = Path(root)
    if is_dataset(root) or not (root / PREPARE_SETTINGS_FILE).is_file():
        return None
    finished = len(finished_meta_files(root))
    return (f"{root} is an unfinished `ipoke data prepare` output ({finished} videos finished, no {INDEX_FILE} yet): "
            "the run was interrupted or stopped at a bad video; run the same `ipoke data prepare` command again to "
            "finish it (finished videos are kept; --skip-bad leaves bad videos out)")


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``ipoke_dataset.json`` of ``root``.

    Raises:
        DatasetFormatError: If the file is not valid JSON or does not hold a JSON object; the message names the file.
    """
    path = Path(root) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path} is damaged: not valid JSON ({error}); {_INDEX_REMEDY}") from error
    if not isinstance(index, dict):
        kind = {"list": "array", "str": "string", "int": "number", "float": "number", "bool": "boolean",
                "NoneType": "null"}.get(type(index).__name__, type(index).__name__)
        raise DatasetFormatError(f"{path} is damaged: it holds a JSON {kind}, not the index object "
                                 f"({{\"format\": ..., \"videos\": [...]}}); {_INDEX_REMEDY}")
    return index


def _check_id(video_id: str) -> None:
    if not _ID_PATTERN.match(video_id):
        raise DatasetFormatError(
            f"video id {video_id!r} is not allowed: use letters, digits, '_', '-', '.' and start with a letter or "
            "digit")


def validate_video_arrays(frames: np.ndarray, flow: np.ndarray, flow_starts: np.ndarray, flow_lags: list[int],
                          **optional: np.ndarray | None) -> None:
    """Check shapes and dtypes of one video's arrays against the format; raises :class:`DatasetFormatError`."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2] or frames.dtype != np.uint8:
        raise DatasetFormatError(f"frames must be uint8 (N, S, S, 3), got {frames.dtype} {frames.shape}")
    n_frames, size = frames.shape[0], frames.shape[1]
    if n_frames < 2:
        raise DatasetFormatError(f"a video needs at least 2 frames, got {n_frames}")
    expected = (len(flow_starts), len(flow_lags), 2, size, size)
    if flow.shape != expected:
        raise DatasetFormatError(f"flow must have shape (F, L, 2, S, S) = {expected}, got {flow.shape}")
    if len(flow_starts) and (flow_starts.min() < 0 or flow_starts.max() + max(flow_lags) >= n_frames):
        raise DatasetFormatError(
            f"flow_starts {flow_starts.tolist()[:5]}... with lags {flow_lags} reach past the {n_frames} frames")
    masks = optional.get("masks")
    if masks is not None and masks.shape != (n_frames, size, size):
        raise DatasetFormatError(f"masks must have shape (N, S, S) = {(n_frames, size, size)}, got {masks.shape}")
    keypoints = optional.get("keypoints")
    if keypoints is not None and (keypoints.ndim != 3 or keypoints.shape[0] != n_frames or keypoints.shape[2] != 2):
        raise DatasetFormatError(f"keypoints must have shape (N, K, 2) with N = {n_frames}, got {keypoints.shape}")
    pokes = optional.get("pokes")
    if pokes is not None and (pokes.ndim != 2 or pokes.shape[1] != 4):
        raise DatasetFormatError(f"pokes must have shape (P, 4) rows (x, y, dx, dy), got {pokes.shape}")


class DatasetWriter:
    """Writes videos into a prepared dataset folder, atomically per video, and the index at the end.

    Args:
        root: Dataset folder; created if missing. If it exists it must be empty or an ipoke dataset with the
            same ``size`` and ``flow_lags`` (so that a run can be resumed).
        size: Frame side length S.
        flow_lags: Frame lags at which flow is stored, the same for every video.
        source: Provenance tag, e.g. ``"synthetic"`` or ``"prepare"``.
        settings: Generator/preparation options stored in the index for provenance.

    Example::

        writer = DatasetWriter("data/mine", size=64, flow_lags=[10, 20], source="prepare")
        if not writer.has_video("clip0"):
            writer.write_video("clip0", split="train", frames=..., flow=..., flow_starts=...)
        writer.write_index()
    """

    def __init__(self, root: str | os.PathLike, *, size: int, flow_lags: list[int], source: str,
                 settings: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.size = int(size)
        self.flow_lags = [int(lag) for lag in flow_lags]
        if not self.flow_lags or min(self.flow_lags) < 1:
            raise DatasetFormatError(f"flow_lags must be positive integers, got {flow_lags}")
        self.source = source
        self.settings = settings or {}
        if self.root.exists() and not self.root.is_dir():
            raise DatasetFormatError(f"output {self.root} exists and is not a folder")
        blocking = file_in_the_way(self.root.parent)
        if blocking is not None:
            raise DatasetFormatError(f"output {self.root}: {blocking} is a file, not a folder")
        if self.root.exists() and any(self.root.iterdir()):
            if not is_dataset(self.root) and not (self.root / VIDEOS_DIR).is_dir():
                raise DatasetFormatError(
                    f"output {self.root} exists, is not empty and is not an ipoke dataset; choose an empty or new "
                    "folder (refusing to write into it)")
            if is_dataset(self.root):
                index = read_index(self.root)
                if index.get("size") != self.size or index.get("flow_lags") != self.flow_lags:
                    raise DatasetFormatError(
                        f"{self.root} is a dataset with size {index.get('size')} and flow_lags "
                        f"{index.get('flow_lags')}, but this run asks for size {self.size} and flow_lags "
                        f"{self.flow_lags}; use another --out folder or the same settings to resume")
        (self.root / VIDEOS_DIR).mkdir(parents=True, exist_ok=True)
        for stale in (self.root / VIDEOS_DIR).glob(".*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def video_dir(self, video_id: str) -> Path:
        return self.root / VIDEOS_DIR / video_id

    def has_video(self, video_id: str) -> bool:
        """True if the video was written completely (by this or an earlier run)."""
        return (self.video_dir(video_id) / "meta.json").is_file()

    def write_video(self, video_id: str, *, split: str, frames: np.ndarray, flow: np.ndarray,
                    flow_starts: np.ndarray | list[int], masks: np.ndarray | None = None,
                    keypoints: np.ndarray | None = None, pokes: np.ndarray | None = None,
                    scene: dict[str, Any] | None = None, **extra_meta: Any) -> dict[str, Any]:
        """Write one video; nothing is visible under its final name until every file is complete.

        Args:
            video_id: Unique name (letters, digits, ``_-.``).
            split: ``"train"``, ``"val"`` or ``"test"`` (or another name the user chose).
            frames: uint8 ``(N, S, S, 3)`` RGB.
            flow: ``(F, L, 2, S, S)`` flow in pixels at size S; stored as float16.
            flow_starts: ``(F,)`` frame indices the flow starts from.
            masks, keypoints, pokes: optional arrays, see the module docstring.
            scene: optional JSON-able description (synthetic data: enough to re-simulate).
            **extra_meta: JSON-able fields added to the video's entry (e.g. ``object_id``, ``source_file``).

        Returns:
            The video's index entry.
        """
        _check_id(video_id)
        flow_starts = np.asarray(flow_starts, dtype=np.int32)
        validate_video_arrays(frames, flow, flow_starts, self.flow_lags, masks=masks, keypoints=keypoints, pokes=pokes)
        if frames.shape[1] != self.size:
            raise DatasetFormatError(f"video {video_id}: frames are {frames.shape[1]} px, dataset size is {self.size}")
        with atomic_directory(self.video_dir(video_id), marker="frames.npy") as tmp:
            np.save(tmp / "frames.npy", np.ascontiguousarray(frames))
            np.save(tmp / "flow.npy", np.ascontiguousarray(flow, dtype=np.float16))
            np.save(tmp / "flow_starts.npy", flow_starts)
            arrays = {"masks": masks, "keypoints": keypoints, "pokes": pokes}
            for name, array in arrays.items():
                if array is not None:
                    np.save(tmp / f"{name}.npy", np.ascontiguousarray(array, dtype=OPTIONAL_ARRAYS[name]))
            if scene is not None:
                (tmp / "scene.json").write_text(json.dumps(scene))
            meta = {
                "id": video_id, "split": split, "n_frames": int(frames.shape[0]),
                "flow_starts": flow_starts.tolist(),
                **{f"has_{name}": array is not None for name, array in arrays.items()},
                **extra_meta,
            }
            # meta.json last: its presence marks a finished video even before the rename.
            (tmp / "meta.json").write_text(json.dumps(meta))
        return meta

    def write_index(self, *, complete: bool = True) -> dict[str, Any]:
        """Rebuild ``ipoke_dataset.json`` from the finished videos' ``meta.json`` files (atomic replace).

        Args:
            complete: False while a run is still writing videos; readers refuse incomplete datasets.
        """
        return write_index(self.root, size=self.size, flow_lags=self.flow_lags, source=self.source,
                           settings=self.settings, complete=complete)


def write_index(root: str | os.PathLike, *, size: int | None = None, flow_lags: list[int] | None = None,
                source: str | None = None, settings: dict[str, Any] | None = None,
                complete: bool = True) -> dict[str, Any]:
    """Rebuild the index of ``root`` from its videos; missing arguments are kept from an existing index."""
    root = Path(root)
    old: dict[str, Any] = read_index(root) if is_dataset(root) else {}
    videos = []
    for meta_file in finished_meta_files(root):
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:  # was a raw traceback
            raise DatasetFormatError(
                f"{meta_file} is damaged ({type(error).__name__}: {error}); delete the folder {meta_file.parent} and "
                "run the command that made the dataset again (it makes the missing video again)") from None
        videos.append(meta)
    index = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "size": size if size is not None else old.get("size"),
        "flow_lags": flow_lags if flow_lags is not None else old.get("flow_lags"),
        "source": source if source is not None else old.get("source", "unknown"),
        "settings": settings if settings is not None else old.get("settings", {}),
        "complete": complete,
        "videos": videos,
    }
    if index["size"] is None or index["flow_lags"] is None:
        raise DatasetFormatError(unfinished_prepare_message(root) or
                                 f"{root} has no index to take size/flow_lags from: `ipoke data index` only "
                                 "rebuilds an existing one. From Python, pass them: "
                                 "ipoke.data.format.write_index(root, size=..., flow_lags=[...]); or re-run the "
                                 "command that made the dataset with the same options (`ipoke data synth` or `ipoke "
                                 "data prepare`): it keeps the finished videos and writes the index, but also makes "
                                 "again any video you deleted (delete those again, then run `ipoke data index`)")
    write_text_atomic(root / INDEX_FILE, json.dumps(index, indent=1))
    return index


@dataclass
class VideoArrays:
    """One video of a prepared dataset, arrays memory-mapped (see the module docstring for shapes)."""

    meta: dict[str, Any]
    frames: np.ndarray
    flow: np.ndarray
    flow_starts: np.ndarray
    masks: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    pokes: np.ndarray | None = None

    def flow_between(self, start: int, lag: int, flow_lags: list[int]) -> np.ndarray:
        """Flow ``(2, S, S)`` float32 from frame ``start`` to ``start + lag``; raises if not stored."""
        rows = np.nonzero(self.flow_starts == start)[0]
        if len(rows) == 0 or lag not in flow_lags:
            raise NotFoundError(f"video {self.meta['id']} has no flow from frame {start} at lag {lag} "
                           f"(starts {self.flow_starts.tolist()[:8]}..., lags {flow_lags})")
        return np.asarray(self.flow[rows[0], flow_lags.index(lag)], dtype=np.float32)


class PreparedDataset:
    """Read access to a prepared dataset folder.

    Args:
        root: The dataset folder (holding ``ipoke_dataset.json``).

    Raises:
        DatasetFormatError: If ``root`` is not a dataset or its format version is unknown.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DatasetFormatError(f"dataset folder {self.root} does not exist; create one with `ipoke data synth "
                                     "--out DIR` or `ipoke data prepare --videos RAW --out DIR`")
        if not is_dataset(self.root):
            unfinished = unfinished_prepare_message(self.root)
            if unfinished:
                raise DatasetFormatError(unfinished)
            raise DatasetFormatError(f"{self.root} is not an ipoke dataset (no {INDEX_FILE}); create one with "
                                     "`ipoke data synth` or `ipoke data prepare` (if this folder lost its index, run "
                                     "the command that made it again: it keeps the finished videos and writes the "
                                     "index)")
        self.index = read_index(self.root)
        if self.index.get("format") != FORMAT_NAME or self.index.get("format_version") != FORMAT_VERSION:
            raise DatasetFormatError(f"{self.root}: unsupported format {self.index.get('format')!r} version "
                                     f"{self.index.get('format_version')!r} (this ipoke reads {FORMAT_NAME} "
                                     f"v{FORMAT_VERSION})")
        if not self.index.get("complete", True):
            raise DatasetFormatError(f"{self.root} is incomplete: the run that wrote it was interrupted; run the same "
                                     "`ipoke data synth`/`ipoke data prepare` command again to finish it")
        missing = [key for key in ("size", "flow_lags", "videos") if key not in self.index]
        if missing:
            raise DatasetFormatError(f"{self.root / INDEX_FILE} is damaged: it lacks {', '.join(missing)}; "
                                     f"{_INDEX_REMEDY}")
        self.size: int = int(self.index["size"])
        self.flow_lags: list[int] = [int(lag) for lag in self.index["flow_lags"]]
        self.videos: list[dict[str, Any]] = self.index["videos"]
        self._by_id = {meta["id"]: meta for meta in self.videos}

    def __len__(self) -> int:
        return len(self.videos)

    def splits(self) -> dict[str, int]:
        """Number of videos per split."""
        counts: dict[str, int] = {}
        for meta in self.videos:
            counts[meta["split"]] = counts.get(meta["split"], 0) + 1
        return counts

    def ids(self, split: str | None = None) -> list[str]:
        """Video ids, optionally of one split only."""
        return [meta["id"] for meta in self.videos if split is None or meta["split"] == split]

    def video(self, video_id: str, *, mmap: bool = True) -> VideoArrays:
        """The arrays of one video (memory-mapped unless ``mmap=False``)."""
        if video_id not in self._by_id:
            raise NotFoundError(f"{self.root} has no video {video_id!r}")
        folder = self.root / VIDEOS_DIR / video_id
        mode = "r" if mmap else None

        def load(name: str, required: bool = True) -> np.ndarray | None:
            path = folder / f"{name}.npy"
            if not path.exists():
                if required:
                    raise DatasetFormatError(f"{path} is missing; the dataset is damaged (re-run the writer)")
                return None
            return np.load(path, mmap_mode=mode)

        return VideoArrays(meta=self._by_id[video_id], frames=load("frames"), flow=load("flow"),
                           flow_starts=np.asarray(load("flow_starts")), masks=load("masks", False),
                           keypoints=load("keypoints", False), pokes=load("pokes", False))

    def scene(self, video_id: str) -> dict[str, Any] | None:
        """The synthetic scene description of a video, if stored."""
        path = self.root / VIDEOS_DIR / video_id / "scene.json"
        return json.loads(path.read_text()) if path.exists() else None
