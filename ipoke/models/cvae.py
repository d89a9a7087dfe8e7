"""The cVAE baseline of the iPOKE paper's ablation: a poke- and x0-conditioned video VAE.

Instead of an invertible network between the video latent and a Gaussian residual, the video autoencoder itself is
trained as a conditional VAE: the encoder sees the whole clip and gives ``q(z | video)``, the decoder gets
``z + phi(poke)`` (a strided-conv embedding of the poke map at the latent resolution) and x0 (through SPADE), and a
real KL term pulls ``q`` towards ``N(0, I)``. Sampling draws ``z ~ N(0, I)``. The reference built it from its first
stage with ``architecture.baseline: True`` (``models/poke_vae.py``); this is a clean re-implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.base import SavableModule
from ipoke.models.distributions import DiagonalGaussian
from ipoke.models.noise import Generators, check_generators, check_temperature, standard_normal
from ipoke.utils import is_whole_number


class PokeConditionedVAE(SavableModule):
    """Video VAE whose decoder is conditioned on the poke (and, like the autoencoder, on x0).

    Args:
        spatial_size: Frame side S.
        n_frames: Frames generated after x0, T.
        z_dim: Latent channels.
        latent_size: Latent side (8).
        poke_channels: Width of the poke embedding network.
        encoder_channels, decoder_channels, spade_hidden_channels, gru_layers, norm_groups, encoder_blocks_per_stage,
        spectral_norm, output, decoder_size: As :class:`~ipoke.models.autoencoder.VideoAutoencoder`, so that the
            baseline can be built like the autoencoder it is compared with (e.g. the CPU quickstart's
            ``output: warp``, ``decoder_size: 32``).
    """

    def __init__(self, *, spatial_size: int = 64, n_frames: int = 10, z_dim: int = 32, latent_size: int = 8,
                 poke_channels: int = 32, encoder_channels: list[int] | None = None,
                 decoder_channels: list[int] | None = None, spade_hidden_channels: int = 128, gru_layers: int = 4,
                 norm_groups: int = 16, encoder_blocks_per_stage: int = 2, spectral_norm: bool = True,
                 output: str = "image", decoder_size: int | None = None) -> None:
        super().__init__()
        self.video = VideoAutoencoder(spatial_size=spatial_size, n_frames=n_frames, z_dim=z_dim,
                                      latent_size=latent_size, encoder_channels=encoder_channels,
                                      decoder_channels=decoder_channels, spade_hidden_channels=spade_hidden_channels,
                                      gru_layers=gru_layers, norm_groups=norm_groups,
                                      encoder_blocks_per_stage=encoder_blocks_per_stage, spectral_norm=spectral_norm,
                                      output=output, decoder_size=decoder_size)
        halvings = (spatial_size // latent_size).bit_length() - 1
        layers: list[nn.Module] = [nn.Conv2d(2, poke_channels, 3, 1, 1), nn.ELU()]
        for _ in range(halvings):
            layers += [nn.Conv2d(poke_channels, poke_channels, 4, 2, 1), nn.ELU()]
        layers.append(nn.Conv2d(poke_channels, z_dim, 3, 1, 1))
        self.poke_embedding = nn.Sequential(*layers)
        self.spatial_size, self.n_frames, self.z_dim, self.latent_size = spatial_size, n_frames, z_dim, latent_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.z_dim, self.latent_size, self.latent_size)

    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """``q(z | video)`` for a clip ``(B, T+1, 3, S, S)``; mean/logvar ``(B, z_dim, 8, 8)``."""
        return self.video.encode(video)

    def decode(self, z: torch.Tensor, first_frame: torch.Tensor, poke: torch.Tensor,
               n_frames: int | None = None) -> torch.Tensor:
        """Frames ``(B, T, 3, S, S)`` from ``z (B, z_dim, 8, 8)``, x0 ``(B, 3, S, S)`` and the poke ``(B, 2, S, S)``."""
        return self.video.decode(z + self.poke_embedding(poke), first_frame, n_frames=n_frames)

    def forward(self, video: torch.Tensor, poke: torch.Tensor, generator: torch.Generator | None = None, *,
                sample_posterior: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct ``video[:, 1:]`` from a posterior sample (or, with ``sample_posterior=False``, its mean, as
        :meth:`VideoAutoencoder.forward`); returns ``(frames, posterior)``."""
        posterior = self.encode(video)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        frames = self.decode(z, video[:, 0], poke, n_frames=video.shape[1] - 1)
        return frames, posterior

    @torch.no_grad()
    def sample(self, first_frame: torch.Tensor, poke: torch.Tensor, *, n_samples: int = 1,
               generator: Generators = None, n_frames: int | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """``(B, K, T+1, 3, S, S)`` videos with ``z ~ N(0, temperature^2 I)`` (1: the prior), x0 first (as
        :class:`~ipoke.sampling.Poker`; a sequence of ``B`` generators draws each pair's samples from its own)."""
        check_temperature(temperature, of="prior samples")
        if not is_whole_number(n_samples, minimum=1):  # as Poker.sample (0 and -1 raised deep inside torch)
            raise ValueError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
        batch = first_frame.shape[0]
        size = self.spatial_size
        for name, tensor, channels in (("first_frame", first_frame, 3), ("poke", poke, 2)):
            if tensor.ndim != 4 or tensor.shape[0] != batch or tuple(tensor.shape[1:]) != (channels, size, size):
                raise ValueError(f"{name} must be (B, {channels}, S, S) with B = {batch} pairs and S = {size} (the "
                                 f"model's size), got {tuple(tensor.shape)}")
        check_generators(generator, batch)
        x0 = first_frame.repeat_interleave(n_samples, dim=0)
        poke = poke.repeat_interleave(n_samples, dim=0)
        z = standard_normal((x0.shape[0], *self.latent_shape), generator, device=x0.device).to(x0) * temperature
        frames = self.decode(z, x0, poke, n_frames=n_frames)
        return torch.cat([x0.unsqueeze(1), frames], dim=1).unflatten(0, (batch, n_samples))
