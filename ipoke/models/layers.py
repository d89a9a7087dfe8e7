"""Building blocks shared by the autoencoders, encoders and discriminators.

Contents:
    group_norm            GroupNorm with the group count adapted to small (tiny-config) widths
    maybe_spectral_norm   wrap a conv in spectral normalisation when asked
    ResBlock3d            3D-ResNet basic block (two 3x3x3 convs, GroupNorm, residual)
    ResBlock2d            2D residual block, optionally strided down (conv) or up (transposed conv)
    SPADE                 spatially-adaptive normalisation conditioned on an image
    ConvGRUCell, ConvGRU  stacked convolutional GRU over 2D feature maps
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


def group_norm(channels: int, groups: int = 16, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, reduced to the largest divisor of ``channels`` for narrow layers.

    Tiny test configs use widths like 8 or 12, which 16 groups do not divide.
    """
    groups = math.gcd(channels, groups)
    return nn.GroupNorm(groups, channels, affine=affine)


def maybe_spectral_norm(module: nn.Module, enabled: bool) -> nn.Module:
    """Return ``module`` wrapped in spectral normalisation of its ``weight`` if ``enabled``."""
    return _spectral_norm(module) if enabled else module


def activation(name: str) -> nn.Module:
    """Build an activation by name: ``"relu" | "elu" | "lrelu"`` (LeakyReLU 0.2) ``| "silu"``."""
    if name == "relu":
        return nn.ReLU()
    if name == "elu":
        return nn.ELU()
    if name == "lrelu":
        return nn.LeakyReLU(0.2)
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f'Unknown activation "{name}"; choose "relu", "elu", "lrelu" or "silu"')


class ResBlock3d(nn.Module):
    """3D-ResNet basic block: ``act(x_skip + GN(conv(act(GN(conv(x))))))``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv, ``int`` or ``(t, h, w)``.
        norm_groups: GroupNorm groups.
        spectral_norm: Spectral-normalise every conv (discriminators).
        act: Activation name (see :func:`activation`).
        shortcut_kernel: Kernel size (1 or 3) of the projection on the skip path when the shape changes.

    Shapes:
        ``(B, C_in, T, H, W) -> (B, C_out, T', H', W')`` with ``T' = ceil(T / stride_t)`` etc.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int | tuple[int, int, int] = 1,
                 norm_groups: int = 16, spectral_norm: bool = False, act: str = "relu",
                 shortcut_kernel: int = 1) -> None:
        super().__init__()
        stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.conv1 = maybe_spectral_norm(nn.Conv3d(in_channels, out_channels, 3, stride, 1, bias=False), spectral_norm)
        self.norm1 = group_norm(out_channels, norm_groups)
        self.conv2 = maybe_spectral_norm(nn.Conv3d(out_channels, out_channels, 3, 1, 1, bias=False), spectral_norm)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.act = activation(act)
        if shortcut_kernel not in (1, 3):
            raise ValueError(f"shortcut_kernel must be 1 or 3, got {shortcut_kernel}")
        if in_channels != out_channels or any(s != 1 for s in stride):
            self.skip = nn.Sequential(
                maybe_spectral_norm(nn.Conv3d(in_channels, out_channels, shortcut_kernel, stride, shortcut_kernel // 2,
                                              bias=False), spectral_norm),
                group_norm(out_channels, norm_groups))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block; see the class docstring for shapes."""
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


class ResBlock2d(nn.Module):
    """2D residual block that keeps, halves (``resample="down"``) or doubles (``resample="up"``) the resolution.

    Main path: ``conv3x3(stride or transposed) -> norm -> act -> conv3x3 -> norm``; skip path when the shape changes:
    a ``shortcut_kernel`` conv (down / same; 3x3 as the reference, whose published parameter counts need it) or a 3x3
    transposed conv (up), then norm; output ``act(main + skip)``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        resample: ``"none" | "down" | "up"``.
        norm: ``"group" | "instance" | "none"`` on the main path.
        norm_groups: Groups for GroupNorm.
        spectral_norm: Spectral-normalise every conv.
        act: Activation name (see :func:`activation`).
        shortcut_kernel: 1 or 3, kernel of the skip conv for ``"down"`` and ``"none"``. Earlier versions of ipoke
            used 1, which left the image/poke encoders at 0.21 M parameters instead of the reference's 0.26 M and the
            video decoder 2048 * z_dim short of it (networks saved by those versions do not load).

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H', W')`` with ``H' = H``, ``H / 2`` or ``2 H``.
    """

    def __init__(self, in_channels: int, out_channels: int, resample: str = "none", norm: str = "group",
                 norm_groups: int = 16, spectral_norm: bool = False, act: str = "elu", shortcut_kernel: int = 3
                 ) -> None:
        super().__init__()
        sn = spectral_norm
        if shortcut_kernel not in (1, 3):
            raise ValueError(f"shortcut_kernel must be 1 or 3, got {shortcut_kernel}")
        pad = shortcut_kernel // 2
        if resample == "down":
            first = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
            skip = nn.Conv2d(in_channels, out_channels, shortcut_kernel, 2, pad)
        elif resample == "up":
            first = nn.ConvTranspose2d(in_channels, out_channels, 3, 2, 1, output_padding=1)
            skip = nn.ConvTranspose2d(in_channels, out_channels, 3, 2, 1, output_padding=1)
        elif resample == "none":
            first = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
            skip = (nn.Conv2d(in_channels, out_channels, shortcut_kernel, 1, pad)
                    if in_channels != out_channels else None)
        else:
            raise ValueError(f'Unknown resample "{resample}"; choose "none", "down" or "up"')
        self.conv1 = maybe_spectral_norm(first, sn)
        self.norm1 = self._norm(norm, out_channels, norm_groups)
        self.conv2 = maybe_spectral_norm(nn.Conv2d(out_channels, out_channels, 3, 1, 1), sn)
        self.norm2 = self._norm(norm, out_channels, norm_groups)
        self.act = activation(act)
        if skip is None:
            self.skip: nn.Module = nn.Identity()
        else:
            # The skip path always normalises (the reference used InstanceNorm on its upsampling skip) so that the
            # two branches are on a comparable scale even when the main path is un-normalised.
            skip_norm = self._norm("instance" if norm == "none" else norm, out_channels, norm_groups)
            self.skip = nn.Sequential(maybe_spectral_norm(skip, sn), skip_norm)

    @staticmethod
    def _norm(name: str, channels: int, groups: int) -> nn.Module:
        if name == "group":
            return group_norm(channels, groups)
        if name == "instance":
            return nn.InstanceNorm2d(channels, affine=True)
        if name == "none":
            return nn.Identity()
        raise ValueError(f'Unknown norm "{name}"; choose "group", "instance" or "none"')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block; see the class docstring for shapes."""
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``GN(x) * (1 + gamma(c)) + beta(c)`` with ``c`` an image resized to ``x``.

    Args:
        channels: Channels of the normalised features.
        condition_channels: Channels of the conditioning image.
        hidden_channels: Width of the shared conv that embeds the condition.
        norm_groups: Groups of the affine-free GroupNorm.

    Shapes:
        ``x (B, C, H, W)``, ``condition (B, C_c, H_c, W_c)`` (bilinearly resized to ``H, W``) -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, condition_channels: int = 3, hidden_channels: int = 128,
                 norm_groups: int = 16) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(condition_channels, hidden_channels, 3, 1, 1), nn.LeakyReLU(0.2))
        self.to_gamma = nn.Conv2d(hidden_channels, channels, 3, 1, 1)
        self.to_beta = nn.Conv2d(hidden_channels, channels, 3, 1, 1)

    def modulation(self, condition: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)``, each ``(B, C, *size)``, of a condition ``(B, C_c, H_c, W_c)``."""
        if condition.shape[-2:] != tuple(size):
            condition = F.interpolate(condition, size=size, mode="bilinear", align_corners=False)
        h = self.shared(condition)
        return self.to_gamma(h), self.to_beta(h)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Modulate ``x`` by ``condition``; see the class docstring for shapes.

        ``x`` may also hold ``k`` maps per condition, ``(B * k, C, H, W)`` ordered condition-major (the frames of a
        clip sharing one first frame): the condition is embedded once per ``B`` and broadcast over the ``k``.
        """
        gamma, beta = self.modulation(condition, x.shape[-2:])
        repeats = x.shape[0] // condition.shape[0]
        if repeats * condition.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} maps, not a multiple of the {condition.shape[0]} conditions")
        normed = self.norm(x).unflatten(0, (condition.shape[0], repeats))
        return (normed * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1)).flatten(0, 1)


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell with orthogonal weight initialisation and zero biases.

    Args:
        input_channels: Channels of the input map.
        hidden_channels: Channels of the hidden state.
        kernel_size: Size of the gate convolutions.

    Shapes:
        ``x (B, C_in, H, W)``, ``h (B, C_h, H, W)`` -> new ``h (B, C_h, H, W)``.
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.gates = nn.Conv2d(input_channels + hidden_channels, 2 * hidden_channels, kernel_size, 1, padding)
        self.candidate = nn.Conv2d(input_channels + hidden_channels, hidden_channels, kernel_size, 1, padding)
        for conv in (self.gates, self.candidate):
            nn.init.orthogonal_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step; see the class docstring for shapes."""
        reset, update = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], dim=1)))
        return (1 - update) * h + update * candidate


class ConvGRU(nn.Module):
    """Stack of :class:`ConvGRUCell`; layer ``i > 0`` reads the new hidden state of layer ``i - 1``.

    Args:
        input_channels: Channels of the input map of the first layer.
        hidden_channels: Hidden channels of every layer.
        n_layers: Number of stacked cells.
        kernel_size: Gate kernel size.
    """

    def __init__(self, input_channels: int, hidden_channels: int, n_layers: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        self.cells = nn.ModuleList(
            ConvGRUCell(input_channels if i == 0 else hidden_channels, hidden_channels, kernel_size)
            for i in range(n_layers))

    def forward(self, x: torch.Tensor, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """One time step through all layers.

        Args:
            x: Input of the first layer, ``(B, C_in, H, W)``.
            hidden: One ``(B, C_h, H, W)`` state per layer.

        Returns:
            The new states, one per layer; the last one is the stack's output.
        """
        new_hidden = []
        for cell, h in zip(self.cells, hidden):
            x = cell(x, h)
            new_hidden.append(x)
        return new_hidden
