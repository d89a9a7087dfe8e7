"""Likelihood of a normalising flow under a standard Gaussian base distribution."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_nll(r: Tensor, log_det: Tensor) -> Tensor:
    """Negative log-likelihood of the flow input, without the constant: ``mean_B[0.5 ||r||^2 - log|det J|]``.

    This is the reference's training loss (summed over dimensions, averaged over the batch, not normalised by the
    dimensionality). A perfect flow scores about ``D / 2`` on the ``0.5 ||r||^2`` term (:func:`reference_nll`).

    Args:
        r: ``(B, ...)`` flow output.
        log_det: ``(B,)`` ``log|det dr/dz|``.

    Returns:
        Scalar loss (fp32 at least).
    """
    r = r.float() if r.dtype in (torch.float16, torch.bfloat16) else r
    return (0.5 * r.pow(2).flatten(1).sum(dim=1) - log_det.to(r.dtype)).mean()


def bits_per_dim(nll: Tensor, num_dimensions: int) -> Tensor:
    """The full Gaussian NLL (constant ``D/2 log 2 pi`` added back) in bits per dimension.

    Args:
        nll: Value of :func:`gaussian_nll` (nats, summed over dimensions, without the constant).
        num_dimensions: ``D`` (``z_dim * 8 * 8`` for iPOKE).

    Returns:
        Scalar; can be negative, since the flow models a continuous density.
    """
    return (nll / num_dimensions + _HALF_LOG_2PI) / math.log(2)


def reference_nll(num_dimensions: int) -> float:
    """Expected ``0.5 ||r||^2`` of a true ``N(0, I)`` sample in ``D`` dimensions (``D / 2``), logged for comparison."""
    return 0.5 * num_dimensions
