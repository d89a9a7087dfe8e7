"""The video autoencoder: a clip <-> a spatial latent ``z`` of shape ``(z_dim, 8, 8)``, decoded given the first frame.

Encoder: a 3D-ResNet (GroupNorm) over the whole clip ``x0, x1 .. xT`` down to an 8x8 map, with a Gaussian posterior.
Decoder: a ConvGRU whose every layer starts from ``z`` and reads a learned constant input, unrolled ``T`` steps; the
top layer's state at each step is decoded into a frame by a SPADE decoder modulated by ``x0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ipoke.models.base import SavableModule
from ipoke.models.distributions import DiagonalGaussian
from ipoke.models.layers import SPADE, ConvGRU, ResBlock2d, ResBlock3d, group_norm
from ipoke.utils import is_whole_number


@dataclass
class AutoencoderOutput:
    """Output of :class:`VideoAutoencoder`.

    Args:
        sample: Reconstructed frames ``x1 .. xT``, shape ``(B, T, C, H, W)``, values in [-1, 1].
        posterior: Distribution over the video latent ``z`` (mean ``(B, z_dim, 8, 8)``).
    """

    sample: torch.Tensor
    posterior: DiagonalGaussian


def _n_halvings(spatial_size: int, latent_size: int, name: str = "spatial_size") -> int:
    ratio = spatial_size // latent_size
    if spatial_size % latent_size or ratio < 2 or 2 ** int(math.log2(ratio)) != ratio:
        raise ValueError(f"{name} {spatial_size} must be latent_size {latent_size} times a power of two >= 2")
    return int(math.log2(ratio))


class VideoEncoder3d(nn.Module):
    """3D-ResNet that maps a clip to the mean and log-variance of a ``(z_dim, latent, latent)`` Gaussian.

    Stem: Conv3d k(3,7,7) stride 2 in time and space; then one block per entry of ``channels[1:]``: the first halves
    time only, every later one halves time and space, until the map is ``latent_size`` wide. The remaining time axis
    is averaged (it is 1 for 11-frame clips).

    Args:
        channels: Widths of the stem and of each stage; ``len(channels) == log2(spatial_size / latent_size) + 1``.
        z_dim: Latent channels.
        norm_groups: GroupNorm groups.
        blocks_per_stage: Basic blocks per stage (2, ResNet-18 style).

    Shapes:
        ``(B, 3, T, H, W) -> mean, logvar`` each ``(B, z_dim, latent, latent)``.
    """

    def __init__(self, channels: Sequence[int], z_dim: int, norm_groups: int = 16, blocks_per_stage: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, channels[0], (3, 7, 7), (2, 2, 2), (1, 3, 3), bias=False),
            group_norm(channels[0], norm_groups), nn.ReLU())
        blocks = []
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            blocks.append(ResBlock3d(cin, cout, stride=(2, 1, 1) if i == 0 else 2, norm_groups=norm_groups))
            blocks += [ResBlock3d(cout, cout, norm_groups=norm_groups) for _ in range(blocks_per_stage - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.to_mean = nn.Conv2d(channels[-1], z_dim, 3, 1, 1)
        self.to_logvar = nn.Conv2d(channels[-1], z_dim, 3, 1, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode; see the class docstring for shapes."""
        h = self.blocks(self.stem(video)).mean(dim=2)
        return self.to_mean(h), self.to_logvar(h)


OUTPUT_MODES = ("image", "residual", "warp")


def warp_backward(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at ``p + flow(p)`` (bilinear, border padding): ``out(p) = image(p + flow(p))``.

    Args:
        image: ``(N, C, H, W)``.
        flow: ``(N, 2, H, W)`` in pixels, channel 0 = dx, 1 = dy.

    Returns:
        ``(N, C, H, W)``.
    """
    _, _, height, width = image.shape
    ys = torch.arange(height, device=image.device, dtype=flow.dtype)
    xs = torch.arange(width, device=image.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    # Pixel centres to grid_sample's [-1, 1] (align_corners=False): x_norm = (2x + 1) / W - 1.
    x = (2 * (grid_x + flow[:, 0]) + 1) / width - 1
    y = (2 * (grid_y + flow[:, 1]) + 1) / height - 1
    return nn.functional.grid_sample(image, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode="border",
                                     align_corners=False)


class SpadeFrameDecoder(nn.Module):
    """Decodes one latent map into one frame, modulated by the first frame (SPADE) at every upsampling stage.

    Args:
        z_dim: Channels of the latent map.
        channels: Width at the latent resolution followed by the width after each x2 upsampling.
        spade_hidden_channels: Width of SPADE's condition embedding.
        norm_groups: GroupNorm groups.
        spectral_norm: Spectral-normalise the residual blocks' convs (as the reference).
        output: How the last features become a frame (see :class:`VideoAutoencoder`): ``"image"`` (``tanh`` of an
            RGB conv, the reference), ``"residual"`` (``x0`` plus a change) or ``"warp"`` (``x0`` warped by a
            predicted flow, plus a change).

    Shapes:
        ``z (N * k, z_dim, h, w)``, ``first_frame (N, 3, S, S)`` -> ``(N * k, 3, h * 2**(len(channels)-1), ...)`` in
        [-1, 1], for ``k >= 1`` maps per first frame.
    """

    def __init__(self, z_dim: int, channels: Sequence[int], spade_hidden_channels: int = 128, norm_groups: int = 16,
                 spectral_norm: bool = True, output: str = "image") -> None:
        super().__init__()
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, got {output!r}")
        self.in_block = ResBlock2d(z_dim, channels[0], norm="group", norm_groups=norm_groups,
                                   spectral_norm=spectral_norm, act="elu")
        # The reference's transposed-conv block asked for "elu" but silently built a ReLU; we build the ELU it asked
        # for, so this decoder is not weight-compatible in behaviour with the original checkpoints (none exist).
        self.up_blocks = nn.ModuleList(
            ResBlock2d(cin, cout, resample="up", norm="none", spectral_norm=spectral_norm, act="elu")
            for cin, cout in zip(channels[:-1], channels[1:]))
        self.spades = nn.ModuleList(SPADE(c, 3, spade_hidden_channels, norm_groups) for c in channels[1:])
        self.output = output
        # "warp" predicts 2 flow channels (one unit = 1/16 of the image) before the 3 change channels.
        self.to_rgb = nn.Conv2d(channels[-1], 5 if output == "warp" else 3, 3, 1, 1)
        if output != "image":
            # Zero-initialised change and flow: an untrained decoder returns x0 exactly (see VideoAutoencoder).
            nn.init.zeros_(self.to_rgb.weight)
            nn.init.zeros_(self.to_rgb.bias)

    def forward(self, z: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
        """Decode; see the class docstring for shapes.

        ``z`` may also hold ``k`` latent maps per first frame, ``(N * k, z_dim, h, w)`` ordered frame-major within
        each clip (the ``T`` steps of one clip): ``x0`` is then embedded once per clip rather than once per frame.
        """
        h = self.in_block(z)
        for up, spade in zip(self.up_blocks, self.spades):
            h = spade(up(h), first_frame)
        out = self.to_rgb(h)
        if self.output == "image":
            return torch.tanh(out)
        if out.shape[-2:] != first_frame.shape[-2:]:
            # A decoder that stops below the frame size: the change and flow are smooth enough to upsample.
            out = nn.functional.interpolate(out, size=first_frame.shape[-2:], mode="bilinear", align_corners=False)
        repeats = z.shape[0] // first_frame.shape[0]
        base = first_frame.repeat_interleave(repeats, dim=0)
        if self.output == "residual":
            return (base + out).clamp(-1.0, 1.0)
        flow = out[:, :2] * (first_frame.shape[-1] / 16)  # one unit = 1/16 of the image (4 px at 64 px)
        return (warp_backward(base, flow.to(base.dtype)) + out[:, 2:]).clamp(-1.0, 1.0)


class VideoAutoencoder(SavableModule):
    """Encodes a clip ``x0 .. xT`` into a latent ``z`` and decodes ``x1 .. xT`` from ``z`` and the first frame ``x0``.

    Args:
        spatial_size: Frame height and width ``S`` (64 or 128 in the paper; any ``latent_size * 2**k``).
        n_frames: Frames generated after ``x0``, ``T``; the encoder reads ``T + 1`` frames.
        z_dim: Latent channels (32 or 64 in the paper).
        latent_size: Latent height and width (8 in the paper).
        encoder_channels: Stem and stage widths of the 3D-ResNet; default ``[64, 128] + [256] * (k - 1)`` with
            ``k = log2(S / latent_size)`` (``[64,128,256,256]`` at 64 px, ``[64,128,256,256,256]`` at 128 px).
        decoder_channels: Width at the latent resolution, then after each upsampling; default
            ``[256,256,128,64]`` at 64 px, ``[256,256,256,128,64]`` at 128 px.
        spade_hidden_channels: Width of SPADE's embedding of ``x0``.
        gru_layers: Stacked ConvGRU cells.
        norm_groups: GroupNorm groups everywhere.
        encoder_blocks_per_stage: 3D-ResNet basic blocks per encoder stage.
        spectral_norm: Spectral norm in the frame decoder's residual blocks.
        output: How the frame decoder's last features become a frame. ``"image"`` (default, the reference): the
            ``tanh`` of an RGB convolution. ``"residual"``: ``x0`` plus a predicted change. ``"warp"``: ``x0``
            sampled along a predicted backward flow (each output pixel takes the colour of ``x0`` at ``p + flow``),
            plus a predicted change for what warping cannot explain (disocclusions, shading). Both are zero at
            initialisation, so an untrained decoder returns ``x0`` exactly; neither is in the paper. They make
            static regions exact from the first step, so small models trained for minutes (``ipoke quickstart`` on
            CPU) spend their capacity on what moves, and ``"warp"`` turns moving a thin part into predicting a
            smooth displacement field instead of painting it anew at its new place.
        decoder_size: Side of the map the frame decoder predicts (default ``spatial_size``). Smaller (e.g.
            ``spatial_size // 2``, with one ``decoder_channels`` entry fewer) needs ``output`` ``"residual"`` or
            ``"warp"``: the change and flow are predicted at this size and bilinearly upsampled, while x0 keeps its
            full resolution. The full-resolution stage is most of the decoder's cost, so this trains about twice as
            fast (used by the CPU quickstart).
    """

    def __init__(self, *, spatial_size: int = 64, n_frames: int = 10, z_dim: int = 32, latent_size: int = 8,
                 encoder_channels: list[int] | None = None, decoder_channels: list[int] | None = None,
                 spade_hidden_channels: int = 128, gru_layers: int = 4, norm_groups: int = 16,
                 encoder_blocks_per_stage: int = 2, spectral_norm: bool = True, output: str = "image",
                 decoder_size: int | None = None) -> None:
        super().__init__()
        for name, value in (("z_dim", z_dim), ("n_frames", n_frames), ("gru_layers", gru_layers)):
            if not is_whole_number(value, 1):  # 0 built a network that failed on its first batch, or never
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        halvings = _n_halvings(spatial_size, latent_size)
        decoder_size = spatial_size if decoder_size is None else decoder_size
        if decoder_size != spatial_size and output == "image":
            raise ValueError(f"decoder_size {decoder_size} != spatial_size {spatial_size} needs output 'residual' or "
                             "'warp' (an image decoder must paint every pixel)")
        decoder_halvings = _n_halvings(decoder_size, latent_size, name="decoder_size")
        if decoder_size > spatial_size:
            raise ValueError(f"decoder_size {decoder_size} is larger than spatial_size {spatial_size}")
        if encoder_channels is None:
            encoder_channels = [64, 128] + [256] * (halvings - 1)
        if decoder_channels is None:
            decoder_channels = ([256] * (halvings - 1) + [128, 64])[:decoder_halvings + 1]
        if len(encoder_channels) != halvings + 1:
            raise ValueError(f"encoder_channels needs {halvings + 1} entries for spatial_size {spatial_size} and "
                             f"latent_size {latent_size}, got {len(encoder_channels)}: {encoder_channels}")
        if len(decoder_channels) != decoder_halvings + 1:
            raise ValueError(f"decoder_channels needs {decoder_halvings + 1} entries for decoder_size {decoder_size} "
                             f"and latent_size {latent_size}, got {len(decoder_channels)}: {decoder_channels}")
        self.spatial_size, self.n_frames, self.z_dim, self.latent_size = spatial_size, n_frames, z_dim, latent_size
        self.encoder = VideoEncoder3d(encoder_channels, z_dim, norm_groups, encoder_blocks_per_stage)
        self.gru_input = nn.Parameter(torch.randn(1, z_dim, latent_size, latent_size))
        self.gru = ConvGRU(z_dim, z_dim, n_layers=gru_layers)
        self.decoder = SpadeFrameDecoder(z_dim, decoder_channels, spade_hidden_channels, norm_groups, spectral_norm,
                                         output)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(z_dim, latent_size, latent_size)``."""
        return (self.z_dim, self.latent_size, self.latent_size)

    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """Posterior over ``z`` given a whole clip.

        Args:
            video: ``(B, T + 1, 3, S, S)`` in [-1, 1], first frame included.

        Returns:
            Diagonal Gaussian with mean and logvar ``(B, z_dim, 8, 8)``.
        """
        size = self.spatial_size
        if video.ndim != 5 or video.shape[2] != 3 or video.shape[3:] != (size, size):
            raise ValueError(f"video must be (B, T+1, 3, {size}, {size}) for this {size} px autoencoder, got "
                             f"{tuple(video.shape)}")
        mean, logvar = self.encoder(video.transpose(1, 2))
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor, first_frame: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        """Frames ``x1 .. xT`` from a latent and the first frame.

        Args:
            z: ``(B, z_dim, 8, 8)``.
            first_frame: ``x0``, ``(B, 3, S, S)`` in [-1, 1].
            n_frames: Frames to unroll, ``T``; defaults to the trained ``n_frames``.

        Returns:
            ``(B, T, 3, S, S)`` in [-1, 1].
        """
        if z.ndim != 4 or z.shape[1:] != self.latent_shape:
            raise ValueError(f"z must be (B, {', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}")
        batch, size = z.shape[0], self.spatial_size
        # Each clip's frames are modulated by its own x0: a batch of x0 that merely divides B * T was accepted and
        # silently gave clips another clip's first frame.
        if first_frame.shape != (batch, 3, size, size):
            raise ValueError(f"first_frame must be (B, 3, {size}, {size}) with the B = {batch} of z, got "
                             f"{tuple(first_frame.shape)}")
        n_frames = self.n_frames if n_frames is None else n_frames
        if not is_whole_number(n_frames, 1):
            raise ValueError(f"n_frames must be a whole number of at least 1, got {n_frames!r}")
        hidden = [z] * len(self.gru.cells)
        gru_input = self.gru_input.expand(batch, -1, -1, -1).to(z.dtype)
        states = []
        for _ in range(n_frames):
            hidden = self.gru(gru_input, hidden)
            states.append(hidden[-1])
        # All steps go through the frame decoder as one batch: (T, B, ...) -> (B * T, ...).
        # x0 is embedded by SPADE once per clip and broadcast over its T frames.
        states_bt = torch.stack(states, dim=1).flatten(0, 1)
        frames = self.decoder(states_bt, first_frame)
        return frames.unflatten(0, (batch, n_frames))

    def forward(self, video: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Reconstruct a clip.

        Args:
            video: ``(B, T + 1, 3, S, S)`` in [-1, 1].
            sample_posterior: Decode a posterior sample (training) instead of the mean (evaluation).
            generator: Randomness of the posterior sample.

        Returns:
            :class:`AutoencoderOutput` with ``sample`` ``(B, T, 3, S, S)`` (reconstructions of ``video[:, 1:]``).
        """
        if video.ndim == 5 and video.shape[1] < 2:
            raise ValueError(f"video must hold x0 and at least one more frame, got {tuple(video.shape)}")
        posterior = self.encode(video)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return AutoencoderOutput(self.decode(z, video[:, 0], n_frames=video.shape[1] - 1), posterior)
