"""Clip augmentation applied identically to every frame, the flow and the masks of one clip.

Colour: brightness, contrast, saturation and hue jitter (each with probability ``colour_probability`` as a group).
Geometry: rotation and translation about the image centre (with probability ``geometry_probability``), reflect
padding at the borders. The flow field is warped like an image **and its vectors are rotated** by the same angle:
a point ``x`` that moves to ``x + f`` moves, after the transform ``A``, from ``A x`` to ``A x + R f``. The reference
warped the flow map but left the vectors unrotated, so pokes on rotated clips pointed the wrong way; fixed here.
The reference's hue range was asymmetric (``U(-0.15, 0.30)``); ours is symmetric.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the clip augmentation (defaults as the reference configs, with a symmetric hue range)."""

    colour_probability: float = 0.8
    geometry_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.5
    saturation: float = 0.4
    hue: float = 0.15
    max_rotation_deg: float = 15.0
    max_translation: float = 0.05  # fraction of the image side


def jitter_colour(frames: np.ndarray, rng: np.random.Generator, settings: AugmentSettings) -> np.ndarray:
    """Same colour jitter on all frames ``(N, S, S, 3)`` uint8; returns uint8."""
    brightness = 1 + rng.uniform(-settings.brightness, settings.brightness)
    contrast = 1 + rng.uniform(-settings.contrast, settings.contrast)
    saturation = 1 + rng.uniform(-settings.saturation, settings.saturation)
    hue_shift = rng.uniform(-settings.hue, settings.hue) * 180.0  # OpenCV hue is 0..180
    clip = frames.astype(np.float32) * brightness
    mean = clip.mean()
    clip = mean + contrast * (clip - mean)
    gray = clip.mean(axis=-1, keepdims=True)
    clip = np.clip(gray + saturation * (clip - gray), 0, 255).astype(np.uint8)
    if abs(hue_shift) > 0.5:
        flat = clip.reshape(-1, clip.shape[2], 3)
        hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(hue_shift))) % 180).astype(np.uint8)
        clip = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(frames.shape)
    return clip


def affine_matrix(size: int, angle_deg: float, shift_x: float, shift_y: float) -> np.ndarray:
    """Forward 2x3 matrix: rotation by ``angle_deg`` (counter-clockwise on screen) about the centre, then a shift."""
    matrix = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), angle_deg, 1.0)
    matrix[:, 2] += (shift_x, shift_y)
    return matrix


def warp_clip(frames: np.ndarray, matrix: np.ndarray, *, flow: np.ndarray | None = None,
              masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Apply one affine transform to frames ``(N, S, S, 3)``, flow ``(2, S, S)`` and masks ``(M, S, S)``.

    Returns:
        The warped ``(frames, flow, masks)``; flow vectors are rotated by the matrix's linear part.
    """
    size = frames.shape[1]
    warp = dict(dsize=(size, size), borderMode=cv2.BORDER_REFLECT_101)
    out_frames = np.stack([cv2.warpAffine(frame, matrix, flags=cv2.INTER_LINEAR, **warp) for frame in frames])
    out_flow = None
    if flow is not None:
        # Out-of-image content comes back reflected, so its flow vectors would be mirrored: use zeros there instead.
        moved = np.stack([cv2.warpAffine(np.ascontiguousarray(channel), matrix, flags=cv2.INTER_LINEAR,
                                         dsize=(size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                          for channel in flow.astype(np.float32)])
        linear = matrix[:, :2]
        out_flow = np.einsum("ij,jhw->ihw", linear, moved).astype(np.float32)
    out_masks = None
    if masks is not None:
        out_masks = np.stack([cv2.warpAffine(mask, matrix, flags=cv2.INTER_NEAREST, dsize=(size, size),
                                             borderMode=cv2.BORDER_CONSTANT, borderValue=0) for mask in masks])
    return out_frames, out_flow, out_masks


def augment_clip(frames: np.ndarray, flow: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator,
                 settings: AugmentSettings = AugmentSettings()) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random colour and geometry augmentation of a clip, consistent across frames, flow and masks.

    Args:
        frames: uint8 ``(N, S, S, 3)``.
        flow: float ``(2, S, S)`` from the first to the last frame, pixels.
        masks: Optional uint8 ``(M, S, S)``.
        rng: Random generator.
        settings: Ranges.

    Returns:
        ``(frames, flow, masks)`` augmented.
    """
    if rng.random() < settings.colour_probability:
        frames = jitter_colour(frames, rng, settings)
    if rng.random() < settings.geometry_probability:
        size = frames.shape[1]
        max_shift = settings.max_translation * size
        matrix = affine_matrix(size, rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg),
                               rng.uniform(-max_shift, max_shift), rng.uniform(-max_shift, max_shift))
        frames, flow, masks = warp_clip(frames, matrix, flow=flow, masks=masks)
    return frames, flow, masks
