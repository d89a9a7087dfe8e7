"""Probability distributions over latent maps."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """Gaussian with diagonal covariance over a latent map, parameterised by mean and log-variance.

    Args:
        mean: ``(B, C, H, W)`` (any shape works; the batch is the first axis).
        logvar: Same shape as ``mean``. Clamped to ``[-30, 20]`` so that ``exp`` stays finite.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation, same shape as ``mean``."""
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample ``mean + std * eps``, differentiable w.r.t. mean and logvar.

        Args:
            generator: Source of ``eps`` (on the device of ``mean``); ``None`` uses the global RNG.

        Returns:
            A tensor shaped like ``mean``.
        """
        if generator is None:
            # randn_like, not randn(self.mean.shape): under torch.compile a new batch size makes the shape symbolic,
            # and randn(shape) then failed to trace (the compiled autoencoder stopped at the first smaller batch).
            eps = torch.randn_like(self.mean)
        else:
            eps = _seeded_normal(self.mean, generator)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent (the mean)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to the standard normal, summed over all non-batch axes.

        Returns:
            ``(B,)`` tensor.
        """
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


@torch.compiler.disable
def _seeded_normal(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` from ``generator`` (outside any compiled graph)."""
    return torch.randn(tuple(like.shape), generator=generator, device=like.device, dtype=like.dtype)
