"""``PokeDataset``: clips with pokes from a prepared dataset folder.

A sample is a dict (tensors are what the default collate stacks into batches)::

    video        float32 (T+1, 3, S, S) in [-1, 1]; video[0] is the start frame x0
    flow         float32 (2, S, S)  flow x0 -> last frame, pixels at size S (zeros for a background-poke sample)
    poke         float32 (2, S, S)  poke map (see ipoke.data.pokes)
    poke_coords  float32 (n_pokes, 4) rows (x, y, dx, dy), zero-padded; (x, y) is a continuous position where
                                    pixel (i, j) covers [i, i + 1) x [j, j + 1) (the poke map's convention)
    poke_count   int64   ()         number of valid rows in poke_coords
    mask         uint8   (S, S)     object mask of x0 (1 = object); all ones when the dataset has none
    has_mask     bool    ()
    background_poke bool ()         the poke is on the background and the clip is static
    keypoint_poke bool ()           the pokes are keypoint pokes (``poke_source="keypoints"``; see below)
    video_id     str;  start  int64 ()

Clips are ``T + 1`` frames ``start, start + step, ..., start + T * step``; the poke is simulated from the stored
flow at lag ``T * step``, which must be one of the dataset's ``flow_lags``.

*Keypoint pokes* (``poke_source="keypoints"``, evaluation of targeted keypoint accuracy; the reference's iPER
protocol): each poke sits on a keypoint (joint) at its position in x0 and carries the joint's displacement to the last
frame of the clip, so the joint should end at ``(x + dx, y + dy)``. Joints are drawn among those that move at least
``min_keypoint_motion`` pixels (the reference drew any joint: a joint that stays put tests nothing). A clip of a video
without keypoints, or where no joint moves enough, gets flow-simulated pokes and ``keypoint_poke`` False. Stored
keypoints count pixel centres at integers; their pokes are shifted by half a pixel into the poke convention above, so
that the poke map covers the pixel the joint is in (and :func:`ipoke.metrics.keypoint_errors` shifts them back).
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ipoke.data.augment import AugmentSettings, augment_clip
from ipoke.data.format import DatasetFormatError, PreparedDataset
from ipoke.data.pokes import background_poke, pad_coords, poke_from_flow_at, poke_map_from_coords, sample_pokes
from ipoke.utils import is_whole_number


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(N, H, W, 3)`` frames to ``(N, size, size, 3)`` (area interpolation when shrinking)."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return np.ascontiguousarray(frames)
    interpolation = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(frame, (size, size), interpolation=interpolation) for frame in frames])


def resize_flow(flow: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(2, H, W)`` flow field to ``(2, size, size)`` and rescale its vectors to the new pixel units."""
    height, width = flow.shape[1:]
    if height == size and width == size:
        return flow.astype(np.float32)
    channels = [cv2.resize(np.ascontiguousarray(c, dtype=np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                for c in flow]
    return np.stack([channels[0] * (size / width), channels[1] * (size / height)]).astype(np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(H, W)`` 0/1 mask to ``(size, size)``: a pixel is marked when at least half of it is.

    Centre-aligned like the frames' area resize. (Nearest-neighbour resizing took each block's corner pixel, which put
    the mask ``(f - 1) / 2`` source pixels up and left of what the frame shows: at 4x shrinking it overlapped the true
    small mask only at IoU 0.3.)
    """
    if mask.shape == (size, size):
        return mask.astype(np.uint8)
    area = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (area >= 0.5).astype(np.uint8)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, S, S, 3)`` -> float32 ``(N, 3, S, S)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


POKE_SOURCES = ("flow", "recorded", "keypoints")
# Smallest model resolution a dataset serves (the networks' latent grid is 8x8).
MIN_MODEL_SIZE = 8


def recorded_pokes_for_clip(recorded: np.ndarray, flow: np.ndarray, mask: np.ndarray | None, *, stored_size: int,
                            background: bool) -> np.ndarray:
    """The recorded pokes ``(P, 4)`` of a video (``pokes.npy``, pixels at ``stored_size``) for a clip starting at
    frame 0, at the clip's size S.

    The positions are where the simulation poked. An object poke's vector is the clip's own flow at that position
    (:func:`ipoke.data.pokes.poke_from_flow_at`, which also moves a position that misses the object onto it): the
    stored vector is the displacement over the whole video, too long for a shorter clip (until session 12 it was
    served for every clip length). A background poke keeps its stored drag, scaled to S: nothing moved.

    Args:
        recorded: float ``(P, 4)`` ``(x, y, dx, dy)`` pixels at ``stored_size``.
        flow: ``(2, S, S)`` flow of the clip.
        mask: Optional ``(S, S)`` object mask of x0.
        stored_size: Size of the stored frames.
        background: The video's poke is a background poke.

    Returns:
        float32 ``(P, 4)``.
    """
    scaled = np.asarray(recorded, np.float32) * (flow.shape[-1] / stored_size)
    if background:
        return scaled
    return np.stack([poke_from_flow_at(x, y, flow, mask) for x, y in scaled[:, :2]]).astype(np.float32)


def check_clip_lag(data: PreparedDataset, n_frames: int, frame_step: int, *, model: bool = False) -> None:
    """Refuse clips whose span ``n_frames * frame_step`` is no flow lag the dataset stores (their pokes and control
    metrics need the flow from x0 to the clip's last frame).

    Raises:
        DatasetFormatError: (a ValueError; ``ipoke`` prints it as one line) saying what to change: for a trained
            model (``model=True``: sampling, evaluation, the app) only the data can change, when training also the
            clip length.
    """
    lag = n_frames * frame_step
    if lag in data.flow_lags:
        return
    if model:
        raise DatasetFormatError(
            f"the model cuts clips of {n_frames} frames x frame step {frame_step}, which need flow at lag {lag}, but "
            f"{data.root} stores lags {data.flow_lags}; prepare the data with {lag} among its --lags (ipoke data "
            f"prepare ... --lags {','.join(str(value) for value in sorted({*data.flow_lags, lag}))})")
    raise DatasetFormatError(
        f"clips of n_frames={n_frames} x frame_step={frame_step} need flow at lag {lag}, but {data.root} stores lags "
        f"{data.flow_lags}; choose n_frames * frame_step among them or prepare the data with that lag (--lags)")


def keypoint_pokes(start_points: np.ndarray, end_points: np.ndarray, rng: np.random.Generator, *, n_pokes: int,
                   size: int, min_motion: float = 1.0, fixed_count: bool = False) -> np.ndarray:
    """Pokes on moving keypoints: rows ``(x, y, dx, dy)`` with ``(x, y)`` a joint in x0 and ``(dx, dy)`` its motion.

    Args:
        start_points: ``(K, 2)`` joint positions ``(x, y)`` in x0, pixels at size S (NaN where unknown).
        end_points: ``(K, 2)`` the same joints in the clip's last frame.
        rng: Random generator.
        n_pokes: Most pokes (exactly this many, joints repeating if needed, with ``fixed_count``).
        size: S; joints outside the image are not poked.
        min_motion: Smallest displacement in pixels of a joint that may be poked.
        fixed_count: Always return ``n_pokes`` rows.

    Returns:
        float32 ``(P, 4)``; ``P = 0`` when no joint qualifies.
    """
    motion = end_points - start_points
    inside = np.all((start_points >= 0) & (start_points <= size - 1), axis=1)
    with np.errstate(invalid="ignore"):
        candidates = np.flatnonzero(inside & np.isfinite(motion).all(axis=1)
                                    & (np.linalg.norm(motion, axis=1) >= min_motion))
    if len(candidates) == 0:
        return np.zeros((0, 4), np.float32)
    count = n_pokes if fixed_count else int(rng.integers(1, min(n_pokes, len(candidates)) + 1))
    chosen = rng.choice(candidates, size=count, replace=count > len(candidates))
    return np.concatenate([start_points[chosen], motion[chosen]], axis=1).astype(np.float32)


class PokeDataset(Dataset):
    """Clips with simulated (or recorded) pokes from a prepared dataset.

    Args:
        root: Prepared dataset folder.
        split: Which split to read (``train``, ``val``, ``test``, ...).
        size: Model resolution S; frames and flow are resized (flow vectors rescaled). Default: the dataset's.
        n_frames: Future frames T per clip (the clip has T + 1 frames).
        frame_step: Stored frames between two clip frames.
        n_pokes: Maximum pokes per sample.
        poke_size: Side of each poke square in pixels at size S.
        zero_poke_fraction: Probability that a sample becomes a static clip with a background poke.
        augment: Apply :func:`ipoke.data.augment.augment_clip` (training only).
        poke_source: ``"flow"`` simulates pokes from the flow (the papers' protocol, works for every dataset);
            ``"recorded"`` uses the pokes stored with synthetic videos when the clip starts at frame 0 (their
            positions; an object poke's vector is the clip's flow there; needs ``augment=False``; other clips get
            flow pokes);
            ``"keypoints"`` pokes moving keypoints with their own displacement (see the module doc; no augmentation).
        min_keypoint_motion: Smallest displacement in pixels at size S of a joint that ``"keypoints"`` may poke.
        fixed_poke_count: Always use exactly ``n_pokes`` pokes (evaluation uses 1).
        deterministic: Same pokes and augmentation for an index every time (``seed`` + index); for evaluation.
        seed: Seed of the deterministic mode.
        max_clips: Keep at most this many clips (evenly spaced), e.g. to bound validation.
        max_open_videos: Videos whose memory maps stay open per process (least recently used ones are closed).
            Every memory map holds a file descriptor; caching all of them ran a 4000-video dataset out of file
            descriptors in each DataLoader worker ("Too many open files" after 2000 GPU batches).
    """

    def __init__(self, root: str | os.PathLike, *, split: str = "train", size: int | None = None, n_frames: int = 10,
                 frame_step: int = 1, n_pokes: int = 5, poke_size: int = 5, zero_poke_fraction: float = 1 / 12,
                 augment: bool = False, poke_source: str = "flow", fixed_poke_count: bool = False,
                 deterministic: bool = False, seed: int = 0, max_clips: int | None = None,
                 max_open_videos: int = 64, min_keypoint_motion: float = 1.0) -> None:
        if poke_source not in POKE_SOURCES:
            raise ValueError(f"poke_source must be one of {POKE_SOURCES}, got {poke_source!r}")
        if poke_source == "keypoints" and augment:
            raise ValueError("keypoint pokes are for evaluation: augment must be False (rotations and shifts would "
                             "have to move the keypoints too)")
        if poke_source == "recorded" and augment:
            raise ValueError("recorded pokes sit where the simulation poked the unaugmented first frame: augment must "
                             "be False with poke_source='recorded' (PokeDataModule(augment=False)), or use "
                             "poke_source='flow'")
        if max_open_videos < 1:
            raise ValueError(f"max_open_videos must be at least 1, got {max_open_videos}")
        for name, value in (("n_frames", n_frames), ("frame_step", frame_step), ("n_pokes", n_pokes),
                            ("poke_size", poke_size)):
            if not is_whole_number(value, 1):
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if size is not None and not is_whole_number(size, MIN_MODEL_SIZE):
            raise ValueError(f"size must be a whole number of pixels of at least {MIN_MODEL_SIZE} (or None for the "
                             f"dataset's own size), got {size!r}")
        if not is_whole_number(seed, 0):
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        if max_clips is not None and not is_whole_number(max_clips, 1):
            raise ValueError(f"max_clips must be a whole number of at least 1 (or None for all clips), got "
                             f"{max_clips!r}")
        if not 0 <= zero_poke_fraction < 1:
            raise ValueError(f"zero_poke_fraction must be in [0, 1), got {zero_poke_fraction}")
        self.data = PreparedDataset(root)
        self.split = split
        self.size = int(self.data.size if size is None else size)
        self.n_frames, self.frame_step = int(n_frames), int(frame_step)
        self.lag = self.n_frames * self.frame_step
        check_clip_lag(self.data, self.n_frames, self.frame_step)
        self.n_pokes, self.poke_size = int(n_pokes), int(poke_size)
        self.zero_poke_fraction = float(zero_poke_fraction)
        self.augment, self.poke_source = augment, poke_source
        self.fixed_poke_count, self.deterministic, self.seed = fixed_poke_count, deterministic, int(seed)
        self.min_keypoint_motion = float(min_keypoint_motion)
        self.augment_settings = AugmentSettings()
        # Synthetic datasets of generator versions before 4 stored keypoints half a pixel off (pixel i covering
        # [i, i + 1) instead of centred at i); read them in today's convention.
        # Version 1 wrote no version number into the index (it read as current, half a pixel off).
        generator = (self.data.index.get("settings") or {}).get("generator_version", 1)
        legacy = self.data.index.get("source") == "synthetic" and generator < 4
        self._keypoint_shift = -0.5 if legacy else 0.0
        self.clips: list[tuple[str, int]] = []
        for meta in self.data.videos:
            if meta["split"] != split:
                continue
            for start in meta["flow_starts"]:
                if start + self.lag < meta["n_frames"]:
                    self.clips.append((meta["id"], int(start)))
        if not self.clips:
            raise DatasetFormatError(f"{self.data.root} has no clips of {self.n_frames + 1} frames (step "
                                     f"{self.frame_step}) in split {split!r}; its splits are {self.data.splits()}")
        if max_clips is not None and len(self.clips) > max_clips:
            keep = np.linspace(0, len(self.clips) - 1, max_clips).round().astype(int)
            self.clips = [self.clips[i] for i in keep]
        self.max_open_videos = int(max_open_videos)
        self._videos: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.clips)

    def object_balancing_weights(self) -> torch.Tensor:
        """Per-clip sampling weights that give every object the same total weight: ``1 / (clips of its object)``.

        The object is the video's ``object_id`` (a plant, an actor); a video without one counts as its own object.
        The original's ``object_weighting`` for Poking Plants, where a few plants have many long takes.

        Returns:
            float64 ``(len(self),)``, summing to the number of objects.
        """
        objects = {meta["id"]: meta.get("object_id") or f"video:{meta['id']}" for meta in self.data.videos}
        clip_objects = [objects[video_id] for video_id, _ in self.clips]
        counts = Counter(clip_objects)
        return torch.tensor([1.0 / counts[name] for name in clip_objects], dtype=torch.float64)

    def _video(self, video_id: str):
        # Memory maps are opened lazily per worker process (they must not be shared across fork) and kept for the
        # max_open_videos most recently used videos: each holds a file descriptor until it is dropped.
        if video_id in self._videos:
            self._videos.move_to_end(video_id)
        else:
            self._videos[video_id] = self.data.video(video_id)
            while len(self._videos) > self.max_open_videos:
                self._videos.popitem(last=False)
        return self._videos[video_id]

    def _rng(self, index: int) -> np.random.Generator:
        if self.deterministic:
            return np.random.default_rng([self.seed, index])
        # Drawn from torch's generator: seeded per worker by the DataLoader (and by Lightning's seed_everything).
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, start = self.clips[index]
        rng = self._rng(index)
        video = self._video(video_id)
        stop = start + self.lag + 1
        frames = np.array(video.frames[start:stop:self.frame_step])  # copy out of the memory map
        flow = video.flow_between(start, self.lag, self.data.flow_lags)
        mask = None if video.masks is None else (np.asarray(video.masks[start]) > 0).astype(np.uint8)
        stored_size = frames.shape[1]
        frames = resize_frames(frames, self.size)
        flow = resize_flow(flow, self.size)
        if mask is not None and stored_size != self.size:
            mask = resize_mask(mask, self.size)
        if self.augment:
            frames, flow, masks = augment_clip(frames, flow, None if mask is None else mask[None], rng,
                                               self.augment_settings)
            mask = None if masks is None else masks[0]

        recorded = video.pokes if (self.poke_source == "recorded" and start == 0) else None
        keypoint_coords = None
        if self.poke_source == "keypoints" and video.keypoints is not None:
            # Pixel centres map as x' = (x + 0.5) * S / S_stored - 0.5 (as cv2.resize places them).
            scale = self.size / stored_size
            stored = np.asarray(video.keypoints[[start, start + self.lag]], np.float64) + self._keypoint_shift
            ends = (stored + 0.5) * scale - 0.5
            keypoint_coords = keypoint_pokes(ends[0], ends[1], rng, n_pokes=self.n_pokes, size=self.size,
                                             min_motion=self.min_keypoint_motion, fixed_count=self.fixed_poke_count)
            keypoint_coords[:, :2] += 0.5  # pixel centres at integers -> the poke convention (pixel i is [i, i+1))
        is_background = bool(video.meta.get("background_poke", False))
        if keypoint_coords is not None and len(keypoint_coords):
            coords = keypoint_coords
            poke = poke_map_from_coords(coords, self.size, self.poke_size)
        elif rng.random() < self.zero_poke_fraction:
            poke, coords = background_poke(flow, rng, poke_size=self.poke_size, mask=mask)
            frames = np.repeat(frames[:1], len(frames), axis=0)
            flow = np.zeros_like(flow)
            is_background = True
        elif recorded is not None and len(recorded):
            coords = recorded_pokes_for_clip(recorded, flow, mask, stored_size=stored_size,
                                             background=is_background)[: self.n_pokes]
            poke = poke_map_from_coords(coords, self.size, self.poke_size)
        else:
            poke, coords = sample_pokes(flow, rng, n_pokes=self.n_pokes, poke_size=self.poke_size, mask=mask,
                                        fixed_count=self.fixed_poke_count)
            is_background = is_background or not np.any(flow)
        padded, count = pad_coords(coords, self.n_pokes)
        return {
            "video": frames_to_tensor(frames),
            "flow": torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)),
            "poke": torch.from_numpy(poke),
            "poke_coords": torch.from_numpy(padded),
            "poke_count": torch.tensor(count, dtype=torch.int64),
            "mask": torch.from_numpy(mask if mask is not None else np.ones((self.size, self.size), np.uint8)),
            "has_mask": torch.tensor(mask is not None),
            "background_poke": torch.tensor(is_background),
            "keypoint_poke": torch.tensor(keypoint_coords is not None and len(keypoint_coords) > 0),
            "video_id": video_id,
            "start": torch.tensor(start, dtype=torch.int64),
        }


def evaluation_clips(root: str | os.PathLike, *, split: str, size: int | None = None, n_frames: int = 10,
                     frame_step: int = 1, poke_size: int = 5, seed: int = 42, max_clips: int | None = None,
                     poke_source: str = "flow") -> PokeDataset:
    """The clips of the evaluation protocol: a fixed order, exactly one seeded poke each, no augmentation and no
    clips made static on purpose (``zero_poke_fraction`` 0; the data's own background-poke videos, where nothing
    moves, are kept and flagged ``background_poke``) (``ipoke evaluate``, ``ipoke sample --data``, the quickstart's
    example image, the diagnostics).

    Args:
        root: Prepared dataset folder.
        split: Split to read.
        size, n_frames, frame_step, poke_size: The model's clip settings.
        seed: Seed of the pokes (42, as the paper's evaluation).
        max_clips: Keep at most this many clips (evenly spaced).
        poke_source: ``"flow"`` (simulated pokes, the protocol) or ``"keypoints"`` (targeted keypoint accuracy).
    """
    return PokeDataset(root, split=split, size=size, n_frames=n_frames, frame_step=frame_step, n_pokes=1,
                       poke_size=poke_size, zero_poke_fraction=0.0, augment=False, poke_source=poke_source,
                       fixed_poke_count=True, deterministic=True, seed=seed, max_clips=max_clips)
