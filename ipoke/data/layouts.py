"""Where the videos of a raw dataset are, and what they are: video id, split, object id, extra metadata.

``ipoke data prepare --layout NAME`` turns a raw folder into a list of :class:`VideoSource`; the preparation itself
(:mod:`ipoke.data.prepare`) is the same for all. Layouts only look at paths, never at video contents.

=========  ===================================================================================================
layout     raw folder
=========  ===================================================================================================
plain      any tree of video files (see ``VIDEO_EXTENSIONS``) and frame folders (folders holding png/jpg frames);
           id = the relative path without extension, ``/`` replaced by ``__``; split from ``--split-file`` or
           a seeded fraction of the videos. The raw "folder" may also be a single video file (also for plants).
plants     Poking Plants: ``VID_<plant>_<take>[_...]`` video files or frame folders; object id = the plant. The
           original iPOKE split every video by time (first 80 % of frames train, last 20 % test), so test clips
           were the same takes, often overlapping the training clips' frames: a leak. Here whole takes are split:
           for each plant with at least two takes, a seeded ``test_fraction`` of its takes (at least one) is test,
           so every plant is seen in training but test takes never are (``--split-by object`` holds out whole
           plants instead).
iper       iPER: ``<actor>_<outfit>_<action>`` video files or frame folders, and the official ``train.txt`` (lines
           like ``001/1/1`` or ``001_1_1``) in the raw folder itself; listed videos are train, the rest test
           (``val.txt``, if present, changes nothing: the original also tested on everything not in
           ``train.txt``). The original README said to put ``train.txt`` into the raw folder but its loader read it
           from the processed folder; here the raw folder is the place (or pass ``--split-file``). Object id =
           ``<actor>_<outfit>`` (the original's ``100 * actor + outfit``), meta ``actor``, ``outfit``, ``action``
           (1 = A-pose turn, 2 = free actions).
h36m       Human3.6M: ``<subject>/<action>/<camera>`` trees (camera = a video file or frame folder; what the
           original's preprocessing wrote) or the official ``<subject>/Videos/<Action> <n>.<camera>.mp4`` files.
           Subjects S1, S5, S6, S7, S8 are train, S9 and S11 test (the standard protocol); object id = subject.
           ``_ALL`` videos (all actions concatenated) are skipped.
taichi     TaiChi-HD as made by first-order-model's loader: ``train/`` and ``test/`` folders of videos or of frame
           folders (often named ``<id>.mp4/``); object id = the YouTube id before the first ``#`` of the name.
=========  ===================================================================================================

Folders that ipoke wrote (a prepared dataset, an unfinished ``ipoke data prepare`` output, an ``ipoke sample`` or
``ipoke quickstart`` output, a training run's logged gifs: any folder holding one of :data:`IPOKE_OUTPUT_MARKERS`)
are skipped with their sub-folders in every layout, so outputs written inside the raw folder are never read as raw
videos.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipoke.data.format import INDEX_FILE, PREPARE_SETTINGS_FILE
from ipoke.data.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_image_file, natural_sort_key
from ipoke.utils import walk_following_links

logger = logging.getLogger(__name__)

LAYOUTS = ("plain", "plants", "iper", "h36m", "taichi")
# Files that mark a folder as written by ipoke: a prepared dataset's index, an unfinished `ipoke data prepare` output,
# an `ipoke sample` output or an `ipoke app` save, an `ipoke quickstart` output (its samples/ hold gifs) and the gifs
# a training run logs.
SAMPLE_RECORD = "ipoke_sample.json"  # the settings of an `ipoke sample` run or an `ipoke app` save, beside its outputs
QUICKSTART_SETTINGS_FILE = "quickstart_settings.json"
LOGGED_VIDEOS_MARKER = "ipoke_logged_videos.json"
IPOKE_OUTPUT_MARKERS = (INDEX_FILE, PREPARE_SETTINGS_FILE, SAMPLE_RECORD, QUICKSTART_SETTINGS_FILE,
                        LOGGED_VIDEOS_MARKER)
# Files that sit beside raw videos and are not meant as videos: not listed in the warning about unread files.
NOT_MEDIA_EXTENSIONS = (".txt", ".json", ".csv", ".tsv", ".md", ".yaml", ".yml", ".xml", ".npy", ".npz", ".pkl",
                        ".pickle", ".mat", ".cdf", ".h5", ".hdf5", ".log", ".pt", ".pth", ".zip", ".tar", ".gz")
# The extra fields each layout stores in a video's meta.json (VideoSource.meta); a resume with another layout
# replaces them.
LAYOUT_META_KEYS = ("plant", "take", "actor", "outfit", "action", "subject", "sequence", "camera")
H36M_TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
H36M_TEST_SUBJECTS = ("S9", "S11")


class LayoutError(ValueError):
    """A raw dataset folder does not match the layout asked for; the message says what was expected."""


@dataclass(frozen=True)
class VideoSource:
    """One raw video to prepare.

    Attributes:
        video_id: Unique id in the prepared dataset (letters, digits, ``_-.``).
        path: A video file or a folder of frames.
        relative_path: ``path`` relative to the raw folder, with ``/`` separators (what split files may name).
        split: ``"train"``/``"test"`` when the layout defines it, else None (decided by the preparation).
        object_id: The object/actor/plant shown, when known (used to keep objects together in splits).
        meta: Extra JSON-able fields stored in the video's ``meta.json`` (actor, action, camera, ...).
    """

    video_id: str
    path: Path
    relative_path: str
    split: str | None = None
    object_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def sanitize_id(name: str) -> str:
    """Make a string a valid video id: characters other than ASCII letters, digits and ``_-.`` become ``_``; an id
    that does not start with a letter or digit gets a ``v`` in front (TaiChi names can start with ``-``).

    A name with non-ASCII characters (``café``, ``日本``) also gets ``-`` and 8 hex digits of its hash (of the
    NFC-normalised name): they all became ``_``, so ``日本.mp4`` and ``中国.mp4`` (both ``v__``) collided.
    """
    import hashlib
    import unicodedata

    name = unicodedata.normalize("NFC", name.strip())
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    if not cleaned or not (cleaned[0].isascii() and cleaned[0].isalnum()):
        cleaned = "v" + cleaned
    if not name.isascii():
        cleaned += "-" + hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return cleaned


def _is_single_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _strip_video_extension(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return name[: -len(suffix)] if suffix in VIDEO_EXTENSIONS else name


def ipoke_output_marker(folder: str | os.PathLike) -> str | None:
    """The first of :data:`IPOKE_OUTPUT_MARKERS` that ``folder`` holds (it is an output of ipoke), else None."""
    return next((name for name in IPOKE_OUTPUT_MARKERS if (Path(folder) / name).is_file()), None)


def find_media(root: str | os.PathLike) -> list[Path]:
    """All video files and frame folders under ``root`` (recursively, hidden entries skipped), natural order.

    A folder that directly holds images is one video (its frames; the raw folder itself too); its sub-folders are
    searched too, following symbolic links. A single video file as ``root`` is that one video. Files that are neither
    videos nor images (other than annotation files, :data:`NOT_MEDIA_EXTENSIONS`) are listed in a warning.
    Sub-folders that ipoke wrote (:func:`ipoke_output_marker`: a prepared dataset, an unfinished prepare output, an
    ``ipoke sample`` or ``ipoke quickstart`` output, logged training gifs) are skipped with one warning; ``root``
    itself is read as given.

    Raises:
        LayoutError: If ``root`` does not exist or is neither a folder nor a video file.
    """
    root = Path(root)
    if _is_single_video(root):
        return [root]
    if not root.is_dir():
        raise LayoutError(f"videos folder {root} does not exist or is not a folder")
    found: list[Path] = []
    outputs: list[str] = []
    unread: list[str] = []
    stray: list[str] = []
    # Symbolic links to folders are followed (a raw tree assembled from links is common), each real folder once.
    for folder_path, subfolders, files in walk_following_links(root, key=natural_sort_key):
        for name in list(subfolders):
            marker = ipoke_output_marker(folder_path / name)
            if marker is not None:
                subfolders.remove(name)
                outputs.append(f"{(folder_path / name).relative_to(root).as_posix()}/ ({marker})")
        # A folder that holds images is a video (its frames), the raw folder itself included; unless it is one lone
        # image beside videos or sub-folders (a preview or thumbnail; a single frame is no video): a stray
        # preview.jpg made the whole folder one "video", and the layout's error named only the folder.
        images = [name for name in files if not name.startswith(".") and is_image_file(folder_path / name)]
        beside_videos = any(Path(name).suffix.lower() in VIDEO_EXTENSIONS for name in files)
        if len(images) == 1 and (beside_videos or subfolders):
            stray += [(folder_path / name).relative_to(root).as_posix() for name in images]
        elif images:
            found.append(folder_path)
        for name in files:
            if name.startswith("."):
                continue
            suffix = Path(name).suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                found.append(folder_path / name)
            elif suffix not in IMAGE_EXTENSIONS and suffix not in NOT_MEDIA_EXTENSIONS:
                unread.append((folder_path / name).relative_to(root).as_posix())
    if outputs:
        logger.warning("skipped %d folders in %s that ipoke wrote (not raw videos): %s", len(outputs), root,
                       ", ".join(outputs[:5]) + (", ..." if len(outputs) > 5 else ""))
    if stray:
        logger.warning("%d lone images in %s lie beside videos or video folders and were not read as one-frame "
                       "videos (previews?), e.g. %s", len(stray), root,
                       ", ".join(stray[:3]))
    if unread:
        logger.warning("%d files in %s are neither videos (%s) nor images and were not read, e.g. %s; convert them "
                       "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) if they are videos", len(unread), root,
                       " ".join(VIDEO_EXTENSIONS), ", ".join(unread[:3]))
    # A file reached through two links (raw/a/c.mkv -> store/c.mkv and raw/b -> store/) is one video: read twice it
    # could land in train and in test.
    unique: dict[str, Path] = {}
    repeated: list[str] = []
    for path in sorted(found, key=lambda p: natural_sort_key(p.relative_to(root).as_posix())):
        real = os.path.realpath(path)
        if real in unique:
            repeated.append(f"{path.relative_to(root).as_posix()} (= {unique[real].relative_to(root).as_posix()})")
        else:
            unique[real] = path
    if repeated:
        logger.warning("%d videos in %s are links to videos found already and were read once: %s", len(repeated),
                       root, ", ".join(repeated[:3]) + (", ..." if len(repeated) > 3 else ""))
    return list(unique.values())


def _relative(root: Path, path: Path) -> str:
    relative = path.relative_to(root).as_posix()
    return relative if relative != "." else path.resolve().name  # the raw folder itself (also `--videos .`)


def _plain_id(relative: str) -> str:
    parts = relative.split("/")
    parts[-1] = _strip_video_extension(parts[-1])
    return sanitize_id("__".join(parts))


def _plain(root: Path) -> list[VideoSource]:
    return [VideoSource(video_id=_plain_id(_relative(root, path)), path=path, relative_path=_relative(root, path))
            for path in find_media(root)]


_PLANT_NAME = re.compile(r"^VID_(\d+)_(\d+)")


def _plants(root: Path) -> list[VideoSource]:
    sources, unmatched = [], []
    for path in find_media(root):
        name = _strip_video_extension(path.name)
        match = _PLANT_NAME.match(name)
        if match is None:
            unmatched.append(_relative(root, path))
            continue
        plant, take = int(match.group(1)), int(match.group(2))
        sources.append(VideoSource(video_id=sanitize_id(name), path=path, relative_path=_relative(root, path),
                                   object_id=f"plant{plant}", meta={"plant": plant, "take": take}))
    if unmatched:
        raise LayoutError(f"layout 'plants' expects videos named VID_<plant>_<take>..., but {len(unmatched)} are not: "
                          f"{unmatched[:5]}; rename or remove them, or use --layout plain")
    return sources


_IPER_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)$")


def _normalise_iper_name(line: str) -> str:
    return _strip_video_extension(line.strip().strip("/").replace("/", "_"))


def _iper(root: Path, *, train_list: str | os.PathLike | None = None) -> list[VideoSource]:
    list_file = Path(train_list) if train_list is not None else root / "train.txt"
    if not list_file.is_file():
        raise LayoutError(
            f"layout 'iper' needs the official train.txt (lines like 001/1/1); put it into the raw folder {root} "
            f"(expected {list_file}), or use --layout plain with --split-file")
    train_names = {_normalise_iper_name(line) for line in list_file.read_text().splitlines() if line.strip()}
    sources, unmatched = [], []
    for path in find_media(root):
        relative = _relative(root, path)
        # iPER ships videos as 001_1_1.mp4 and frame folders as 001/1/1/; both name the same video.
        name = _normalise_iper_name(relative)
        if _IPER_NAME.match(name) is None:  # nested deeper, e.g. iPER_256_image_release/001/1/1/ or iPER_video/...
            name = next((candidate for candidate in (_normalise_iper_name("/".join(Path(relative).parts[-3:])),
                                                     _normalise_iper_name(path.name))
                         if _IPER_NAME.match(candidate)), name)
        match = _IPER_NAME.match(name)
        if match is None:
            unmatched.append(relative)
            continue
        actor, outfit, action = (int(group) for group in match.groups())
        sources.append(VideoSource(
            video_id=sanitize_id(name), path=path, relative_path=relative,
            split="train" if name in train_names else "test", object_id=f"{actor:03d}_{outfit}",
            meta={"actor": actor, "outfit": outfit, "action": action}))
    if unmatched:
        raise LayoutError(f"layout 'iper' expects videos named <actor>_<outfit>_<action> (e.g. 001_1_1.mp4 or "
                          f"001/1/1/), but {len(unmatched)} are not: {unmatched[:5]}")
    found = {source.video_id for source in sources}
    missing = sorted(train_names - found)
    if missing and len(missing) == len(train_names):
        raise LayoutError(f"none of the {len(train_names)} videos in {list_file} was found under {root} "
                          f"(first entries: {sorted(train_names)[:3]}); is this the right folder?")
    return sources


_H36M_SUBJECT = re.compile(r"^S(\d+)$")


def _h36m(root: Path) -> list[VideoSource]:
    sources, problems = [], []
    for path in find_media(root):
        relative = _relative(root, path)
        parts = relative.split("/")
        subject_index = next((i for i, part in enumerate(parts) if _H36M_SUBJECT.match(part)), None)
        if subject_index is None:
            problems.append(f"{relative}: no subject folder (S1, S5, ...) in its path")
            continue
        subject = parts[subject_index]
        rest = [part for part in parts[subject_index + 1:] if part.lower() != "videos"]
        if not rest:
            problems.append(f"{relative}: no action/camera below the subject folder")
            continue
        last = _strip_video_extension(rest[-1])
        if len(rest) == 1 and "." in last:
            action, camera = last.rsplit(".", 1)  # official naming: "Directions 1.54138969.mp4"
        elif len(rest) >= 2:
            action, camera = "-".join(rest[:-1]), last
        else:
            problems.append(f"{relative}: expected <subject>/<action>/<camera> or <subject>/Videos/<Action>.<camera>")
            continue
        if action.startswith("_ALL"):
            continue
        if subject in H36M_TRAIN_SUBJECTS:
            split = "train"
        elif subject in H36M_TEST_SUBJECTS:
            split = "test"
        else:
            problems.append(f"{relative}: subject {subject} is in neither the train subjects {H36M_TRAIN_SUBJECTS} "
                            f"nor the test subjects {H36M_TEST_SUBJECTS}")
            continue
        action_id = sanitize_id(action.replace(" ", "-"))
        sources.append(VideoSource(
            video_id=sanitize_id(f"{subject}__{action_id}__{camera}"), path=path, relative_path=relative,
            split=split, object_id=subject,
            meta={"subject": subject, "action": re.split(r"[ \-_]", action)[0], "sequence": action,
                  "camera": camera}))
    if problems:
        raise LayoutError(f"layout 'h36m': {len(problems)} videos do not fit: " + "; ".join(problems[:5])
                          + "; use --layout plain with --split-file for other trees")
    return sources


def _taichi(root: Path) -> list[VideoSource]:
    if not any((root / split).is_dir() for split in ("train", "test")):
        raise LayoutError(f"layout 'taichi' expects train/ and test/ folders in {root}")
    sources, stray = [], []
    for path in find_media(root):
        relative = _relative(root, path)
        split = relative.split("/")[0]
        if split not in ("train", "test") or relative.count("/") == 0:
            stray.append(relative)
            continue
        name = _strip_video_extension(path.name)
        sources.append(VideoSource(video_id=sanitize_id(name), path=path, relative_path=relative, split=split,
                                   object_id=sanitize_id(name.split("#")[0])))
    if stray:
        raise LayoutError(f"layout 'taichi': {len(stray)} videos are outside train/ and test/: {stray[:5]}")
    return sources


_LAYOUT_FUNCTIONS: dict[str, Callable[..., list[VideoSource]]] = {
    "plain": _plain, "plants": _plants, "iper": _iper, "h36m": _h36m, "taichi": _taichi}


def discover_videos(root: str | os.PathLike, layout: str = "plain", **options: Any) -> list[VideoSource]:
    """List the videos of a raw dataset folder.

    Args:
        root: The raw folder; for the ``plain`` and ``plants`` layouts also a single video file.
        layout: One of :data:`LAYOUTS` (see the module docstring for each layout's expected tree and split).
        **options: Layout options: ``train_list`` (iper: path of ``train.txt`` when it is not in ``root``).

    Returns:
        The sources in natural order of their paths, ids unique.

    Raises:
        LayoutError: If the folder is missing (or is a file that is not a video), holds no videos, does not match
            the layout, or two videos map to the same id.
    """
    if layout not in _LAYOUT_FUNCTIONS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    root = Path(root)
    if root.is_file() and not _is_single_video(root):
        raise LayoutError(f"{root} is a file but not a video ({', '.join(VIDEO_EXTENSIONS)}); --videos takes a video "
                          "file, a folder of frames or a folder of videos")
    if _is_single_video(root) and layout not in ("plain", "plants"):
        raise LayoutError(f"{root} is a single video file; layout {layout!r} needs the dataset's folder (a single "
                          "video works with --layout plain or plants)")
    if not root.is_dir() and not _is_single_video(root):
        raise LayoutError(f"videos folder {root} does not exist or is not a folder")
    sources = _LAYOUT_FUNCTIONS[layout](root, **options)
    if not sources:
        raise LayoutError(f"no videos found in {root}: expected video files ({', '.join(VIDEO_EXTENSIONS)}) or "
                          "folders of png/jpg frames")
    by_id: dict[str, VideoSource] = {}
    for source in sources:
        if source.video_id in by_id:
            raise LayoutError(f"{by_id[source.video_id].relative_path} and {source.relative_path} both map to the "
                              f"video id {source.video_id!r}; rename one of them")
        by_id[source.video_id] = source
    return sources

