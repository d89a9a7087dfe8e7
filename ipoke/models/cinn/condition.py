"""The condition ``h`` of the cINN, built the same way for training, sampling and kinematics transfer."""

from __future__ import annotations

import torch
from torch import Tensor

from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.encoders import ImageEncoder, PokeEncoder


def static_latent(autoencoder: VideoAutoencoder, first_frame: Tensor) -> Tensor:
    """Posterior mean of the motionless clip (x0 repeated ``T + 1`` times), ``(B, z_dim, 8, 8)``.

    Args:
        autoencoder: The frozen video autoencoder.
        first_frame: ``(B, 3, S, S)`` in [-1, 1].
    """
    clip = first_frame.unsqueeze(1).expand(-1, autoencoder.n_frames + 1, -1, -1, -1)
    return autoencoder.encode(clip).mean


def stage2_condition(*, image_encoder: ImageEncoder, poke_encoder: PokeEncoder, first_frame: Tensor, poke: Tensor,
                     autoencoder: VideoAutoencoder | None = None) -> Tensor:
    """``h = [phi_x0(x0), phi_c(poke)]``, plus :func:`static_latent` last when ``autoencoder`` is given.

    Args:
        image_encoder, poke_encoder: The frozen conditioning encoders.
        first_frame: ``(B, 3, S, S)`` in [-1, 1].
        poke: ``(B, 2, S, S)`` poke maps.
        autoencoder: Pass it for a cINN with ``static_reference=True``.

    Returns:
        ``(B, C_image + C_poke [+ z_dim], 8, 8)``.
    """
    parts = [image_encoder.encode(first_frame), poke_encoder.encode(poke)]
    if autoencoder is not None:
        parts.append(static_latent(autoencoder, first_frame).to(parts[0].dtype))
    return torch.cat(parts, dim=1)
