"""Metric keys of the evaluation JSON, the "metric unavailable" error, and input-range conversions.

All metric functions take videos ``(B, T, C, H, W)``; float videos are expected in [-1, 1] (ipoke's convention) and
uint8 videos in [0, 255]. :func:`to_unit_range` turns either into float [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch

FVD = "fvd"
LPIPS = "lpips"
SSIM = "ssim"
PSNR = "psnr"
DIVERSITY_MSE = "diversity/mse"
DIVERSITY_LPIPS = "diversity/lpips"
CONTROL_POKE_EPE = "control/poke_epe"
CONTROL_POKE_ANGLE_DEG = "control/poke_angle_deg"
CONTROL_OBJECT_EPE = "control/object_epe"
CONTROL_BACKGROUND_MOTION = "control/background_motion"
CONTROL_BACKGROUND_POKE_MOTION = "control/background_poke_motion"
CONTROL_KEYPOINT_ERROR = "control/keypoint_error"
N_CLIPS = "n_clips"
N_SAMPLES = "n_samples"

METRIC_KEYS = (
    FVD, LPIPS, SSIM, PSNR, DIVERSITY_MSE, DIVERSITY_LPIPS, CONTROL_POKE_EPE, CONTROL_POKE_ANGLE_DEG,
    CONTROL_OBJECT_EPE, CONTROL_BACKGROUND_MOTION, CONTROL_BACKGROUND_POKE_MOTION, CONTROL_KEYPOINT_ERROR, N_CLIPS,
    N_SAMPLES,
)


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed on this machine (typically: its pretrained weights are missing).

    Evaluation catches it and reports the metric as unavailable instead of computing it with a stand-in network.
    """


def as_tensor(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor view of a tensor or numpy array (no copy when possible)."""
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))


def to_unit_range(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float32 copy of a video in [-1, 1].

    Args:
        video: ``(..., C, H, W)`` uint8 in [0, 255], or float already in [-1, 1].

    Returns:
        Float32 tensor of the same shape in [-1, 1].
    """
    video = as_tensor(video)
    if video.dtype == torch.uint8:
        return video.float() / 127.5 - 1.0
    if not video.is_floating_point():
        raise TypeError(f"videos must be uint8 in [0, 255] or float in [-1, 1], got dtype {video.dtype}")
    return video.float()


def check_video(video: torch.Tensor, name: str = "video") -> None:
    """Raise ``ValueError`` unless ``video`` is 5-D ``(B, T, C, H, W)``."""
    if video.ndim != 5:
        raise ValueError(f"{name} must be (B, T, C, H, W), got shape {tuple(video.shape)}")
