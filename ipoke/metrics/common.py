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
    """A tensor view of a tensor or numpy array (no copy when possible: a numpy view with negative strides, such as
    ``video[:, ::-1]``, is copied, since torch tensors cannot have them)."""
    if isinstance(array, torch.Tensor):
        return array
    array = np.asarray(array)
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


# A float video beyond this is not in [-1, 1] (resampling may overshoot a little; [0, 255] floats go far beyond).
FLOAT_RANGE_LIMIT = 1.5


def to_unit_range(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float32 copy of a video in [-1, 1].

    Args:
        video: ``(..., C, H, W)`` uint8 in [0, 255], or float already in [-1, 1].

    Returns:
        Float32 tensor of the same shape in [-1, 1].

    Raises:
        ValueError: For a float video with NaN or inf values, or values beyond +-1.5 (e.g. floats in [0, 255],
            which every metric would silently misread). Floats in [0, 1] cannot be told from [-1, 1] videos: map
            them with ``2 * x - 1``.
    """
    video = as_tensor(video)
    if video.dtype == torch.uint8:
        return video.float() / 127.5 - 1.0
    if not video.is_floating_point():
        raise TypeError(f"videos must be uint8 in [0, 255] or float in [-1, 1], got dtype {video.dtype}")
    if video.numel() and video.device.type != "meta":
        finite = torch.isfinite(video.detach())
        if not finite.all():  # NaN failed every range comparison and scored as a frame (or was dropped silently)
            raise ValueError(f"videos must be finite, but {int((~finite).sum())} of {video.numel()} values are NaN or "
                             "inf (a model that diverged?)")
        low, high = video.detach().aminmax()
        if low < -FLOAT_RANGE_LIMIT or high > FLOAT_RANGE_LIMIT:
            raise ValueError(f"float videos must be in [-1, 1], but this one spans [{low.item():.4g}, "
                             f"{high.item():.4g}]: pass uint8 frames for [0, 255] values, or map them with "
                             "x / 127.5 - 1")
    return video.float()


def check_video(video: torch.Tensor, name: str = "video") -> None:
    """Raise ``ValueError`` unless ``video`` is 5-D ``(B, T, C, H, W)``."""
    if video.ndim != 5:
        raise ValueError(f"{name} must be (B, T, C, H, W), got shape {tuple(video.shape)}")
