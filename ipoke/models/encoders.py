"""Conditioning encoders of the cINN: the source-image encoder and the poke encoder.

Both are convolutional autoencoders with a deterministic ``(64, 8, 8)`` bottleneck; after training only ``encode``
is used (by stage 2). :class:`ImageEncoder` reconstructs its input image; :class:`PokeEncoder` maps a sparse poke
map to the dense optical flow of the clip.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ipoke.models.base import SavableModule
from ipoke.models.layers import ResBlock2d, activation, group_norm, maybe_spectral_norm


def _check_sizes(spatial_size: int, latent_size: int) -> int:
    ratio = spatial_size // latent_size
    if spatial_size % latent_size or ratio < 2 or 2 ** int(math.log2(ratio)) != ratio:
        raise ValueError(f"spatial_size {spatial_size} must be latent_size {latent_size} times a power of two >= 2")
    return int(math.log2(ratio))


class ConvEncoder2d(nn.Module):
    """Strided conv stem, stride-2 residual blocks, and a bottleneck block to ``embedding_channels``.

    Args:
        in_channels: Input channels.
        n_stages: Number of halvings (``log2(S / latent_size)``).
        base_channels: Width after the stem; doubled per stage up to ``max_channels``.
        max_channels: Width cap.
        embedding_channels: Channels of the bottleneck.
        norm_groups: GroupNorm groups.
        spectral_norm: Spectral-normalise the convs (as the reference).

    Shapes:
        ``(B, C_in, S, S) -> (B, embedding_channels, S / 2**n_stages, ...)``.
    """

    def __init__(self, in_channels: int, n_stages: int, base_channels: int = 32, max_channels: int = 64,
                 embedding_channels: int = 64, norm_groups: int = 16, spectral_norm: bool = True) -> None:
        super().__init__()
        if base_channels > max_channels:  # the stem's width would not be the first stage's
            raise ValueError(f"base_channels ({base_channels}) must be at most max_channels ({max_channels})")
        self.stem = nn.Sequential(
            maybe_spectral_norm(nn.Conv2d(in_channels, base_channels, 3, 2, 1), spectral_norm),
            group_norm(base_channels, norm_groups), activation("elu"))
        widths = [min(base_channels * 2 ** i, max_channels) for i in range(n_stages)]
        self.stages = nn.Sequential(*(
            ResBlock2d(cin, cout, resample="down", norm_groups=norm_groups, spectral_norm=spectral_norm)
            for cin, cout in zip(widths[:-1], widths[1:])))
        self.bottleneck = ResBlock2d(widths[-1], embedding_channels, norm_groups=norm_groups,
                                     spectral_norm=spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode; see the class docstring for shapes."""
        return self.bottleneck(self.stages(self.stem(x)))


class ConvDecoder2d(nn.Module):
    """Mirror of :class:`ConvEncoder2d`: a residual block, ``n_stages`` upsampling blocks and an output conv.

    Args:
        out_channels: Output channels.
        n_stages: Number of doublings.
        base_channels: Width at full resolution (before the output conv); halved per stage up to ``max_channels``.
        max_channels: Width cap.
        embedding_channels: Channels of the input embedding.
        norm_groups: GroupNorm groups.
        spectral_norm: Spectral-normalise the convs.
        output: ``"tanh"`` (images in [-1, 1]) or ``"linear"`` (flow in pixels).

    Shapes:
        ``(B, embedding_channels, s, s) -> (B, out_channels, s * 2**n_stages, ...)``.
    """

    def __init__(self, out_channels: int, n_stages: int, base_channels: int = 32, max_channels: int = 64,
                 embedding_channels: int = 64, norm_groups: int = 16, spectral_norm: bool = True,
                 output: str = "tanh") -> None:
        super().__init__()
        if output not in ("tanh", "linear"):
            raise ValueError(f'Unknown output "{output}"; choose "tanh" or "linear"')
        widths = [min(base_channels * 2 ** i, max_channels) for i in range(n_stages + 1)][::-1]
        self.in_block = ResBlock2d(embedding_channels, widths[0], norm_groups=norm_groups, spectral_norm=spectral_norm)
        self.stages = nn.Sequential(*(
            ResBlock2d(cin, cout, resample="up", norm_groups=norm_groups, spectral_norm=spectral_norm)
            for cin, cout in zip(widths[:-1], widths[1:])))
        self.to_output = nn.Conv2d(widths[-1], out_channels, 3, 1, 1)
        self.output = output

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Decode; see the class docstring for shapes."""
        out = self.to_output(self.stages(self.in_block(embedding)))
        return torch.tanh(out) if self.output == "tanh" else out

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the output conv (for the adaptive GAN weight)."""
        return self.to_output.weight


class _ConvAutoencoder2d(SavableModule):
    """Shared body (and constructor) of :class:`ImageEncoder` and :class:`PokeEncoder`."""

    in_channels: int
    out_channels: int
    output: str

    def __init__(self, *, spatial_size: int = 64, latent_size: int = 8, embedding_channels: int = 64,
                 base_channels: int = 32, max_channels: int = 64, norm_groups: int = 16,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        n_stages = _check_sizes(spatial_size, latent_size)
        self.spatial_size, self.latent_size, self.embedding_channels = spatial_size, latent_size, embedding_channels
        self.encoder = ConvEncoder2d(self.in_channels, n_stages, base_channels, max_channels, embedding_channels,
                                     norm_groups, spectral_norm)
        self.decoder = ConvDecoder2d(self.out_channels, n_stages, base_channels, max_channels, embedding_channels,
                                     norm_groups, spectral_norm, self.output)

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """``(embedding_channels, latent_size, latent_size)``."""
        return (self.embedding_channels, self.latent_size, self.latent_size)

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        expected = (self.in_channels, self.spatial_size, self.spatial_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{name} must be (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")


class ImageEncoder(_ConvAutoencoder2d):
    """Image autoencoder whose deterministic bottleneck embeds the source frame ``x0`` for the cINN.

    Args:
        spatial_size: Image height and width ``S``.
        latent_size: Embedding height and width (8).
        embedding_channels: Embedding channels (64).
        base_channels: Width after the first conv (32), doubled per stage up to ``max_channels``.
        max_channels: Width cap (64).
        norm_groups: GroupNorm groups.
        spectral_norm: Spectral-normalise every conv.
    """

    in_channels, out_channels, output = 3, 3, "tanh"

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Embed an image.

        Args:
            image: ``(B, 3, S, S)`` in [-1, 1].

        Returns:
            ``(B, 64, 8, 8)`` embedding.
        """
        self._check_input(image, "image")
        return self.encoder(image)

    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        """Reconstruct an image from its embedding ``(B, 64, 8, 8)``; returns ``(B, 3, S, S)`` in [-1, 1]."""
        return self.decoder(embedding)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``image`` ``(B, 3, S, S)``; returns ``(B, 3, S, S)`` in [-1, 1]."""
        return self.decode(self.encode(image))


class PokeEncoder(_ConvAutoencoder2d):
    """Embeds a sparse poke map; trained to predict the clip's dense endpoint flow from it.

    The reference shipped a ``flow_ae`` switch that fed the dense flow itself as input; its released models, GUI and
    metrics all feed sparse pokes, so here the input is always the poke map (sparse in, dense out).

    Args:
        spatial_size: Poke-map height and width ``S``.
        latent_size: Embedding height and width (8).
        embedding_channels: Embedding channels (64).
        base_channels: Width after the first conv (32), doubled per stage up to ``max_channels``.
        max_channels: Width cap (64).
        norm_groups: GroupNorm groups.
        spectral_norm: Spectral-normalise every conv.
    """

    in_channels, out_channels, output = 2, 2, "linear"

    def encode(self, poke: torch.Tensor) -> torch.Tensor:
        """Embed a poke map.

        Args:
            poke: ``(B, 2, S, S)`` displacement (dx, dy) in pixels inside the poked squares, zero elsewhere.

        Returns:
            ``(B, 64, 8, 8)`` embedding.
        """
        self._check_input(poke, "poke")
        return self.encoder(poke)

    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        """Dense flow ``(B, 2, S, S)`` in pixels from an embedding ``(B, 64, 8, 8)``."""
        return self.decoder(embedding)

    def forward(self, poke: torch.Tensor) -> torch.Tensor:
        """Predict the dense endpoint flow ``(B, 2, S, S)`` from a poke map ``(B, 2, S, S)``."""
        return self.decode(self.encode(poke))
