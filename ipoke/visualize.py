"""Pictures of pokes and samples: arrows on start frames, side-by-side overview grids."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

REFERENCE_BORDER = (40, 200, 40)  # RGB of the frame around a reference clip in an overview


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


def overview_frames(first_frame: np.ndarray, pokes: np.ndarray, videos: np.ndarray, *,
                    reference: np.ndarray | None = None, factor: int = 4, gap: int = 4) -> np.ndarray:
    """Animated overview: x0 with the poke arrows, optionally a reference clip, then each sample, side by side.

    Args:
        first_frame: uint8 ``(S, S, 3)``.
        pokes: ``(P, 4)`` in the frame's pixels.
        videos: uint8 ``(K, T, S, S, 3)`` samples.
        reference: uint8 ``(T, S, S, 3)``, e.g. the real clip the poke was simulated from; drawn as the second
            panel inside a green border (``REFERENCE_BORDER``) so it cannot be mistaken for a sample.
        factor: Upscaling of everything.
        gap: White pixels between panels.

    Returns:
        uint8 ``(T, S * factor, (K + 1 + R) * (S * factor + gap) - gap, 3)``, R = 1 with a reference, else 0.
    """
    arrow = draw_pokes(first_frame, pokes, factor=factor)
    n_samples, n_frames = videos.shape[:2]
    panels = [upscale(video, factor) for video in videos]
    if reference is not None:
        if reference.shape != videos.shape[1:]:
            raise ValueError(f"reference clip has shape {reference.shape}, the samples {videos.shape[1:]}")
        framed = np.array(upscale(reference, factor), dtype=np.uint8, copy=True)
        width = max(1, factor // 2)
        framed[:, :width], framed[:, -width:] = REFERENCE_BORDER, REFERENCE_BORDER
        framed[:, :, :width], framed[:, :, -width:] = REFERENCE_BORDER, REFERENCE_BORDER
        panels.insert(0, framed)
    side = arrow.shape[0]
    width = (len(panels) + 1) * (side + gap) - gap
    out = np.full((n_frames, side, width, 3), 255, np.uint8)
    out[:, :, :side] = arrow
    for k, panel in enumerate(panels):
        left = (k + 1) * (side + gap)
        out[:, :, left:left + side] = panel
    return out


def write_sample_outputs(out: Path, index: int, first_frame: torch.Tensor, pokes: np.ndarray, videos: torch.Tensor,
                         *, fps: float, scale: int, reference: torch.Tensor | None = None) -> None:
    """Write what ``ipoke sample`` writes for one start frame into ``out``: ``sample_<index>_<k>.mp4/.gif`` per
    sample, ``overview_<index>.gif`` (x0 with the poke arrows, then the samples) and its last frame as a png.

    Args:
        out: An existing folder.
        index: Number of the start frame in the file names.
        first_frame: ``(3, S, S)`` in [-1, 1].
        pokes: ``(P, 4)`` rows ``(x, y, dx, dy)`` in pixels at size S, drawn on the overview.
        videos: ``(K, T+1, 3, S, S)`` in [-1, 1].
        fps: Frames per second.
        scale: Integer upscaling of every written frame.
        reference: ``(T+1, 3, S, S)`` in [-1, 1], a clip shown in the overview after x0 in a green border (the real
            clip of a dataset sample, or the clip whose motion a transfer replays); not written on its own.
    """
    from ipoke.data.video_io import write_gif, write_image_file, write_video
    from ipoke.sampling import to_uint8

    frames = to_uint8(videos)  # (K, T+1, S, S, 3)
    for k, video in enumerate(frames):
        write_video(out / f"sample_{index}_{k}.mp4", upscale(video, scale), fps=fps)
        write_gif(out / f"sample_{index}_{k}.gif", upscale(video, scale), fps=fps)
    overview = overview_frames(to_uint8(first_frame), pokes, frames, factor=scale,
                               reference=None if reference is None else to_uint8(reference))
    write_gif(out / f"overview_{index}.gif", overview, fps=fps)
    write_image_file(out / f"overview_{index}.png", overview[-1])
