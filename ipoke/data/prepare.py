"""``ipoke data prepare``: turn a folder of real videos into the prepared dataset format (``docs/data_format.md``).

For every video file or frame folder under ``videos_dir`` (found by a layout, :mod:`ipoke.data.layouts`):

1. frames are decoded (every ``frame_step``-th one), made square (centre crop, or squash as the original did) and
   resized to ``size`` x ``size``;
2. optical flow (:mod:`ipoke.data.flow`; DIS by default) is estimated from every ``flow_stride``-th frame ``s`` to
   ``s + lag`` for each lag, for the starts where all lags fit in the video; with ``flow_resolution`` larger than
   ``size`` the flow is computed on larger frames and resized, its vectors rescaled to pixels at ``size``;
3. optionally a GrabCut foreground mask per frame (``masks="grabcut"``, as the original iPOKE computed for iPER and
   TaiChi: 5 iterations from a rectangle over the central region), stored as ``masks.npy`` with 1 = foreground;
4. optionally keypoints from a pose estimator run offline (``keypoints_dir``: one ``(N_raw, K, 2)`` file per video,
   see :func:`find_keypoint_files`), kept for the kept frames and mapped like the frames
   (:func:`ipoke.data.video_io.resize_points`), stored as ``keypoints.npy``;
5. the video is written atomically with :class:`~ipoke.data.format.DatasetWriter`, and at the end the index.

Videos are split into train/test by a split file, by the layout (iPER ``train.txt``, Human3.6M subjects, TaiChi
folders), or by a seeded fraction of the videos (drawn again at the end over the videos that were prepared when bad
ones were left out, so a left-out video cannot take the only test slot). Work is spread over ``workers`` processes.
A re-run skips finished videos (after checking that it uses the same settings), redoes interrupted ones and only
relabels splits that changed; videos added to a finished dataset leave the random split of its videos alone (see
:func:`_kept_splits`). ::

    result = prepare_dataset("raw/plants", "data/plants", size=128, layout="plants", workers=2)
    print(result.summary())

``add_prepare_arguments`` and ``run_prepare`` give the command line (``ipoke data prepare``, or
``python -m ipoke.data.prepare``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import multiprocessing
import os
import re
import sys
import unicodedata
import zipfile
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ipoke.data.flow import (
    DIS_CHAIN_HOP,
    DIS_PAD_FACTOR,
    DIS_PRESETS,
    FLOW_METHODS,
    RAFT_WEIGHT_FILES,
    FlowEstimator,
    make_flow_estimator,
    resize_flow,
)
from ipoke.data.format import (
    PREPARE_SETTINGS_FILE,
    VIDEOS_DIR,
    DatasetFormatError,
    DatasetWriter,
    finished_meta_files,
    is_dataset,
    read_index,
    remove_if_nothing_finished,
)
from ipoke.data.layouts import LAYOUT_META_KEYS, LAYOUTS, LayoutError, VideoSource, discover_videos
from ipoke.data.video_io import (
    RESIZE_MODES,
    VIDEO_EXTENSIONS,
    VideoReadError,
    frame_files,
    gif_frame_repeats,
    iter_frames,
    resize_frame,
    resize_points,
    video_fps,
    video_sample_aspect,
)
from ipoke.utils import (
    available_cores,
    file_in_the_way,
    ignore_interrupts_in_worker,
    stop_process_pool,
    write_text_atomic,
    writes_exclusively,
)

logger = logging.getLogger(__name__)

MASK_MODES = ("none", "grabcut")
SPLIT_BY = ("video", "object")
UNLISTED = ("error", "train", "test", "skip")
SETTINGS_FILE = PREPARE_SETTINGS_FILE
# Settings that change the arrays of a video: a resumed run must use the same ones, or the dataset would mix them.
ARRAY_SETTINGS = ("size", "resize", "flow_method", "flow_options", "lags", "flow_stride", "frame_step",
                  "flow_resolution", "masks", "max_frames", "keypoints")
# Values of array settings that settings files written before the setting existed lack.
ARRAY_SETTING_DEFAULTS: dict[str, Any] = {"keypoints": False}
KEYPOINT_EXTENSIONS = (".npy", ".npz")
# Where the layouts that decide the split themselves take their test videos from (for the summary's note).
LAYOUT_TEST_VIDEOS = {"iper": "the videos that train.txt does not list", "h36m": "subjects S9 and S11",
                      "taichi": "the videos under test/"}
MIN_SIZE = 16  # frame side: OpenCV's DIS refuses images under 12 px, and such frames hold no motion worth learning
MAX_ID_BYTES = 200  # a video id names a folder (and its temporary sibling): file systems allow 255 bytes per name
# The end of the message when a bad video stops a run (on_error="raise") in an output folder that keeps videos.
STOPPED_NOTE = ("\n(stopped; the videos finished by this run and those in progress are kept, the index was not "
                "written; fix or --exclude the video and re-run the same command to resume, or pass --skip-bad to "
                "leave bad videos out)")


class PrepareError(ValueError):
    """Bad input for preparation (too short video, bad split file, mismatched resume, ...); the message says which."""


@dataclass
class PrepareResult:
    """What a :func:`prepare_dataset` run did.

    Attributes:
        out: The dataset folder.
        written: Ids of videos prepared by this run.
        skipped: Ids of videos that were already finished and were kept.
        relabelled: Ids of finished videos whose split changed (their ``meta.json`` was updated).
        moved_to_test: Those of ``relabelled`` that are now in test (a model trained on the folder before has seen
            them; the summary names them).
        failed: Video id -> error message, for videos skipped because of bad input (``on_error="skip"``).
        index: The written index (``ipoke_dataset.json``).
    """

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    moved_to_test: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One paragraph for the command line."""
        splits: dict[str, int] = {}
        for meta in self.index.get("videos", []):
            splits[meta["split"]] = splits.get(meta["split"], 0) + 1
        text = (f"{self.out}: {len(self.index.get('videos', []))} videos "
                f"({', '.join(f'{name} {count}' for name, count in sorted(splits.items()))}); this run prepared "
                f"{len(self.written)}, kept {len(self.skipped)} finished, relabelled {len(self.relabelled)}")
        if self.failed:
            text += f"; {len(self.failed)} FAILED and were left out:\n" + "\n".join(
                f"  {video_id}: {message}" for video_id, message in sorted(self.failed.items()))
        settings = self.index.get("settings", {})
        layout_test = LAYOUT_TEST_VIDEOS.get(settings.get("layout", "plain"))
        if (self.index.get("videos") and "test" not in splits and settings.get("split_file") is None
                and (layout_test or settings.get("test_fraction", 0) > 0)):
            why = (f"the {settings['layout']} layout puts in test {layout_test}" if layout_test else
                   "a random split sends videos to test only from 2 videos on, per object when objects are known")
            text += ("\nnote: no video is in the test split, which `ipoke fit` validates and `ipoke evaluate` tests "
                     f"on ({why}): add videos, or name test videos in a --split-file")
        elif self.index.get("videos") and "test" not in splits and settings.get("split_file") is not None:
            # A typo such as 'Test' in the split file went unnoticed until training found no test split.
            text += (f"\nnote: the split file names no video 'test' (its splits here: {', '.join(sorted(splits))}); "
                     "`ipoke fit` validates and `ipoke evaluate` tests on 'test' unless told otherwise (split names "
                     "are case-sensitive)")
        if self.moved_to_test:
            moved = sorted(self.moved_to_test)
            why = ("the split file puts them there" if settings.get("split_file") is not None else
                   "the random split was drawn again, since a split file was used before or --seed, --test-fraction, "
                   "--split-by or --layout changed; with the same ones, finished videos keep their split")
            text += (f"\nnote: {len(moved)} videos prepared before this run moved into the test split "
                     f"({', '.join(moved[:5])}{', ...' if len(moved) > 5 else ''}; {why}): a model trained on this "
                     "folder before has trained on them, so do not test it on this split")
        requested = settings.get("flow_resolution")
        capped = sorted((meta["flow_resolution"], meta["id"]) for meta in self.index.get("videos", [])
                        if requested and meta.get("flow_resolution", requested) < requested)
        if capped:
            text += (f"\nnote: --flow-resolution {requested} is above the raw frames' shorter side of {len(capped)} "
                     f"videos, so their flow was estimated at a smaller side (e.g. {capped[0][1]} at {capped[0][0]} "
                     "px; each video's meta.json 'flow_resolution' says which)")
        return text


def grabcut_foreground(frame: np.ndarray, *, iterations: int = 5) -> tuple[np.ndarray, bool]:
    """Foreground mask of one frame by GrabCut, initialised with a rectangle over the central region.

    As the original iPOKE: 5 iterations, rectangle ``x`` in [W/5, 4W/5); rows from a small margin (H/25, the
    original's poke-size border) to the bottom minus that margin, since people and plants usually span the height.

    Args:
        frame: uint8 RGB ``(H, W, 3)``.
        iterations: GrabCut iterations.

    Returns:
        ``(mask, ok)``: uint8 ``(H, W)`` with 1 = foreground (GrabCut's sure or probable foreground); ``ok`` is False
        when GrabCut failed (e.g. a uniform frame), in which case the initial rectangle is returned.
    """
    height, width = frame.shape[:2]
    margin = max(1, height // 25)
    left, right = width // 5, (4 * width) // 5
    rect = (left, margin, max(1, right - left), max(1, height - 2 * margin))
    labels = np.zeros((height, width), np.uint8)
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    # GrabCut initialises its colour models by k-means++, which draws from OpenCV's global random generator: unseeded,
    # a mask depended on what ran before in the process, so prepared masks changed with --workers, the order of the
    # videos over the workers and resumes (up to 120 of 14k pixels per video). Seeded here, a mask depends on its frame.
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(np.ascontiguousarray(frame), labels, rect, background_model, foreground_model, iterations,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        fallback = np.zeros((height, width), np.uint8)
        fallback[rect[1]:rect[1] + rect[3], rect[0]:rect[0] + rect[2]] = 1
        return fallback, False
    return ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8), True


def prepare_video_arrays(source: str | os.PathLike, *, estimator: FlowEstimator, size: int = 256,
                         resize: str = "crop", lags: Sequence[int] = (10, 20), flow_stride: int = 1,
                         frame_step: int = 1, flow_resolution: int | None = None, masks: str = "none",
                         max_frames: int | None = None,
                         keypoints: np.ndarray | str | os.PathLike | None = None) -> dict[str, Any]:
    """Frames, flow, masks and keypoints of one video, streaming (only ``max(lags) + 1`` frames at flow resolution
    are held).

    Args:
        source: Video file or frame folder.
        estimator: Flow estimator (:func:`ipoke.data.flow.make_flow_estimator`).
        size: Output side S.
        resize: ``"crop"`` or ``"squash"`` (see :func:`ipoke.data.video_io.resize_frame`).
        lags: Flow lags in kept frames (after ``frame_step``).
        flow_stride: Flow from every ``flow_stride``-th frame.
        frame_step: Keep every ``frame_step``-th raw frame.
        flow_resolution: Side at which flow is computed (None = S; never above the raw frames' shorter side); flow is
            then resized to S, vectors rescaled.
        masks: ``"none"`` or ``"grabcut"``.
        max_frames: Use at most this many (kept) frames.
        keypoints: Optional keypoints of the raw video: ``(N_raw, K, 2)`` ``(x, y)`` in raw pixels, one row per raw
            frame (before ``frame_step``), NaN where unknown; or a file for :func:`load_keypoints`. For a GIF, one
            row per stored frame also works: rows are then repeated like the frames a GIF holds longer
            (:func:`ipoke.data.video_io.gif_frame_repeats`). The rows of the kept frames are mapped to size S like
            the frames (:func:`ipoke.data.video_io.resize_points`). A video file is then decoded to its end even with
            ``max_frames``, to count its frames.

    Returns:
        Dict with ``frames`` uint8 ``(N, S, S, 3)``, ``flow`` float16 ``(F, L, 2, S, S)``, ``flow_starts`` int32
        ``(F,)``, ``masks`` uint8 ``(N, S, S)`` or None, ``keypoints`` float32 ``(N, K, 2)`` or None, ``raw_size``
        ``[H, W]``, ``flow_resolution`` (the side flow was estimated at: ``flow_resolution`` capped at the raw
        frames' shorter side, at least S) and ``grabcut_failures``.

    Raises:
        VideoReadError: If the source cannot be read.
        PrepareError: If it has fewer than ``max(lags) + 1`` frames, or the keypoints are malformed or do not have
            one row per raw frame.
    """
    points, points_label = None, "keypoints"
    if keypoints is not None and not isinstance(keypoints, np.ndarray):
        points, points_label = load_keypoints(keypoints), str(keypoints)
    elif keypoints is not None:
        points = _checked_keypoints(keypoints, points_label)
    raw_count = [0]
    source_path = Path(source)
    if points is None:
        kept_frames = iter_frames(source, frame_step=frame_step, max_frames=max_frames)
    elif source_path.is_dir():
        # A frame folder's frames are its images: count them before any work.
        raw_count[0] = len(frame_files(source_path))
        _check_keypoint_rows(points, raw_count[0], points_label, source)
        kept_frames = iter_frames(source, frame_step=frame_step, max_frames=max_frames)
    else:
        # A video file is decoded frame by frame anyway (codecs need every frame); count them on the way.
        kept_frames = _kept_and_counted(iter_frames(source), frame_step, max_frames, raw_count)
    lags = [int(lag) for lag in lags]
    max_lag = max(lags)
    flow_side = flow_resolution or size
    frames, flows = _GrowingStack(), _GrowingStack()
    window: deque[np.ndarray] = deque(maxlen=max_lag + 1)  # frames i - max_lag .. i at flow resolution
    starts: list[int] = []
    raw_size: list[int] = []
    for index, raw in enumerate(kept_frames):
        if not raw_size:
            raw_size = list(raw.shape[:2])
            # Estimating flow above the raw resolution only enlarges the motion without adding detail.
            flow_side = max(size, min(flow_side, *raw_size))
        frame = resize_frame(raw, size, mode=resize)
        frames.append(frame)
        window.append(frame if flow_side == size else resize_frame(raw, flow_side, mode=resize))
        start = index - max_lag
        # Flow is computed once the furthest lag's frame has arrived, so every stored start has all lags.
        if start >= 0 and start % flow_stride == 0:
            pairs = estimator.estimate_lags(window, lags)
            if flow_side != size:
                pairs = np.stack([resize_flow(pair, size) for pair in pairs])
            flows.append(pairs.astype(np.float16))
            starts.append(start)
    if len(frames) < max_lag + 1:
        step_note = f" (one frame in {frame_step} kept)" if frame_step > 1 else ""
        raise PrepareError(f"{source}: has {len(frames)} frames{step_note}, too few for flow lags {lags}: at least "
                           f"{max_lag + 1} are needed (use smaller --lags or --frame-step, or leave the video out)")
    keypoint_array = None
    if points is not None:
        points = _check_keypoint_rows(points, raw_count[0], points_label, source)
        kept_points = points[::frame_step][:len(frames)]
        aspect = video_sample_aspect(source)
        if aspect != 1:  # frames were stretched to their display width; the keypoints are in the coded pixels
            kept_points = kept_points.astype(np.float64, copy=True)
            kept_points[..., 0] = (kept_points[..., 0] + 0.5) * raw_size[1] / round(raw_size[1] / aspect) - 0.5
        keypoint_array = resize_points(kept_points, raw_size, size, mode=resize)
    frame_array, flow_array = frames.stack(), flows.stack()
    mask_array, failures = None, 0
    if masks == "grabcut":
        mask_list = []
        for frame in frame_array:
            mask, ok = grabcut_foreground(frame)
            mask_list.append(mask)
            failures += not ok
        mask_array = np.stack(mask_list)
    return {"frames": frame_array, "flow": flow_array, "flow_starts": np.asarray(starts, np.int32),
            "masks": mask_array, "keypoints": keypoint_array, "raw_size": raw_size, "flow_resolution": flow_side,
            "grabcut_failures": failures}


class _GrowingStack:
    """``np.stack`` of arrays that arrive one at a time, at about the memory of the result.

    Arrays are gathered into chunks of 16 MiB or more as they come, and the chunks are copied into the result one by
    one and freed. (A list stacked at the end needed the list and its copy at once: twice the frames and flow of a
    long video, since the allocator does not give the many small freed arrays back.)
    """

    CHUNK_BYTES = 16 * 2**20

    def __init__(self) -> None:
        self._pending: list[np.ndarray] = []
        self._chunks: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(chunk) for chunk in self._chunks) + len(self._pending)

    def append(self, item: np.ndarray) -> None:
        self._pending.append(item)
        if len(self._pending) * item.nbytes >= self.CHUNK_BYTES:
            self._chunks.append(np.stack(self._pending))
            self._pending = []

    def stack(self) -> np.ndarray:
        if self._pending:
            self._chunks.append(np.stack(self._pending))
            self._pending = []
        first = self._chunks[0]
        stacked = np.empty((len(self), *first.shape[1:]), first.dtype)
        filled = 0
        while self._chunks:
            chunk = self._chunks.pop(0)
            stacked[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        return stacked


def _kept_and_counted(frames: Iterable[np.ndarray], frame_step: int, max_frames: int | None,
                      count: list[int]) -> Iterable[np.ndarray]:
    """The kept frames of all raw ``frames`` (every ``frame_step``-th, at most ``max_frames``); reads to the end and
    leaves the number of raw frames in ``count[0]``."""
    kept = 0
    for index, frame in enumerate(frames):
        count[0] = index + 1
        if index % frame_step == 0 and (max_frames is None or kept < max_frames):
            kept += 1
            yield frame


def _checked_keypoints(array: np.ndarray, label: str) -> np.ndarray:
    if array.dtype.kind not in "iuf":
        raise PrepareError(f"{label}: keypoints must be numbers (float, NaN for unknown joints), got dtype "
                           f"{array.dtype}")
    if array.ndim != 3 or array.shape[2] != 2 or array.shape[1] < 1:
        raise PrepareError(f"{label}: keypoints must have shape (N_raw, K, 2): (x, y) in raw pixels for K >= 1 joints "
                           f"in each of the video's N_raw frames, got shape {array.shape}")
    return array


def _check_keypoint_rows(points: np.ndarray, raw_count: int, label: str, source: str | os.PathLike) -> np.ndarray:
    """``points`` with one row per raw frame (``raw_count`` of them), or a PrepareError naming both counts.

    A GIF's frame shown k times as long is read as k frames (:func:`ipoke.data.video_io.gif_frame_repeats`), but a
    pose estimator sees the frames the file stores (OpenCV, Pillow and imageio read those): keypoints with one row per
    stored frame are repeated like the frames.
    """
    if len(points) == raw_count:
        return points
    source_path = Path(source)
    repeats = (gif_frame_repeats(source_path) if source_path.suffix.lower() == ".gif" and source_path.is_file()
               else None)
    if repeats is not None and len(repeats) != raw_count:
        if len(points) == len(repeats) and sum(repeats) == raw_count:
            return np.repeat(points, repeats, axis=0)
        held = [(index, count) for index, count in enumerate(repeats) if count > 1]
        held_text = ", ".join(f"frame {index} is held {count}x" for index, count in held[:3])
        if len(held) > 3:
            held_text += f", and {len(held) - 3} more frames"
        raise PrepareError(f"{label} has {len(points)} rows but {source} is a GIF with {len(repeats)} stored frames, "
                           f"read as {raw_count} time steps ({held_text}, counting stored frames from 0); it needs "
                           "one row per stored frame or per time step (before --frame-step); were the keypoints "
                           "estimated on another copy or a subsampled version of the video?")
    raise PrepareError(f"{label} has {len(points)} rows but video {source} has {raw_count} frames; it needs one "
                       "row per frame of the raw video (before --frame-step); were the keypoints estimated on "
                       "another copy or a subsampled version of the video?")


def load_keypoints(path: str | os.PathLike) -> np.ndarray:
    """Read and check one keypoint file: ``.npy`` holding ``(N_raw, K, 2)`` numbers, or ``.npz`` with that array under
    the key ``keypoints``.

    Returns:
        The array as float32 (unknown joints stay NaN).

    Raises:
        PrepareError: If the file cannot be read or the array has another shape or is not numeric.
    """
    path = Path(path)
    files: list[str] = []
    array = None
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                files = sorted(archive.files)
                if "keypoints" in files:
                    array = archive["keypoints"]
        else:
            array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise PrepareError(f"cannot read keypoint file {path}: {error} (write it with numpy.save: an array of float "
                           "(x, y) pixel coordinates of shape (N_raw, K, 2))") from error
    if array is not None and not isinstance(array, np.ndarray):
        array.close()
        raise PrepareError(f"{path} is an .npz archive with a .npy name; rename it to {path.with_suffix('.npz').name}")
    if array is None:
        raise PrepareError(f"{path}: an .npz keypoint file needs an array named 'keypoints', it has {files} (save it "
                           "with numpy.savez(path, keypoints=array), or as .npy with numpy.save)")
    return _checked_keypoints(array, str(path)).astype(np.float32)


def read_split_file(path: str | os.PathLike) -> dict[str, str]:
    """Read a split file: one video per line, ``<name> <split>`` (whitespace, tab or comma between them).

    ``<name>`` is a video id, a path relative to the videos folder, or such a path without its extension, or (when
    only one video has it) the bare file name with or without extension; it may contain spaces (the split is the
    last field). Empty lines and lines starting with ``#`` are ignored.

    Returns:
        Name -> split.

    Raises:
        PrepareError: If the file is missing, a line has no split, or a name is listed twice with different splits.
    """
    path = Path(path)
    if not path.exists():  # exists(), not is_file(): a pipe (`--split-file <(grep ...)`) is read as well
        raise PrepareError(f"split file {path} does not exist")
    if path.is_dir():
        raise PrepareError(f"split file {path} is a folder; give a text file of '<name> <split>' lines")
    entries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # The split is the last field; the name is everything before the separator (it may hold spaces and commas).
        match = re.match(r"^(.*?)[\s,]+([^\s,]+)$", line)
        if match is None:
            raise PrepareError(f"{path}:{number}: expected '<video name> <split>', got {line!r}")
        # NFC: a name typed on Linux (composed "é") and the same name copied from macOS or a zip (decomposed) match.
        name, split = unicodedata.normalize("NFC", match.group(1).strip().strip("/")), match.group(2)
        if name in entries and entries[name] != split:
            raise PrepareError(f"{path}:{number}: {name!r} is in {split!r} here but in {entries[name]!r} on line "
                               f"{lines[name]}; list each video once")
        entries[name], lines[name] = split, number
    if not entries:
        raise PrepareError(f"split file {path} lists no videos")
    return entries


def _names_of(source: VideoSource) -> list[str]:
    """A video's names in a split file: exact (id, path, path without extension), then loose (file name, stem)."""
    relative = unicodedata.normalize("NFC", source.relative_path)  # as read_split_file's names
    return [source.video_id, relative, os.path.splitext(relative)[0], Path(relative).name,
            os.path.splitext(Path(relative).name)[0]]


def keypoint_file_candidates(source: VideoSource, keypoints_dir: str | os.PathLike) -> list[Path]:
    """Where the keypoints of ``source`` may be: ``<dir>/<video id>.npy`` or the raw tree mirrored,
    ``<dir>/<relative path without extension>.npy`` (each also as ``.npz``); duplicates removed."""
    keypoints_dir = Path(keypoints_dir)
    relative = source.relative_path
    if Path(relative).suffix.lower() in VIDEO_EXTENSIONS:  # also a frame folder named like a file (TaiChi's x.mp4/)
        relative = relative[:-len(Path(relative).suffix)]
    stems = [source.video_id, relative]
    candidates = [keypoints_dir / f"{stem}{extension}" for stem in stems for extension in KEYPOINT_EXTENSIONS]
    return list(dict.fromkeys(candidates))


def _keep_finished_ids(sources: list[VideoSource], out: Path) -> list[VideoSource]:
    """``sources``, each with the id under which ``out`` already holds it (its ``meta.json`` names the same source
    file), so that a resumed run never prepares a video a second time under another id.

    Ids can change between versions: names with non-ASCII characters, once all ``_`` (and colliding), got a hash. A
    run resumed across that change prepared those videos again, the copy possibly in the other split.
    """
    import dataclasses

    finished: dict[str, str] = {}
    for meta_file in finished_meta_files(out):
        try:
            source_file = json.loads(meta_file.read_text()).get("source_file")
        except (OSError, ValueError, AttributeError):
            continue  # a damaged entry is reported where the folder is checked
        if isinstance(source_file, str):
            finished[source_file] = meta_file.parent.name
    return [dataclasses.replace(source, video_id=finished[source.relative_path])
            if finished.get(source.relative_path, source.video_id) != source.video_id else source
            for source in sources]


def find_keypoint_files(sources: Sequence[VideoSource], keypoints_dir: str | os.PathLike, *,
                        all_sources: Sequence[VideoSource] | None = None) -> dict[str, Path]:
    """The keypoint file of every video, with their shapes checked (see :func:`keypoint_file_candidates` for the
    names).

    Files that belong to no video of ``all_sources`` (default ``sources``; pass every discovered video so that
    excluded ones do not count) are ignored with one warning.

    Returns:
        Video id -> keypoint file.

    Raises:
        PrepareError: If the folder does not exist, a video has no file or two, or a file is unreadable or has
            another shape than ``(N_raw, K, 2)``.
    """
    keypoints_dir = Path(keypoints_dir)
    if not keypoints_dir.is_dir():
        raise PrepareError(f"keypoints folder {keypoints_dir} does not exist or is not a folder; it should hold "
                           "<video id>.npy per video, arrays (N_raw, K, 2) of (x, y) raw pixel coordinates")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for source in sources:
        existing = [path for path in keypoint_file_candidates(source, keypoints_dir) if path.is_file()]
        if not existing:
            missing.append(f"{source.relative_path} -> {keypoints_dir / source.video_id}.npy")
        elif len(existing) > 1:
            raise PrepareError(f"video {source.relative_path} has several keypoint files: "
                               f"{[str(path) for path in existing]}; keep one")
        else:
            found[source.video_id] = existing[0]
    if missing:
        raise PrepareError(
            f"{len(missing)} of the {len(sources)} videos have no keypoint file in {keypoints_dir}, e.g. "
            f"{missing[:5]}; write one per video (<video id>.npy, or the videos' tree mirrored: <relative path "
            "without extension>.npy), or --exclude those videos")
    for path in found.values():
        load_keypoints(path)  # shape and type now; the row count needs the video and is checked when it is read
    known = {candidate.resolve() for source in (all_sources if all_sources is not None else sources)
             for candidate in keypoint_file_candidates(source, keypoints_dir)}
    unused = sorted(path.relative_to(keypoints_dir).as_posix() for path in keypoints_dir.rglob("*")
                    if path.suffix.lower() in KEYPOINT_EXTENSIONS and path.is_file()
                    and not any(part.startswith(".") for part in path.relative_to(keypoints_dir).parts)
                    and path.resolve() not in known)
    if unused:
        logger.warning("%d keypoint files in %s match no video and are ignored, e.g. %s (a file is named after its "
                       "video: <video id>.npy or <relative path without extension>.npy)", len(unused), keypoints_dir,
                       unused[:5])
    return found


def _fraction_count(count: int, fraction: float) -> int:
    """How many of ``count`` items go to test: rounded, at least one and at most ``count - 1`` when ``count >= 2``."""
    if fraction <= 0 or count < 2:
        return 0
    return min(count - 1, max(1, round(fraction * count)))


def assign_splits(sources: Sequence[VideoSource], *, split_file: str | os.PathLike | None = None,
                  test_fraction: float = 0.2, seed: int = 0, split_by: str = "video",
                  unlisted: str = "error", kept: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Decide the split of every video.

    Precedence: a split file, then the layout's split, then a seeded random split of the rest:

    * ``split_by="video"``: when the videos have object ids (plants, iPER actors, ...), each object with at least
      two videos sends ``round(test_fraction * n)`` of them (at least one, never all) to test, so every object is
      also in training; without object ids, ``round(test_fraction * N)`` of all videos go to test.
    * ``split_by="object"``: that fraction of the objects goes to test with all their videos (stronger test of
      generalisation to unseen objects).

    ``kept`` fixes the random split of some videos (those an earlier run prepared, so that adding videos never moves
    a video a model was trained on into test): the others are drawn so that each object (or all videos, or the
    objects) reaches the test count above counting the kept videos; a new video of an object that ``split_by="object"``
    already placed joins that object's split.

    Args:
        sources: The videos.
        split_file: Optional file for :func:`read_split_file`.
        test_fraction: Fraction of videos (or objects) for test in a random split, in [0, 1).
        seed: Seed of the random split.
        split_by: ``"video"`` or ``"object"``.
        unlisted: For videos the split file does not name: ``"error"``, ``"train"``, ``"test"`` or ``"skip"``
            (left out; their split is None).
        kept: Video id -> split to keep, for videos of the random split (ignored with a split file and for videos
            whose layout gives their split).

    Returns:
        Video id -> split (None for videos to leave out).
    """
    if not 0 <= test_fraction < 1:
        raise PrepareError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if split_by not in SPLIT_BY:
        raise PrepareError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if unlisted not in UNLISTED:
        raise PrepareError(f"unlisted must be one of {UNLISTED}, got {unlisted!r}")
    splits: dict[str, str | None] = {}
    if split_file is not None:
        entries = read_split_file(split_file)
        used: dict[str, list[str]] = {}
        missing = []
        # A video's exact names (id, path, path without extension) always count; its file name (with or without
        # extension) counts unless it is another video's exact name: `clip.mp4 train` names the top-level clip.mp4,
        # not also x/clip.mp4.
        exact_names = {name for source in sources for name in _names_of(source)[:3]}
        for source in sources:
            # Every line that names this video counts: a video listed as "door_04.mp4 test" and "door_04 train" went
            # to train silently, and the other line was reported "not found".
            own = _names_of(source)[:3]
            names = list(dict.fromkeys(name for name in _names_of(source)
                                       if name in entries and (name in own or name not in exact_names)))
            if not names:
                if unlisted == "error":
                    missing.append(source.relative_path)
                splits[source.video_id] = None if unlisted in ("skip", "error") else unlisted
                continue
            listed = {entries[name] for name in names}
            if len(listed) > 1:
                raise PrepareError(f"split file {split_file} lists the video {source.relative_path!r} more than once "
                                   "with different splits (" + ", ".join(f"{name!r}: {entries[name]!r}"
                                                                        for name in names) + "); list each video once")
            for name in names:
                used.setdefault(name, []).append(source.relative_path)
            splits[source.video_id] = entries[names[0]]
        ambiguous = {name: paths for name, paths in used.items() if len(paths) > 1}
        if ambiguous:
            name, paths = next(iter(ambiguous.items()))
            raise PrepareError(f"split file {split_file}: {name!r} matches {len(paths)} videos ({', '.join(paths[:4])}"
                               f"); name each by its path below the videos folder instead (e.g. {paths[0]!r})")
        if missing:
            raise PrepareError(f"split file {split_file} does not name {len(missing)} of the videos, e.g. "
                               f"{missing[:5]}; add them, or pass --unlisted train|test|skip")
        unknown = sorted(set(entries) - set(used))
        if unknown and not used:
            raise PrepareError(f"no name in split file {split_file} matches a video (first entries: "
                               f"{sorted(entries)[:3]}; videos are named like {_names_of(sources[0])[:2]})")
        if unknown:
            logger.warning("split file %s names %d videos that were not found, e.g. %s", split_file, len(unknown),
                           unknown[:5])
        return splits
    rng = np.random.default_rng(seed)
    pending = [source for source in sorted(sources, key=lambda s: s.video_id)]
    for source in pending:
        splits[source.video_id] = source.split
    pending = [source for source in pending if source.split is None]
    if not pending:
        return splits
    kept = {source.video_id: kept[source.video_id] for source in pending if kept and source.video_id in kept}
    groups: dict[str, list[str]] = {}
    for source in pending:
        groups.setdefault(source.object_id or source.video_id, []).append(source.video_id)
    test: set[str] = set()
    if split_by == "object":
        names = sorted(groups)
        # An object with kept videos keeps its split (the most common among them), for its new videos too.
        placed = {name: Counter(kept[vid] for vid in groups[name] if vid in kept).most_common(1)[0][0]
                  for name in names if any(vid in kept for vid in groups[name])}
        new_names = [name for name in names if name not in placed]
        needed = _fraction_count(len(names), test_fraction) - sum(split == "test" for split in placed.values())
        for index in rng.permutation(len(new_names))[:max(0, needed)]:
            test.update(groups[new_names[index]])
        test.update(vid for name, split in placed.items() if split == "test" for vid in groups[name])
    else:
        # Per object when objects are known (every object also in train), else over all videos; kept test videos
        # count towards the test share of their unit. Without kept videos this is the plain seeded draw.
        units = ([groups[name] for name in sorted(groups)] if any(source.object_id for source in pending)
                 else [[source.video_id for source in pending]])
        for members in units:
            new = [vid for vid in members if vid not in kept]
            needed = _fraction_count(len(members), test_fraction) - sum(kept.get(vid) == "test" for vid in members)
            test.update(new[i] for i in rng.permutation(len(new))[:max(0, needed)])
    for source in pending:
        splits[source.video_id] = kept.get(source.video_id, "test" if source.video_id in test else "train")
    return splits


def _kept_splits(out: Path, sources: Sequence[VideoSource], *, split_file: str | os.PathLike | None, layout: str,
                 test_fraction: float, split_by: str, seed: int) -> dict[str, str]:
    """The stored splits of the videos ``out`` already holds, when this run's random split must keep them.

    Adding videos to the raw folder and running the same command again redrew the seeded split over all videos, so
    finished videos changed split: a video a model had been trained on went to test. They keep their split when the
    finished dataset (its index) was made by the same random split: no split file then or now, and the same layout,
    test fraction, split unit and seed. Otherwise (other split options, a split file before, or no index yet: an
    unfinished first run, which nobody can have trained on) the split is drawn afresh over all videos.
    """
    if split_file is not None:
        return {}
    try:
        previous = read_index(out).get("settings") or {}
    except (OSError, DatasetFormatError):  # no index yet, or a damaged one (reported where the folder is checked)
        return {}
    current = {"split_file": None, "layout": layout, "test_fraction": test_fraction, "split_by": split_by,
               "seed": seed}
    defaults = {"split_file": None, "layout": "plain", "test_fraction": 0.2, "split_by": "video", "seed": 0}
    if not isinstance(previous, dict) or any(previous.get(key, defaults[key]) != value
                                             for key, value in current.items()):
        return {}
    drawn = {source.video_id for source in sources if source.split is None}
    kept: dict[str, str] = {}
    for meta_file in finished_meta_files(out):
        if meta_file.parent.name in drawn:
            try:
                split = json.loads(meta_file.read_text()).get("split")
            except (OSError, ValueError, AttributeError):
                continue  # a damaged entry is reported where the folder is checked
            if isinstance(split, str):
                kept[meta_file.parent.name] = split
    return kept


# Per-process state of the workers: the writer (unpickled without running its constructor, so a worker never
# deletes another worker's unfinished .tmp folder), the options and a flow estimator made on first use.
_STATE: dict[str, Any] = {}


def _init_worker(writer: DatasetWriter, options: dict[str, Any], threads: int | None,
                 ignore_interrupt: bool = False) -> None:
    if ignore_interrupt:  # a pool worker: the main process handles Ctrl-C (see ignore_interrupts_in_worker)
        ignore_interrupts_in_worker()
    _STATE.clear()
    _STATE.update(writer=writer, options=options, estimator=None)
    if threads is not None:
        cv2.setNumThreads(threads)
        if options["flow_method"] == "raft":
            import torch

            torch.set_num_threads(threads)


def _prepare_one(task: tuple[VideoSource, str, Path | None]) -> tuple[str, str | None]:
    """Prepare and write one video (``(source, split, keypoint file or None)``); returns ``(video_id, error message or
    None)`` for bad input."""
    source, split, keypoint_file = task
    options = _STATE["options"]
    if _STATE["estimator"] is None:
        _STATE["estimator"] = make_flow_estimator(options["flow_method"], **options["flow_options"])
    try:
        arrays = prepare_video_arrays(
            source.path, estimator=_STATE["estimator"], size=options["size"], resize=options["resize"],
            lags=options["lags"], flow_stride=options["flow_stride"], frame_step=options["frame_step"],
            flow_resolution=options["flow_resolution"], masks=options["masks"], max_frames=options["max_frames"],
            keypoints=keypoint_file)
        fps = video_fps(source.path)
    except (VideoReadError, PrepareError) as error:
        return source.video_id, str(error)
    except cv2.error as error:  # e.g. flow estimation on frames that OpenCV refuses
        return source.video_id, f"{source.path}: OpenCV failed on this video: {error}".strip()
    extra = dict(source.meta)
    if options["masks"] == "grabcut":
        extra["grabcut_failures"] = arrays["grabcut_failures"]
    _STATE["writer"].write_video(
        source.video_id, split=split, frames=arrays["frames"], flow=arrays["flow"],
        flow_starts=arrays["flow_starts"], masks=arrays["masks"], keypoints=arrays["keypoints"],
        object_id=source.object_id, source_file=source.relative_path, raw_size=arrays["raw_size"],
        flow_resolution=arrays["flow_resolution"], fps=fps / options["frame_step"] if fps else None, **extra)
    return source.video_id, None


def _update_meta(writer: DatasetWriter, source: VideoSource, split: str) -> str | None:
    """Bring a finished video's ``meta.json`` up to date with this run: its split, and what the layout says about it
    (object id, source file, the layout's fields: a resume may use another --layout or split file, which change
    neither frames nor flow). Returns the split it had."""
    meta_file = writer.video_dir(source.video_id) / "meta.json"
    meta = json.loads(meta_file.read_text())
    updated = {key: value for key, value in meta.items() if key not in LAYOUT_META_KEYS}
    updated.update(source.meta, split=split, object_id=source.object_id, source_file=source.relative_path)
    if updated != meta:
        write_text_atomic(meta_file, json.dumps(updated))
    return meta.get("split")


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    marker = out / SETTINGS_FILE
    if marker.is_file():
        previous = json.loads(marker.read_text())
        previous = {key: previous.get(key, ARRAY_SETTING_DEFAULTS.get(key)) for key in ARRAY_SETTINGS}
        if previous.get("flow_method") == "dis" and isinstance(previous.get("flow_options"), dict):
            # Written before DIS padded its frames (session 12): that flow was estimated unpadded; before it chained
            # the flows of the frames in between (session 15): not chained. (Python calls without flow_options
            # recorded {}: the preset was the default, medium.)
            previous["flow_options"] = {"preset": "medium", "pad_factor": 1, "chain_hop": 0,
                                        **previous["flow_options"]}
        different = {key: (previous[key], settings[key]) for key in ARRAY_SETTINGS if previous[key] != settings[key]}
        if different:
            details = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in different.items())
            raise PrepareError(f"{out} was prepared with other settings ({details}); resuming would mix videos "
                               "prepared differently. Use the same options, or another --out folder")
    elif is_dataset(out):
        raise PrepareError(f"{out} holds a dataset that `ipoke data prepare` did not make (no {SETTINGS_FILE}); "
                           "choose another --out folder")
    elif (out / VIDEOS_DIR).is_dir():
        raise PrepareError(f"{out} is not empty and has a {VIDEOS_DIR}/ folder, but no {SETTINGS_FILE}: it is not a "
                           "run of `ipoke data prepare`; choose a new or empty --out folder")


@writes_exclusively("out", "ipoke data prepare")
def prepare_dataset(videos_dir: str | os.PathLike, out: str | os.PathLike, *, size: int = 256,
                    flow_method: str = "dis", lags: Sequence[int] = (10, 20), flow_stride: int = 1,
                    frame_step: int = 1, masks: str = "none", split_file: str | os.PathLike | None = None,
                    test_fraction: float = 0.2, layout: str = "plain", workers: int = 1, seed: int = 0,
                    resize: str = "crop", flow_resolution: int | None = None, split_by: str = "video",
                    unlisted: str = "error", exclude: Iterable[str] = (), max_frames: int | None = None,
                    flow_options: dict[str, Any] | None = None, train_list: str | os.PathLike | None = None,
                    keypoints_dir: str | os.PathLike | None = None, on_error: str = "raise",
                    progress: bool = True) -> PrepareResult:
    """Prepare a folder of real videos as an ipoke dataset (see the module docstring for the steps).

    Args:
        videos_dir: Raw folder of video files and/or frame folders, or a single video file (``plain``/``plants``).
        out: Output dataset folder: new, empty, or an earlier (possibly interrupted) run with the same settings.
        size: Frame side S of the dataset.
        flow_method: ``"dis"`` (default), ``"farneback"`` or ``"raft"``.
        lags: Flow lags, counted in kept frames (after ``frame_step``).
        flow_stride: Flow from every ``flow_stride``-th frame (1 = every frame is a possible clip start).
        frame_step: Keep every ``frame_step``-th raw frame (the original's ``frames_discr``).
        masks: ``"none"`` or ``"grabcut"`` (foreground masks per frame; slow: a GrabCut per frame).
        split_file: Optional ``<name> <split>`` file, see :func:`read_split_file`.
        test_fraction: Fraction for test in a random split (see :func:`assign_splits`).
        layout: Raw layout, one of :data:`ipoke.data.layouts.LAYOUTS`.
        workers: Processes preparing videos in parallel.
        seed: Seed of the random split.
        resize: ``"crop"`` (centre square, default) or ``"squash"`` (the original's aspect-ratio change).
        flow_resolution: Side at which flow is estimated (None = ``size``; capped at the raw frames' shorter side);
            larger can help small motions.
        split_by: ``"video"`` or ``"object"`` (random split only).
        unlisted: What to do with videos a split file does not name (see :func:`assign_splits`).
        exclude: Glob patterns of video ids or relative paths to leave out.
        max_frames: Use at most this many frames per video.
        flow_options: Estimator options (``preset``, ``pad_factor`` for DIS; ``raft_model``, ``weights``, ``device``,
            ``iterations`` for RAFT).
        train_list: iPER layout only: ``train.txt`` when it is not in ``videos_dir``.
        keypoints_dir: Optional folder of keypoints from a pose estimator, one file per video (every video needs
            one): ``<video id>.npy``, or the raw tree mirrored, ``<relative path without extension>.npy`` (see
            :func:`find_keypoint_files`); float ``(N_raw, K, 2)``, ``(x, y)`` in raw pixels (pixel centres at
            integers), one row per raw frame before ``frame_step``, NaN for unknown joints; ``.npz`` with a
            ``keypoints`` array works too. The kept rows are mapped like the frames and stored as ``keypoints.npy``
            (points outside a crop become NaN); files that match no video are ignored with a warning.
        on_error: ``"raise"`` stops at the first bad video (finished videos stay, the index is not written, so the
            output is not mistaken for a complete dataset); ``"skip"`` leaves bad videos out, writes the index and
            lists them in the result and in the index's settings (when every video fails it raises
            ``PrepareError`` instead and writes no index).
        progress: Show a tqdm progress bar.

    Returns:
        A :class:`PrepareResult`.

    Raises:
        LayoutError: If ``videos_dir`` is missing, holds no videos or does not fit ``layout``.
        PrepareError: For bad options, a bad split file, missing or malformed keypoint files, a resume with other
            settings, or (``on_error="raise"``) an unreadable or too short video or keypoints whose row count is not
            the video's frame count (``on_error="skip"``: when every video fails); the message names the file.
        DatasetFormatError: If ``out`` exists and is not empty and not a dataset.
        WeightsNotFoundError: For ``flow_method="raft"`` without its weights on disk.
    """
    out = Path(out)
    lags = sorted({int(lag) for lag in lags})
    flow_options = dict(flow_options or {})
    if flow_method == "dis":  # recorded in full, so that a resume compares like with like
        flow_options = {"preset": "medium", "pad_factor": DIS_PAD_FACTOR, "chain_hop": DIS_CHAIN_HOP, **flow_options}
    checks = [
        (size >= MIN_SIZE, f"size must be at least {MIN_SIZE} (optical flow needs frames of that side), got {size}"),
        (bool(lags) and min(lags) >= 1, f"lags must be positive integers, got {lags}"),
        (flow_stride >= 1, f"flow_stride must be >= 1, got {flow_stride}"),
        (frame_step >= 1, f"frame_step must be >= 1, got {frame_step}"),
        (workers >= 1, f"workers must be >= 1, got {workers}"),
        (flow_method in FLOW_METHODS, f"flow method must be one of {FLOW_METHODS}, got {flow_method!r}"),
        (masks in MASK_MODES, f"masks must be one of {MASK_MODES}, got {masks!r}"),
        (resize in RESIZE_MODES, f"resize must be one of {RESIZE_MODES}, got {resize!r}"),
        (on_error in ("raise", "skip"), f"on_error must be 'raise' or 'skip', got {on_error!r}"),
        (flow_resolution is None or flow_resolution >= MIN_SIZE,
         f"flow_resolution must be >= {MIN_SIZE}, got {flow_resolution}"),
        (seed >= 0, f"seed must be >= 0, got {seed}"),
        (max_frames is None or max_frames >= 2, f"max_frames must be >= 2, got {max_frames}"),
    ]
    for ok, message in checks:
        if not ok:
            raise PrepareError(message)
    if max_frames is not None and max_frames < max(lags) + 1:
        raise PrepareError(f"max_frames {max_frames} leaves too few frames for lags {lags}")
    if flow_resolution == size:
        flow_resolution = None
    blocking = file_in_the_way(out)
    if blocking is not None:
        raise PrepareError(f"--out {out}: {blocking} exists and is not a folder; choose another --out")

    # Everything that can fail on the input is checked before the output folder is touched.
    if train_list is not None and layout != "iper":  # it was ignored: a random split instead of the official one
        raise PrepareError(f"--train-list is iPER's official split and needs --layout iper (the layout is "
                           f"{layout!r}); for other data give the split with --split-file")
    layout_options = {"train_list": train_list} if layout == "iper" and train_list is not None else {}
    sources = _keep_finished_ids(discover_videos(videos_dir, layout, **layout_options), out)
    discovered = list(sources)
    patterns = list(exclude)
    sources = [source for source in sources
               if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns
                          for name in (source.video_id, source.relative_path))]
    if not sources:
        raise PrepareError(f"every video in {videos_dir} matches an --exclude pattern {patterns}")
    too_long = [source for source in sources if len(source.video_id.encode()) > MAX_ID_BYTES]
    if too_long:
        raise PrepareError(
            f"{len(too_long)} videos get ids longer than {MAX_ID_BYTES} bytes (an id is the path below --videos with "
            f"'/' as '__', and names a folder, which file systems limit), e.g. {too_long[0].relative_path!r}; point "
            "--videos at a deeper folder, or shorten the folder and file names")
    # Finished videos keep their random split when videos are added (see _kept_splits).
    kept = _kept_splits(out, sources, split_file=split_file, layout=layout, test_fraction=test_fraction,
                        split_by=split_by, seed=seed)
    splits = assign_splits(sources, split_file=split_file, test_fraction=test_fraction, seed=seed,
                           split_by=split_by, unlisted=unlisted, kept=kept)
    sources = [source for source in sources if splits[source.video_id] is not None]
    keypoint_files: dict[str, Path] = {}
    if keypoints_dir is not None:
        keypoint_files = find_keypoint_files(sources, keypoints_dir, all_sources=discovered)
    if flow_method == "raft":
        # Fail now rather than in a worker: the weights file must exist.
        from ipoke.data.flow import find_raft_weights

        flow_options["weights"] = str(find_raft_weights(flow_options.get("raft_model", "raft_small"),
                                                        path=flow_options.get("weights")))
    estimator = _build_estimator(flow_method, flow_options)  # fails here, not in a worker after --out exists

    settings: dict[str, Any] = {
        "size": size, "resize": resize, "flow_method": flow_method,
        "flow_options": {key: value for key, value in sorted(flow_options.items()) if key != "device"},
        "lags": lags, "flow_stride": flow_stride, "frame_step": frame_step, "flow_resolution": flow_resolution,
        "masks": masks, "max_frames": max_frames, "layout": layout, "videos_dir": str(Path(videos_dir).resolve()),
        "split_file": str(split_file) if split_file is not None else None, "test_fraction": test_fraction,
        "split_by": split_by, "seed": seed, "exclude": patterns, "keypoints": keypoints_dir is not None,
        "keypoints_dir": str(Path(keypoints_dir).resolve()) if keypoints_dir is not None else None,
    }
    if out.exists() and out.is_dir() and any(out.iterdir()):
        _check_resume(out, settings)
    created_out = not out.exists()
    fresh = created_out or not any(out.iterdir())
    writer = DatasetWriter(out, size=size, flow_lags=lags, source="prepare", settings=settings)
    try:
        (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
        return _prepare_sources(writer, sources, splits, kept, keypoint_files, settings, flow_options, estimator,
                                workers=workers, on_error=on_error, progress=progress)
    except BaseException as error:  # Ctrl-C and SIGTERM too: a new folder with no finished video refused the re-run
        if fresh and remove_if_nothing_finished(out, created_root=created_out):
            if isinstance(error, PrepareError) and error.args[0].endswith(STOPPED_NOTE):
                raise PrepareError(error.args[0][:-len(STOPPED_NOTE)] + f"\n(stopped; nothing was written to {out}; "
                                   "fix or --exclude the video, or pass --skip-bad to leave bad videos out)") from None
        raise


def _build_estimator(flow_method: str, flow_options: dict[str, Any]) -> FlowEstimator:
    """The flow estimator of a run, built once before anything is written (bad RAFT weights fail here)."""
    from ipoke.weights import WeightsNotFoundError

    try:
        return make_flow_estimator(flow_method, **flow_options)
    except WeightsNotFoundError:
        raise
    except Exception as error:  # a state dict of another model, a damaged file, an unknown device, ...
        raise PrepareError(f"the {flow_method} flow estimator could not be built: {type(error).__name__}: "
                           f"{error}") from error


def _prepare_sources(writer: DatasetWriter, sources: list[VideoSource], splits: dict[str, str | None],
                     kept: dict[str, str], keypoint_files: dict[str, Path], settings: dict[str, Any],
                     flow_options: dict[str, Any], estimator: FlowEstimator, *, workers: int, on_error: str,
                     progress: bool) -> PrepareResult:
    """The preparation loop of :func:`prepare_dataset`, once the output folder is set up."""
    out = writer.root
    split_file, test_fraction, seed, split_by = (settings[key] for key in ("split_file", "test_fraction", "seed",
                                                                          "split_by"))

    result = PrepareResult(out=out)
    tasks = []
    for source in sources:
        split = splits[source.video_id]
        assert split is not None
        if writer.has_video(source.video_id):
            result.skipped.append(source.video_id)  # relabelled at the end, once the splits are final
        else:
            tasks.append((source, split, keypoint_files.get(source.video_id)))
    known = {source.video_id for source in sources}
    strays = sorted(path.name for path in (out / VIDEOS_DIR).iterdir()
                    if (path / "meta.json").is_file() and path.name not in known)
    if strays:
        logger.warning("%d finished videos in %s are not among this run's videos (e.g. %s); they stay in the "
                       "index; delete their folders under %s/ to drop them", len(strays), out, strays[:3], VIDEOS_DIR)

    options = {key: settings[key] for key in ARRAY_SETTINGS}
    options["flow_options"] = flow_options
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sources), initial=len(result.skipped), desc="prepare", unit="video",
               disable=not progress, dynamic_ncols=True)
    failed_error: PrepareError | None = None
    executor = None
    try:
        if workers == 1 or len(tasks) <= 1:
            _init_worker(writer, options, None)
            _STATE["estimator"] = estimator
            outcomes: Iterable[tuple[str, str | None]] = (_prepare_one(task) for task in tasks)
        else:
            # spawn: safe with CUDA (RAFT) and with OpenCV's/torch's thread pools, unlike fork. A process pool
            # executor (unlike multiprocessing.Pool) fails with BrokenProcessPool instead of hanging when a worker
            # dies.
            threads = max(1, available_cores() // workers)  # cores this process may use (affinity)
            executor = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker, initargs=(writer, options, threads, True))
            futures = [executor.submit(_prepare_one, task) for task in tasks]
            outcomes = (future.result() for future in as_completed(futures))
        for video_id, message in outcomes:
            bar.update(1)
            if message is None:
                result.written.append(video_id)
                continue
            result.failed[video_id] = message
            if on_error == "raise":
                failed_error = PrepareError(f"{message}{STOPPED_NOTE}")
                break
            logger.warning("leaving out %s: %s", video_id, message)
    except KeyboardInterrupt:
        if executor is not None:
            stop_process_pool(executor)  # stop now; without this, videos already handed to the workers would still run
        raise
    finally:
        if executor is not None:
            # After a bad video: videos in progress finish (each is written whole); queued ones are cancelled.
            executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if failed_error is not None:
        raise failed_error  # prepare_dataset removes a new output folder in which nothing was finished
    if result.failed and not result.written and not result.skipped:
        # A finished index of no videos blocked the corrected command (its settings differ) and passed for a
        # dataset; raising instead lets prepare_dataset remove a new output folder, as after a bad video.
        raise PrepareError(f"all {len(result.failed)} videos failed, so no dataset was written:\n" + "\n".join(
            f"  {video_id}: {message}" for video_id, message in sorted(result.failed.items())))
    if result.failed and split_file is None:
        # The random split was drawn over every video before any was read; draw it again over those that were
        # prepared, so that a left-out video does not take the test slots with it. The same inputs give the same
        # left-out videos, so a re-run draws the same splits. Videos of an earlier run keep theirs (kept).
        prepared = [source for source in sources if source.video_id not in result.failed]
        splits = {**splits, **assign_splits(prepared, test_fraction=test_fraction, seed=seed, split_by=split_by,
                                            kept=kept)}
    skipped = set(result.skipped)
    for source in sources:
        if source.video_id not in result.failed:
            split = splits[source.video_id]
            assert split is not None
            previous = _update_meta(writer, source, split)
            if previous != split and source.video_id in skipped:
                result.relabelled.append(source.video_id)
                if split == "test":
                    result.moved_to_test.append(source.video_id)
    if result.failed:
        writer.settings = {**settings, "failed": result.failed}
    result.index = writer.write_index()
    return result


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 10,20, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_prepare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``ipoke data prepare`` to ``parser`` (returned for chaining)."""
    parser.add_argument("--videos", required=True, metavar="PATH",
                        help=f"folder of raw videos ({'/'.join(ext[1:] for ext in VIDEO_EXTENSIONS)} files and/or "
                             "folders of png/jpg frames), searched recursively, skipping folders that ipoke wrote "
                             "(datasets, sample and quickstart outputs, logged training gifs); or a single video "
                             "file or frame folder")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output dataset folder: new or empty, or an earlier run of the same command to resume")
    parser.add_argument("--layout", choices=LAYOUTS, default="plain",
                        help="raw layout: plain (any folder; default), plants (Poking Plants VID_<plant>_<take>), "
                             "iper (train.txt in the videos folder), h36m (<subject>/<action>/<camera>, S9/S11 test), "
                             "taichi (train/ and test/ folders); see docs/real_data.md")
    parser.add_argument("--size", type=int, default=256, help="side S of the square frames (default 256)")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                        help="crop: centre square then resize, keeps aspect ratio (default); squash: resize the whole "
                             "frame to S x S like the original iPOKE (distorts non-square footage)")
    parser.add_argument("--flow", dest="flow_method", choices=FLOW_METHODS, default="dis",
                        help="optical flow: dis (OpenCV DIS, CPU, no weights; default), farneback (OpenCV), raft "
                             "(torchvision RAFT; needs its weights file on disk, best with a GPU)")
    parser.add_argument("--lags", type=_int_list, default=[10, 20], metavar="L1,L2",
                        help="flow lags in kept frames, comma-separated (default 10,20); the clip length times the "
                             "loader's subsample step must be one of them")
    parser.add_argument("--flow-stride", type=int, default=1, metavar="K",
                        help="compute flow from every K-th frame only (default 1 = every frame); fewer clip starts, "
                             "K times less flow on disk")
    parser.add_argument("--frame-step", type=int, default=1, metavar="K",
                        help="keep every K-th raw frame (default 1), e.g. 8 for 50 fps Human3.6M")
    parser.add_argument("--flow-resolution", type=int, default=None, metavar="R",
                        help="estimate flow on R x R frames (at most the raw frames' shorter side: each video's "
                             "meta.json records the side used) and resize it to S, vectors rescaled; default: S")
    parser.add_argument("--masks", choices=MASK_MODES, default="none",
                        help="foreground masks: none (default) or grabcut (one GrabCut per frame, as the original for "
                             "iPER/TaiChi; slow)")
    parser.add_argument("--split-file", default=None, metavar="FILE",
                        help="file of '<video name> <split>' lines (name = id, relative path or path without "
                             "extension); overrides the layout's and the random split")
    parser.add_argument("--unlisted", choices=UNLISTED, default="error",
                        help="videos the split file does not name: error (default), train, test or skip")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="random split: fraction of videos (or objects) for test (default 0.2)")
    parser.add_argument("--split-by", choices=SPLIT_BY, default="video",
                        help="random split unit: video (default; per object when object ids are known, so every "
                             "object is in train) or object (hold out whole objects)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave out videos whose id or relative path matches this glob (repeatable)")
    parser.add_argument("--keypoints", default=None, metavar="DIR",
                        help="import keypoints from a pose estimator: DIR/<video id>.npy (or DIR/<relative path "
                             "without extension>.npy, or .npz with a 'keypoints' array) per video, float (N_raw, K, 2) "
                             "(x, y) in raw pixels, one row per raw frame before --frame-step, NaN for unknown "
                             "joints; mapped like the frames and stored as keypoints.npy (used by ipoke evaluate "
                             "--metrics keypoints); see docs/real_data.md")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="use at most N (kept) frames per video")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes, one video each (default 1)")
    parser.add_argument("--dis-preset", choices=sorted(DIS_PRESETS), default="medium",
                        help="DIS speed/quality preset (default medium)")
    parser.add_argument("--dis-pad", type=int, default=DIS_PAD_FACTOR, metavar="F",
                        help="DIS estimates flow on frames padded to F times their side, a power of two: 4 (default) "
                             "finds motion up to about 40%% of the frame, 1 (no padding, F^2 times faster) only up to "
                             "about 10%%; see docs/real_data.md")
    parser.add_argument("--dis-chain", type=int, default=DIS_CHAIN_HOP, metavar="H",
                        help="DIS also follows the motion through the frames in between, in hops of H frames "
                             f"(default {DIS_CHAIN_HOP}), and keeps per pixel whichever estimate fits best: it finds "
                             "large motion of textured objects that the direct estimate loses; 0 turns it off (about "
                             "25%% faster); see docs/real_data.md")
    parser.add_argument("--raft-model", choices=sorted(RAFT_WEIGHT_FILES), default="raft_small",
                        help="RAFT variant (default raft_small)")
    parser.add_argument("--raft-weights", default=None, metavar="FILE",
                        help="RAFT weights file; default: torchvision's file in $IPOKE_CACHE or the torch hub cache "
                             f"({', '.join(RAFT_WEIGHT_FILES.values())})")
    parser.add_argument("--raft-iterations", type=int, default=12, help="RAFT refinement steps (default 12)")
    parser.add_argument("--device", default="cpu", help="torch device for RAFT, e.g. cuda (default cpu)")
    parser.add_argument("--train-list", default=None, metavar="FILE",
                        help="iper layout: the official train.txt when it is not in the videos folder")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave unreadable or too short videos out (listed at the end, exit code 1) instead of "
                             "stopping at the first; when every video fails, no dataset is written (exit code 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``ipoke data prepare`` from parsed arguments.

    Returns:
        0 on success, 1 if some videos were left out (``--skip-bad``), 2 on an error (printed to stderr), 130 when
        interrupted (Ctrl-C; finished videos are kept for the re-run).
    """
    from ipoke.weights import WeightsNotFoundError

    if args.flow_method == "raft":
        flow_options = {"raft_model": args.raft_model, "weights": args.raft_weights, "device": args.device,
                        "iterations": args.raft_iterations}
    elif args.flow_method == "dis":
        flow_options = {"preset": args.dis_preset, "pad_factor": args.dis_pad, "chain_hop": args.dis_chain}
    else:
        flow_options = {}
    try:
        result = prepare_dataset(
            args.videos, args.out, size=args.size, flow_method=args.flow_method, lags=args.lags,
            flow_stride=args.flow_stride, frame_step=args.frame_step, masks=args.masks, split_file=args.split_file,
            test_fraction=args.test_fraction, layout=args.layout, workers=args.workers, seed=args.seed,
            resize=args.resize, flow_resolution=args.flow_resolution, split_by=args.split_by,
            unlisted=args.unlisted, exclude=args.exclude, max_frames=args.max_frames, flow_options=flow_options,
            train_list=args.train_list, keypoints_dir=args.keypoints, on_error="skip" if args.skip_bad else "raise",
            progress=not args.no_progress)
    except (PrepareError, LayoutError, VideoReadError, DatasetFormatError, WeightsNotFoundError) as error:
        print(f"ipoke: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the output folder cannot be written: permissions, a full disk, ...
        print(f"ipoke: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not (Path(args.out) / SETTINGS_FILE).is_file():  # no video was finished: what the run made is removed
            print(f"ipoke: interrupted before any video was finished; nothing was kept in {args.out}",
                  file=sys.stderr)
        elif is_dataset(args.out):  # a re-run adding videos to a finished dataset: its index is the earlier one
            print(f"ipoke: interrupted; the videos finished so far stay in {args.out}, but its index still lists "
                  "only the videos of the earlier run (it is rewritten at the end); run the same command again to "
                  "add the rest", file=sys.stderr)
        else:
            print(f"ipoke: interrupted; the videos finished so far stay in {args.out} (the index is written only at "
                  "the end, so it is not a dataset yet); run the same command again to resume", file=sys.stderr)
        return 130
    print(result.summary())
    return 1 if result.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ipoke.data.prepare``: the same as ``ipoke data prepare``."""
    parser = argparse.ArgumentParser(
        prog="ipoke data prepare",
        description="Turn a folder of real videos (files or frame folders) into an ipoke dataset: frames, optical "
                    "flow, optional masks, train/test split. Parallel, resumable. Guide: docs/real_data.md")
    add_prepare_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run_prepare(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
