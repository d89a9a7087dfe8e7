"""Control accuracy: does a generated video move the way the poke asked? (For data whose true motion is known.)

The motion from x0 to the last generated frame is estimated with OpenCV's DIS optical flow (no learned weights,
deterministic) on the grayscale frames, with settings for small images and thin parts (:data:`DIS_SETTINGS`), and
compared with the ground-truth endpoint flow of the dataset (the synthetic generator knows it exactly). Per clip,
with F the estimated and G the true flow in pixels:

* ``control/poke_epe`` (object pokes only): mean of the per-pixel endpoint error ‖F − G‖ over the object pixels
  (mask of x0) of the ``(2r+1) x (2r+1)`` window around the poked pixel (r = ``window_radius``, default 2: the 5x5
  poke square), clipped to the image; the whole window if it holds no object pixel. Object pixels only because on
  2-4 px wide stems most of the square is background, where the truth is 0 and the estimator smears the object's
  motion: with the whole square, DIS on the true clips of the synthetic test split scores 0.88 of a static video,
  with the object pixels 0.68 (docs/metrics.md).
* ``control/poke_angle_deg`` (object pokes only): angle in degrees, in [0, 180], between the mean of F over those
  pixels and the poke vector (dx, dy). NaN when the estimated motion there is below ``min_motion`` pixels (a
  direction is undefined); such clips are left out of the mean, so read it together with ``poke_epe``.
* ``control/object_epe``: mean ‖F − G‖ over the object pixels of x0 (mask), every clip with a non-empty mask.
* ``control/background_motion``: mean ‖F‖ over background pixels, every clip. Background pixels within
  ``max ‖G‖ + background_margin`` pixels of the object are left out, because the object may cover them by the
  last frame (occlusion) and flow estimated there is not background motion.
* ``control/background_poke_motion`` (background pokes only): mean ‖F‖ over the whole image; a poke on the
  background should move nothing.

Clips where a metric does not apply get NaN; :class:`ControlAccuracy` averages over the clips where it applies.

**Targeted keypoint accuracy** (:func:`keypoint_errors`, ``control/keypoint_error``), for any data with keypoints
(real videos with pose-estimator joints, or the synthetic plants' joints): the poke is a joint's own displacement
over the clip, placed on the joint in x0; the error is the distance in pixels (at size S) between where the joint
ends in the real clip and where the generated video takes it, i.e. its x0 position moved by the DIS flow from x0 to
the last generated frame (bilinear at the sub-pixel position). The reference (iPOKE, iPER only) ran a pose network
(HRNet) on the last generated frame and reported the squared distance in [0, 1] coordinates; tracking the joint with
the same weight-free flow as the other control metrics needs no pose network and works for any keypoints, so it
carries its own name. A static video scores the joint's displacement.

The direct DIS estimate finds motion up to about a tenth of the frame side (6 px at 64 px); real joints move
farther over a clip (a stepping leg at lag 10). With ``flow="chained"``, :func:`keypoint_errors` follows the joint
through every generated frame instead, with the estimator of ``ipoke data prepare``
(:meth:`ipoke.data.flow.DISFlow.estimate_lags`: consecutive flows composed and refined, padded DIS), which finds a
textured object moving half the frame within about a pixel; ``ipoke evaluate`` uses it on real data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

from ipoke.metrics.averaging import MeanAccumulator
from ipoke.metrics.common import (
    CONTROL_BACKGROUND_MOTION,
    CONTROL_BACKGROUND_POKE_MOTION,
    CONTROL_OBJECT_EPE,
    CONTROL_POKE_ANGLE_DEG,
    CONTROL_POKE_EPE,
    N_CLIPS,
    as_tensor,
    check_video,
    to_unit_range,
)

CONTROL_KEYS = (CONTROL_POKE_EPE, CONTROL_POKE_ANGLE_DEG, CONTROL_OBJECT_EPE, CONTROL_BACKGROUND_MOTION,
                CONTROL_BACKGROUND_POKE_MOTION)
#: How :func:`keypoint_errors` estimates the motion x0 -> last frame: ``direct`` (:func:`estimate_flow`, as the other
#: control metrics) or ``chained`` through the frames in between (:func:`estimate_chained_flow`).
KEYPOINT_FLOWS = ("direct", "chained")


def _uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [-1, 1] -> uint8 in [0, 255], any shape."""
    return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _gray_uint8(frame: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` float in [-1, 1] -> ``(H, W)`` uint8 grayscale."""
    return cv2.cvtColor(np.ascontiguousarray(_uint8(frame.transpose(1, 2, 0))), cv2.COLOR_RGB2GRAY)


def _in_threads(count: int, work: Callable[[range], list[np.ndarray]]) -> list[np.ndarray]:
    """``work(indices)`` (a list of results) over contiguous chunks of ``range(count)`` in threads, in order.

    DIS releases the GIL, and each pair is independent: the results are the same as one loop's. ``work`` makes its
    own OpenCV algorithm object, which is not shared across threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ipoke.utils import cpu_threads

    threads = min(cpu_threads(), count)
    bounds = np.linspace(0, count, threads + 1).astype(int)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        chunks = list(pool.map(work, [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
    return [result for chunk in chunks for result in chunk]


# DIS with 4x4 patches every 2 px down to the full resolution (finest scale 0) and 50 gradient-descent iterations.
# OpenCV's PRESET_MEDIUM (8x8 patches every 3 px, finest scale 1) smooths 2-4 px wide stems into the static
# background: on the true clips of the synthetic test split at 64 px its object EPE is 0.88 of that of zero motion,
# so a perfect model could only beat "copy x0" by 12 %. These settings reach 0.75 (4 ms per 64 px pair); 4x
# upsampling or chaining frame-to-frame flows did not do better (docs/metrics.md).
DIS_SETTINGS = {"patch_size": 4, "patch_stride": 2, "finest_scale": 0, "gradient_descent_iterations": 50}


def _dis() -> cv2.DISOpticalFlow:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setPatchSize(DIS_SETTINGS["patch_size"])
    dis.setPatchStride(DIS_SETTINGS["patch_stride"])
    dis.setFinestScale(DIS_SETTINGS["finest_scale"])
    dis.setGradientDescentIterations(DIS_SETTINGS["gradient_descent_iterations"])
    return dis


def estimate_flow(first: torch.Tensor | np.ndarray, last: torch.Tensor | np.ndarray) -> np.ndarray:
    """DIS optical flow (:data:`DIS_SETTINGS`) from ``first`` to ``last``.

    Args:
        first: ``(N, 3, H, W)`` frames in [-1, 1] (or uint8).
        last: ``(N, 3, H, W)`` frames, same convention.

    Returns:
        ``(N, 2, H, W)`` float32 flow in pixels (channel 0 = dx, 1 = dy) such that ``first(p) ≈ last(p + flow(p))``.
    """
    first, last = to_unit_range(first).detach().cpu().numpy(), to_unit_range(last).detach().cpu().numpy()
    if len(first) != len(last):
        raise ValueError(f"first and last must hold the same number of frames, got {len(first)} and {len(last)}")
    if not len(first):
        return np.zeros((0, 2, *first.shape[-2:]), np.float32)

    def flows(indices: range) -> list[np.ndarray]:
        dis = _dis()  # one per thread: an OpenCV algorithm object is not shared across threads
        return [dis.calc(_gray_uint8(first[i]), _gray_uint8(last[i]), None) for i in indices]

    return np.stack(_in_threads(len(first), flows)).transpose(0, 3, 1, 2).astype(np.float32)


def _check_motion_frames(videos: torch.Tensor) -> None:
    """Refuse ``(N, T+1, ...)`` videos of fewer than 2 frames: x0 alone has no motion to score (it was compared
    with itself and scored as a static video)."""
    if videos.shape[1] < 2:
        raise ValueError(f"videos need at least 2 frames (x0 and a later one) to have motion, got {videos.shape[1]}")


def estimate_chained_flow(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """Flow from the first to the last frame of each video through the frames in between.

    The estimator of ``ipoke data prepare`` (:meth:`ipoke.data.flow.DISFlow.estimate_lags` with its defaults:
    padded DIS, consecutive flows composed in hops and refined, the direct estimate kept only where it warps clearly
    better). It follows motion far beyond the range of :func:`estimate_flow` (half the frame side), at a few times
    its cost.

    Args:
        videos: ``(N, T+1, 3, H, W)`` float in [-1, 1] or uint8, T >= 1.

    Returns:
        ``(N, 2, H, W)`` float32 flow in pixels, frame 0 -> frame T, as :func:`estimate_flow`.
    """
    from ipoke.data.flow import DISFlow

    videos = to_unit_range(videos)
    check_video(videos, "videos")
    _check_motion_frames(videos)
    rgb = _uint8(videos.detach().cpu().numpy().transpose(0, 1, 3, 4, 2))
    if not len(rgb):
        return np.zeros((0, 2, *rgb.shape[2:4]), np.float32)
    last = rgb.shape[1] - 1

    def flows(indices: range) -> list[np.ndarray]:
        estimator = DISFlow()  # one per thread: it holds an OpenCV algorithm object
        return [estimator.estimate_lags(list(rgb[i]), [last])[0] for i in indices]

    return np.stack(_in_threads(len(rgb), flows)).astype(np.float32)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def control_errors_from_flow(estimated_flow: np.ndarray, true_flow: np.ndarray, object_mask: np.ndarray,
                             poke: np.ndarray, background_poke: np.ndarray, *, window_radius: int = 2,
                             min_motion: float = 0.5, background_margin: int = 2) -> dict[str, np.ndarray]:
    """Per-clip control errors given an estimated flow (see the module doc for the definitions).

    Args:
        estimated_flow: ``(N, 2, S, S)`` estimated flow x0 -> last frame, pixels.
        true_flow: ``(N, 2, S, S)`` ground-truth flow x0 -> last frame, pixels.
        object_mask: ``(N, S, S)`` bool, object pixels in x0.
        poke: ``(N, 4)`` rows (x, y, dx, dy), pixel coordinates at size S (pixel i covers [i, i + 1), as in
            :func:`ipoke.data.pokes.poke_map_from_coords`); the window is centred on the pixel containing (x, y).
        background_poke: ``(N,)`` bool, True where the poke lies on the background.
        window_radius: Half size of the window around the poke.
        min_motion: Smallest estimated motion (pixels) for which a direction is measured.
        background_margin: Extra pixels around the object (beyond the largest true displacement) left out of the
            background.

    Returns:
        ``{key: (N,) float64}`` for the five ``control/*`` keys, NaN where a metric does not apply.
    """
    estimated_flow, true_flow = np.asarray(estimated_flow), np.asarray(true_flow)
    object_mask, background_poke = np.asarray(object_mask), np.asarray(background_poke).reshape(-1)
    poke = np.asarray(poke, dtype=np.float64)
    if estimated_flow.ndim != 4 or estimated_flow.shape[1] != 2:
        raise ValueError(f"estimated_flow must be (N, 2, S, S), got shape {estimated_flow.shape}")
    count, _, height, width = estimated_flow.shape
    if poke.size == 4 * count:  # (N, 1, 4) as a dataset's poke_coords of one poke per clip
        poke = poke.reshape(count, 4)
    expected = {"true_flow": (true_flow.shape, (count, 2, height, width)),
                "object_mask": (object_mask.shape, (count, height, width)),
                "poke": (poke.shape, (count, 4)), "background_poke": (background_poke.shape, (count,))}
    wrong = [f"{name} {tuple(shape)} (expected {want})" for name, (shape, want) in expected.items()
             if tuple(shape) != want]
    if wrong:
        raise ValueError(f"the annotations do not fit {count} videos of {height}x{width}: " + ", ".join(wrong)
                         + "; pass one row per video, in the same order")
    results = {key: np.full(count, np.nan) for key in CONTROL_KEYS}
    for i in range(count):
        flow, truth, mask = estimated_flow[i], true_flow[i], object_mask[i].astype(bool)
        error = np.linalg.norm(flow - truth, axis=0)
        magnitude = np.linalg.norm(flow, axis=0)
        if mask.any():
            results[CONTROL_OBJECT_EPE][i] = error[mask].mean()
        largest_shift = int(math.ceil(np.linalg.norm(truth, axis=0).max()))
        background = ~_dilate(mask, largest_shift + background_margin) if mask.any() else np.ones_like(mask)
        if background.any():
            results[CONTROL_BACKGROUND_MOTION][i] = magnitude[background].mean()
        if background_poke[i]:
            results[CONTROL_BACKGROUND_POKE_MOTION][i] = magnitude.mean()
            continue
        # The pixel that contains the poke, as the poke map draws it (ipoke.data.pokes: pixel i covers [i, i + 1)).
        # Until session 10 this was round(), which sends the pokes the loaders serve (at i + 0.5) to i + 1 whenever
        # i is odd (round half to even): the window sat one pixel off the poked square on most clips.
        x, y = int(math.floor(float(poke[i, 0]))), int(math.floor(float(poke[i, 1])))
        x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
        window = np.zeros_like(mask)
        window[max(y - window_radius, 0):y + window_radius + 1, max(x - window_radius, 0):x + window_radius + 1] = True
        # The poked part only: on thin stems most of the square is background, whose true motion is 0 and whose
        # estimated motion is the object's, smeared by the estimator (see the module doc).
        if (window & mask).any():
            window &= mask
        results[CONTROL_POKE_EPE][i] = error[window].mean()
        motion = flow[:, window].mean(axis=1)
        poke_vector = np.asarray(poke[i, 2:4], dtype=np.float64)
        if np.linalg.norm(motion) >= min_motion and np.linalg.norm(poke_vector) > 0:
            cosine = motion @ poke_vector / (np.linalg.norm(motion) * np.linalg.norm(poke_vector))
            results[CONTROL_POKE_ANGLE_DEG][i] = math.degrees(math.acos(float(np.clip(cosine, -1.0, 1.0))))
    return results


def control_errors(videos: torch.Tensor | np.ndarray, true_flow: torch.Tensor | np.ndarray,
                   object_mask: torch.Tensor | np.ndarray, poke: torch.Tensor | np.ndarray,
                   background_poke: torch.Tensor | np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    """Per-clip control errors of generated videos (DIS flow from frame 0 to the last frame).

    Args:
        videos: ``(N, T+1, 3, S, S)`` generated videos including x0, float in [-1, 1] or uint8.
        true_flow: ``(N, 2, S, S)`` ground-truth flow x0 -> last frame, pixels (channel 0 = dx).
        object_mask: ``(N, S, S)`` bool (or 0/1), object pixels in x0.
        poke: ``(N, 4)`` rows (x, y, dx, dy) in pixels at size S.
        background_poke: ``(N,)`` bool, True where the poke is on the background.
        **kwargs: ``window_radius``, ``min_motion``, ``background_margin`` of :func:`control_errors_from_flow`.

    Returns:
        ``{key: (N,) float64 array}`` for the five ``control/*`` keys (NaN where not applicable).
    """
    videos = to_unit_range(videos)
    check_video(videos, "videos")
    if videos.shape[0] == 0 or videos.shape[2] != 3:
        raise ValueError(f"videos must be (N, T+1, 3, S, S) with N >= 1 and RGB frames, got {tuple(videos.shape)}")
    _check_motion_frames(videos)
    estimated = estimate_flow(videos[:, 0], videos[:, -1])
    return control_errors_from_flow(
        estimated, as_tensor(true_flow).detach().cpu().numpy().astype(np.float32),
        as_tensor(object_mask).detach().cpu().numpy().astype(bool), as_tensor(poke).detach().cpu().double().numpy(),
        as_tensor(background_poke).detach().cpu().numpy().astype(bool).reshape(-1), **kwargs)


def keypoint_errors(videos: torch.Tensor | np.ndarray, keypoint_pokes: torch.Tensor | np.ndarray, *,
                    flow: str = "direct") -> np.ndarray:
    """Targeted keypoint error of each video (see the module doc): where the poked joint ends, in pixels.

    Args:
        videos: ``(N, T+1, 3, S, S)`` generated videos including x0, float in [-1, 1] or uint8.
        keypoint_pokes: ``(N, 4)`` rows ``(x, y, dx, dy)`` at size S: the joint at ``(x, y)`` in x0 ends at
            ``(x + dx, y + dy)`` in the real clip's last frame. ``(x, y)`` in the convention of pokes (pixel ``i``
            covers ``[i, i + 1)``, as ``poke_coords`` of :class:`ipoke.data.PokeDataset` and the poke map), so the
            flow is read at ``(x - 0.5, y - 0.5)`` in pixel-centre coordinates. Rows with a NaN are not scored.
        flow: ``"direct"`` (DIS from x0 to the last frame, :func:`estimate_flow`; motion up to about a tenth of the
            frame side) or ``"chained"`` (through the frames in between, :func:`estimate_chained_flow`; for motion
            beyond that, as on real footage).

    Returns:
        ``(N,)`` float64 distances in pixels between ``(x + dx, y + dy)`` and the joint moved by the estimated flow,
        NaN for unscored rows.
    """
    if flow not in KEYPOINT_FLOWS:
        raise ValueError(f"flow must be one of {', '.join(KEYPOINT_FLOWS)}, got {flow!r}")
    videos = to_unit_range(videos)
    check_video(videos, "videos")
    _check_motion_frames(videos)
    pokes = as_tensor(keypoint_pokes).detach().cpu().double().numpy().reshape(-1, 4)
    if len(pokes) != videos.shape[0]:
        raise ValueError(f"{videos.shape[0]} videos but {len(pokes)} keypoint pokes")
    errors = np.full(len(pokes), np.nan)
    scored = np.isfinite(pokes).all(axis=1)
    if not scored.any():
        return errors
    if flow == "chained":
        flows = estimate_chained_flow(videos[torch.from_numpy(scored)])
    else:
        flows = estimate_flow(videos[scored, 0], videos[scored, -1])
    for row, field in zip(np.flatnonzero(scored), flows):
        x, y, dx, dy = pokes[row]
        # Sub-pixel flow at the joint (bilinear; border pixels repeat beyond the image); pixel centres at integers.
        point = np.array([[[x - 0.5, y - 0.5]]], np.float32)
        moved = cv2.remap(field.transpose(1, 2, 0), point[..., 0], point[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)[0, 0]
        errors[row] = math.hypot(moved[0] - dx, moved[1] - dy)
    return errors


class ControlAccuracy:
    """Streaming control accuracy: :meth:`update` per batch, :meth:`compute` for the means over applicable clips.

    Args:
        window_radius: Half size of the window around the poke (default 2, the 5x5 poke square).
        min_motion: Smallest estimated motion (pixels) for which the poke angle is measured.
        background_margin: Pixels around the object (beyond the largest true displacement) excluded from the
            background.
    """

    def __init__(self, *, window_radius: int = 2, min_motion: float = 0.5, background_margin: int = 2) -> None:
        self.options = {"window_radius": window_radius, "min_motion": min_motion,
                        "background_margin": background_margin}
        self.means = MeanAccumulator()
        self.n_clips = 0

    def update(self, videos: torch.Tensor | np.ndarray, true_flow: torch.Tensor | np.ndarray,
               object_mask: torch.Tensor | np.ndarray, poke: torch.Tensor | np.ndarray,
               background_poke: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Add a batch (arguments as :func:`control_errors`); returns its per-clip errors."""
        errors = control_errors(videos, true_flow, object_mask, poke, background_poke, **self.options)
        self.means.update(errors)
        self.n_clips += len(videos)
        return errors

    def compute(self) -> dict[str, float | int]:
        """``{control/*: mean over clips where it applies (NaN if none), "n_clips": clips seen}``."""
        means = self.means.compute()
        return {**{key: means.get(key, math.nan) for key in CONTROL_KEYS}, N_CLIPS: self.n_clips}
