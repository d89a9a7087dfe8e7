"""Diversity of several samples generated from the same x0 and poke.

For K samples, the scores average a distance over all K(K-1)/2 unordered pairs of samples (the same as over all
ordered pairs j != k, as in the original iPOKE evaluation); higher means more diverse:

* ``diversity/mse``: mean squared difference between the two sample videos, in [-1, 1] units.
* ``diversity/lpips``: LPIPS-Alex between corresponding frames, averaged over frames and pairs (only with a real
  :class:`~ipoke.metrics.perceptual.LearnedPerceptualSimilarity`; absent otherwise).

x0 is the same in every sample and would dilute the scores; pass videos without it or set ``skip_first_frame``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ipoke.metrics.common import DIVERSITY_LPIPS, DIVERSITY_MSE, N_SAMPLES, check_video, to_unit_range
from ipoke.metrics.perceptual import LearnedPerceptualSimilarity


def _samples(samples: torch.Tensor | np.ndarray, skip_first_frame: bool) -> torch.Tensor:
    samples = to_unit_range(samples)
    check_video(samples, "samples")
    if samples.shape[0] < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {samples.shape[0]}")
    if skip_first_frame and samples.shape[1] < 2:
        raise ValueError(f"skip_first_frame leaves no frame of these {samples.shape[1]}-frame samples to compare")
    return samples[:, 1:] if skip_first_frame else samples


def pairwise_mse(samples: torch.Tensor | np.ndarray, *, skip_first_frame: bool = False) -> float:
    """Mean over sample pairs of the mean squared difference of the two videos.

    Args:
        samples: ``(K, T, C, H, W)`` K >= 2 samples for one condition, float in [-1, 1] or uint8.
        skip_first_frame: Drop frame 0 (x0) first.

    Returns:
        The score as a float (0 when all samples are equal).
    """
    samples = _samples(samples, skip_first_frame).double()
    pairs = itertools.combinations(range(samples.shape[0]), 2)
    return float(torch.stack([(samples[j] - samples[k]).pow(2).mean() for j, k in pairs]).mean())


def pairwise_lpips(samples: torch.Tensor | np.ndarray, *, model: LearnedPerceptualSimilarity,
                   skip_first_frame: bool = False) -> float:
    """Mean over sample pairs and frames of LPIPS between corresponding frames.

    Args:
        samples: ``(K, T, 3, H, W)`` K >= 2 samples for one condition.
        model: A loaded LPIPS network.
        skip_first_frame: Drop frame 0 (x0) first.

    Returns:
        The score as a float.
    """
    samples = _samples(samples, skip_first_frame)
    first, second = zip(*itertools.combinations(range(samples.shape[0]), 2))
    return float(model.video_distance(samples[list(first)], samples[list(second)]).mean())


def diversity(samples: torch.Tensor | np.ndarray, *, lpips_model: LearnedPerceptualSimilarity | None = None,
              skip_first_frame: bool = False) -> dict[str, float | int]:
    """Diversity scores of K samples of one condition.

    Args:
        samples: ``(K, T, C, H, W)`` float in [-1, 1] or uint8.
        lpips_model: LPIPS network; without it ``diversity/lpips`` is left out (reported unavailable).
        skip_first_frame: Drop frame 0 (x0) first.

    Returns:
        ``{"diversity/mse": ..., ["diversity/lpips": ...,] "n_samples": K}``.
    """
    scores: dict[str, float | int] = {DIVERSITY_MSE: pairwise_mse(samples, skip_first_frame=skip_first_frame)}
    if lpips_model is not None:
        scores[DIVERSITY_LPIPS] = pairwise_lpips(samples, model=lpips_model, skip_first_frame=skip_first_frame)
    scores[N_SAMPLES] = int(samples.shape[0])
    return scores
