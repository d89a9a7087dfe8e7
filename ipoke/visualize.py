"""Pictures of pokes and samples: arrows on start frames, side-by-side overview grids."""

from __future__ import annotations

import cv2
import numpy as np


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 ``(..., H, W, 3)`` frames by an integer factor."""
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def draw_pokes(frame: np.ndarray, pokes: np.ndarray, *, factor: int = 1, color=(255, 40, 40)) -> np.ndarray:
    """Draw pokes ``(P, 4)`` rows ``(x, y, dx, dy)`` (pixels of ``frame``) as arrows on an upscaled copy.

    Args:
        frame: uint8 ``(S, S, 3)``.
        pokes: Pokes in the frame's pixels.
        factor: Integer upscaling before drawing (arrows on 64 px frames are hard to see).
        color: RGB arrow colour.

    Returns:
        uint8 ``(S * factor, S * factor, 3)``.
    """
    canvas = np.array(upscale(frame, factor), dtype=np.uint8, order="C", copy=True)  # cv2 draws in place
    for x, y, dx, dy in np.asarray(pokes, np.float32).reshape(-1, 4):
        start = (int(round(x * factor)), int(round(y * factor)))
        end = (int(round((x + dx) * factor)), int(round((y + dy) * factor)))
        if start == end:
            cv2.circle(canvas, start, max(2, factor), color, -1, cv2.LINE_AA)
        else:
            cv2.arrowedLine(canvas, start, end, color, max(1, factor // 2), cv2.LINE_AA, tipLength=0.3)
    return canvas


def overview_frames(first_frame: np.ndarray, pokes: np.ndarray, videos: np.ndarray, *, factor: int = 4,
                    gap: int = 4) -> np.ndarray:
    """Animated overview: x0 with the poke arrows, then each sample, side by side.

    Args:
        first_frame: uint8 ``(S, S, 3)``.
        pokes: ``(P, 4)`` in the frame's pixels.
        videos: uint8 ``(K, T, S, S, 3)`` samples.
        factor: Upscaling of everything.
        gap: White pixels between panels.

    Returns:
        uint8 ``(T, S * factor, (K + 1) * (S * factor + gap) - gap, 3)``.
    """
    arrow = draw_pokes(first_frame, pokes, factor=factor)
    n_samples, n_frames = videos.shape[:2]
    side = arrow.shape[0]
    width = (n_samples + 1) * (side + gap) - gap
    out = np.full((n_frames, side, width, 3), 255, np.uint8)
    out[:, :, :side] = arrow
    for k in range(n_samples):
        left = (k + 1) * (side + gap)
        out[:, :, left:left + side] = upscale(videos[k], factor)
    return out
