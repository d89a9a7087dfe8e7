"""PSNR and SSIM between predicted and ground-truth videos, per frame.

Both take videos in [-1, 1] (uint8 inputs are mapped there first). PSNR uses data range 2, which gives exactly the
numbers of the [0, 1] convention with range 1 (or [0, 255] with 255): it depends only on the error relative to the
range. SSIM is different: its luminance term compares the local means relative to zero, so shifting the values
changes it. By default it is computed as iPOKE's evaluation computed it, on the [-1, 1] frames with data range 2
(``value_range=(-1, 1)``); the [0, 1] convention of the interactive image-to-video predecessor, of scikit-image on
uint8 or [0, 1] images and of most image libraries (``value_range=(0, 1)``) gives other values on the same frames
(in ``tests/metrics/test_image_quality.py``: 0.632 instead of 0.566 for a textured frame with noise, 0.804 instead
of 0.993 for a dark one brightened by 0.1, whose means sit near 0 in [0, 1]). Compare SSIM only across
numbers of one convention. SSIM follows Wang et al. 2004 with the reference settings: 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, population (biased) local statistics, the map averaged over the valid region (no
padding) and over channels. This matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=hi - lo, channel_axis=...)`` on frames in ``value_range``. (The
original iPOKE code took the data range from each batch's min and max, which makes SSIM depend on batch content;
here it is fixed.)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ipoke.metrics.common import to_unit_range

DATA_RANGE = 2.0
# The PSNR of frames as close as 8-bit rounding makes them: uniform rounding noise of one uint8 step (2 / 255 in
# [-1, 1] units) has MSE step² / 12, so PSNR = 10 log10(12 * 255²) = 58.92 dB with data range 2. Frames closer than
# that are identical as far as 8-bit footage can tell, and every PSNR is capped there. (Until session 20 the cap was
# an arbitrary 100 dB: on the ~1 in 12 synthetic clips where nothing moves, copy_x0 scored 100 dB on every frame,
# and that alone put its mean PSNR 8.5 dB above the model's, which it tied on the clips that move.)
MAX_PSNR_DB = 10.0 * math.log10(12.0 * 255.0 ** 2)


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
        max_db: Cap for identical frames (MSE 0 would give inf and spoil averages): by default the PSNR of 8-bit
            rounding noise, 58.92 dB (``MAX_PSNR_DB``).

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


def _valid_blur_matrix(length: int, window: torch.Tensor) -> torch.Tensor:
    """``(length - k + 1, length)`` matrix whose product with a signal is its valid correlation with ``window``."""
    outputs, taps = length - window.numel() + 1, window.numel()
    columns = torch.arange(outputs, device=window.device)[:, None] + torch.arange(taps, device=window.device)
    return torch.zeros(outputs, length, dtype=window.dtype, device=window.device).scatter_(
        1, columns, window.expand(outputs, taps))


# Frames per SSIM chunk: bounds the float64 temporaries to about 0.5 GB for 3 x 128 x 128 frames (chunks of 256
# peaked at 0.94 GB).
_SSIM_CHUNK_FRAMES = 128


def ssim_per_frame(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, *,
                   value_range: tuple[float, float] = (-1.0, 1.0), data_range: float | None = None,
                   kernel_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each frame (Gaussian window, valid region, mean over channels).

    Args:
        prediction: ``(..., C, H, W)`` with H, W >= ``kernel_size``; float in [-1, 1] or uint8.
        target: Same shape and convention.
        value_range: ``(lo, hi)`` the frames are mapped to (linearly from [-1, 1]) before SSIM: ``(-1, 1)``, the
            default, is iPOKE's convention; ``(0, 1)`` the common image convention, which gives other values (see
            the module doc).
        data_range: Peak-to-peak range in ``value_range`` units (default ``hi - lo``).
        kernel_size: Gaussian window size.
        sigma: Gaussian standard deviation.
        k1: Luminance stabiliser constant.
        k2: Contrast stabiliser constant.

    Returns:
        ``(...)`` float32 SSIM, 1 for identical frames.
    """
    low, high = (float(value) for value in value_range)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
    data_range = high - low if data_range is None else data_range
    prediction, target = _pair(prediction, target)
    leading, (channels, height, width) = prediction.shape[:-3], prediction.shape[-3:]
    if height < kernel_size or width < kernel_size:
        raise ValueError(f"SSIM with a {kernel_size}x{kernel_size} window needs frames at least that large, "
                         f"got {height}x{width}")
    scale, offset = (high - low) / 2, (high + low) / 2
    flat_prediction = prediction.reshape(-1, channels, height, width)
    flat_target = target.reshape(-1, channels, height, width)
    window = _gaussian_window(kernel_size, sigma, torch.float64, prediction.device)
    # The separable Gaussian as two products with banded matrices: the same sums as a depthwise convolution, but
    # through the BLAS (4-5x faster on CPU, where SSIM was the slowest metric of an evaluation on a GPU machine).
    rows, columns = _valid_blur_matrix(height, window), _valid_blur_matrix(width, window).T
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def blur(image: torch.Tensor) -> torch.Tensor:
        return rows @ image @ columns

    scores = []
    for first in range(0, flat_prediction.shape[0], _SSIM_CHUNK_FRAMES):
        x = flat_prediction[first:first + _SSIM_CHUNK_FRAMES].double() * scale + offset
        y = flat_target[first:first + _SSIM_CHUNK_FRAMES].double() * scale + offset
        mean_x, mean_y = blur(x), blur(y)
        var_x = blur(x * x) - mean_x ** 2
        var_y = blur(y * y) - mean_y ** 2
        cov_xy = blur(x * y) - mean_x * mean_y
        numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
        scores.append((numerator / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))).mean(dim=(1, 2, 3)))
    if not scores:  # no frames
        return prediction.new_zeros(leading)
    return torch.cat(scores).float().reshape(leading)


def psnr(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, **kwargs) -> float:
    """Mean of :func:`psnr_per_frame` over all frames (same arguments)."""
    return float(psnr_per_frame(prediction, target, **kwargs).mean())


def ssim(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, **kwargs) -> float:
    """Mean of :func:`ssim_per_frame` over all frames (same arguments)."""
    return float(ssim_per_frame(prediction, target, **kwargs).mean())
