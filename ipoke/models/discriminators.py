"""Discriminators for the adversarial terms of stage 1.

:class:`PatchDiscriminator2d` judges single frames patch by patch; :class:`TemporalDiscriminator` is a 3D-ResNet that
judges the motion of whole clips and exposes its stage outputs for feature matching.
"""

from __future__ import annotations

import torch
from torch import nn

from ipoke.models.base import SavableModule
from ipoke.models.layers import ResBlock3d, group_norm, maybe_spectral_norm


class PatchDiscriminator2d(SavableModule):
    """PatchGAN over images: stride-2 4x4 convs, then a stride-1 conv and a 1-channel logit map.

    Args:
        in_channels: Image channels.
        base_channels: Width of the first conv; doubled per layer up to ``8 * base_channels``.
        n_layers: Number of stride-2 convs (3 in the reference: 64 -> 128 -> 256, then 512 at stride 1).
        norm: ``"instance" | "group" | "none"`` after every conv but the first and last.
        spectral_norm: Spectral-normalise every conv.

    Shapes:
        ``(B, C, S, S) -> (B, 1, S / 2**n_layers - 2, ...)`` logits (6x6 at 64 px, 14x14 at 128 px).
    """

    def __init__(self, *, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3, norm: str = "instance",
                 spectral_norm: bool = True) -> None:
        super().__init__()
        if norm not in ("instance", "group", "none"):
            raise ValueError(f'Unknown norm "{norm}"; choose "instance", "group" or "none"')

        def norm_layer(channels: int) -> nn.Module:
            if norm == "instance":
                return nn.InstanceNorm2d(channels, affine=True)
            return group_norm(channels) if norm == "group" else nn.Identity()

        layers: list[nn.Module] = [maybe_spectral_norm(nn.Conv2d(in_channels, base_channels, 4, 2, 1), spectral_norm),
                                   nn.LeakyReLU(0.2)]
        width = base_channels
        for i in range(1, n_layers + 1):
            out = base_channels * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [maybe_spectral_norm(nn.Conv2d(width, out, 4, stride, 1), spectral_norm), norm_layer(out),
                       nn.LeakyReLU(0.2)]
            width = out
        layers.append(maybe_spectral_norm(nn.Conv2d(width, 1, 4, 1, 1), spectral_norm))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Patch logits; see the class docstring for shapes."""
        return self.layers(image)


class TemporalDiscriminator(SavableModule):
    """3D-ResNet-18 discriminator over clips with spectral norm and GroupNorm, one logit per remaining time step.

    Stem Conv3d k(3,7,7) s(1,2,2) + max-pool k3 s(1,2,2); four stages of ``blocks_per_stage`` basic blocks with
    strides 1, (2,1,1), 2, 2 whose first block projects its skip path with a 3x3x3 conv (as the reference's 3D
    ResNet-18, not the 1x1x1 of torchvision's); spatial average; a shared bias-free linear layer per remaining time
    index.

    Args:
        in_channels: Frame channels.
        channels: Widths of the four stages (``[64, 128, 256, 512]``: 37.6 M parameters, as the reference).
        blocks_per_stage: Basic blocks per stage (2 = ResNet-18).
        norm_groups: GroupNorm groups.
        spectral_norm: Spectral-normalise every conv and the linear head.
        shortcut_kernel: Kernel of the skip-path projections (3 as the reference; 1 saves 4.5 M parameters).

    Shapes:
        ``video (B, T, C, H, W)`` -> logits ``(B, T')`` (``T' = 2`` for 10 or 11 frames) and one feature map
        ``(B, C_i, T_i, H_i, W_i)`` per stage.
    """

    def __init__(self, *, in_channels: int = 3, channels: list[int] | None = None, blocks_per_stage: int = 2,
                 norm_groups: int = 16, spectral_norm: bool = True, shortcut_kernel: int = 3) -> None:
        super().__init__()
        channels = [64, 128, 256, 512] if channels is None else list(channels)
        if len(channels) != 4:
            raise ValueError(f"channels must list 4 stage widths, got {channels}")
        sn = spectral_norm
        self.stem = nn.Sequential(
            maybe_spectral_norm(nn.Conv3d(in_channels, channels[0], (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False), sn),
            group_norm(channels[0], norm_groups), nn.ReLU(),
            nn.MaxPool3d(3, (1, 2, 2), 1))
        strides = [1, (2, 1, 1), 2, 2]
        self.stages = nn.ModuleList()
        width = channels[0]
        for out, stride in zip(channels, strides):
            blocks = [ResBlock3d(width, out, stride, norm_groups, spectral_norm=sn, shortcut_kernel=shortcut_kernel)]
            blocks += [ResBlock3d(out, out, 1, norm_groups, spectral_norm=sn) for _ in range(blocks_per_stage - 1)]
            self.stages.append(nn.Sequential(*blocks))
            width = out
        self.head = maybe_spectral_norm(nn.Linear(width, 1, bias=False), sn)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Clip logits and stage features; see the class docstring for shapes."""
        h = self.stem(video.transpose(1, 2))
        features = []
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        pooled = h.mean(dim=(3, 4)).transpose(1, 2)
        return self.head(pooled).squeeze(-1), features
