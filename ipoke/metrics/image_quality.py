"""PSNR and SSIM between predicted and ground-truth videos, per frame.

Both are computed on the videos as given, in [-1, 1] (uint8 inputs are mapped there first), so the data range is
2 (``data_range=2.0``); this gives exactly the numbers the usual [0, 1] convention gives with data range 1. SSIM
follows Wang et al. 2004 with the reference settings: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
population (biased) local statistics, the map averaged over the valid region (no padding) and over channels. This
matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=2, channel_axis=...)``. (The original iPOKE code took the data range from
each batch's min and max, which makes SSIM depend on batch content; here it is fixed.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ipoke.metrics.common import to_unit_range

DATA_RANGE = 2.0
MAX_PSNR_DB = 100.0


def _pair(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, ...]:
    prediction, target = to_unit_range(prediction), to_unit_range(target)
    if prediction.shape != target.shape or prediction.ndim < 3:
        raise ValueError(f"prediction and target must have the same shape (..., C, H, W), got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    return prediction, target.to(prediction.device)


def psnr_per_frame(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, *,
                   data_range: float = DATA_RANGE, max_db: float = MAX_PSNR_DB) -> torch.Tensor:
    """Peak signal-to-noise ratio of each frame, 10 log10(data_range² / MSE).

    Args:
        prediction: ``(..., C, H, W)``, e.g. ``(B, T, C, H, W)``; float in [-1, 1] or uint8 in [0, 255].
        target: Same shape and convention.
        data_range: Peak-to-peak range of the values *after* uint8 inputs are mapped to [-1, 1] (2, the default;
            not 255 for uint8 frames, which would add about 44 dB).
        max_db: Cap for identical frames (MSE 0 would give inf and spoil averages).

    Returns:
        ``(...)`` float32 PSNR in dB, e.g. ``(B, T)``.
    """
    prediction, target = _pair(prediction, target)
    mse = (prediction.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))
    psnr = 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-300))
    return psnr.clamp(max=max_db).float()


def _gaussian_window(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    window = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return window / window.sum()


def ssim_per_frame(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, *,
                   data_range: float = DATA_RANGE, kernel_size: int = 11, sigma: float = 1.5,
                   k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each frame (Gaussian window, valid region, mean over channels).

    Args:
        prediction: ``(..., C, H, W)`` with H, W >= ``kernel_size``; float in [-1, 1] or uint8.
        target: Same shape and convention.
        data_range: Peak-to-peak range of the values *after* uint8 inputs are mapped to [-1, 1] (2, the default;
            not 255 for uint8 frames, which would add about 44 dB).
        kernel_size: Gaussian window size.
        sigma: Gaussian standard deviation.
        k1: Luminance stabiliser constant.
        k2: Contrast stabiliser constant.

    Returns:
        ``(...)`` float32 SSIM, 1 for identical frames.
    """
    prediction, target = _pair(prediction, target)
    leading, (channels, height, width) = prediction.shape[:-3], prediction.shape[-3:]
    if height < kernel_size or width < kernel_size:
        raise ValueError(f"SSIM with a {kernel_size}x{kernel_size} window needs frames at least that large, "
                         f"got {height}x{width}")
    x = prediction.reshape(-1, channels, height, width).double()
    y = target.reshape(-1, channels, height, width).double()
    window = _gaussian_window(kernel_size, sigma, x.dtype, x.device)
    vertical = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    horizontal = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(image, vertical, groups=channels), horizontal, groups=channels)

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x ** 2
    var_y = blur(y * y) - mean_y ** 2
    cov_xy = blur(x * y) - mean_x * mean_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    ssim_map = numerator / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).float().reshape(leading)


def psnr(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, **kwargs) -> float:
    """Mean of :func:`psnr_per_frame` over all frames (same arguments)."""
    return float(psnr_per_frame(prediction, target, **kwargs).mean())


def ssim(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, **kwargs) -> float:
    """Mean of :func:`ssim_per_frame` over all frames (same arguments)."""
    return float(ssim_per_frame(prediction, target, **kwargs).mean())
