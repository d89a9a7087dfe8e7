"""A coupling-only conditional flow whose inverse is one parallel pass (for interactive sampling).

Each block: :class:`~ipoke.models.cinn.blocks.ActNorm` (data-dependent init) -> FrEIA ``GLOWCouplingBlock`` whose
two conv subnets see the condition concatenated to their input -> fixed channel shuffle. Unlike the MaCow flow there
is no autoregressive part, so ``rev=True`` costs the same as the forward pass.
"""

from __future__ import annotations

import functools
import itertools

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch.nn.functional as F
from torch import Tensor, nn

from ipoke.models.cinn.blocks import ActNorm, ChannelShuffle, ZeroGainConv2d


class ConvSubnet(nn.Module):
    """Subnet of the GLOW couplings: Conv3x3 -> ReLU -> Conv1x1 -> ReLU -> Conv3x3 (zero gain: identity at start).

    Returns its output in the input's dtype, so that under bf16 autocast FrEIA's scale/log-det arithmetic stays in
    fp32.

    Args:
        in_channels: Half of the flow's channels plus the condition channels.
        out_channels: ``2 *`` the other half (scale and shift).
        hidden_channels: Width of the hidden layers.
    """

    def __init__(self, in_channels: int, out_channels: int, *, hidden_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.conv_hidden = nn.Conv2d(hidden_channels, hidden_channels, 1)
        # Weight-normalised with zero gain, as the MaCow flow's output layers: a plain zero-initialised conv jumped to
        # +-lr per weight on Adam's first step, and a short run (warm-up cut to total_steps // 2) went from NLL 1244
        # to 1e6 in three steps (ZeroGainConv2d; plain-conv checkpoints load as the same function).
        self.conv_out = ZeroGainConv2d(hidden_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return self.conv_out(F.relu(self.conv_hidden(F.relu(self.conv_in(x))))).to(x.dtype)


def build_coupling_flow(*, channels: int, spatial_size: int, condition_channels: int, num_blocks: int,
                        hidden_channels: int, clamp: float = 2.0, seed: int = 0) -> Ff.SequenceINN:
    """The coupling-only cINN as a FrEIA ``SequenceINN``.

    Call it as ``r, log_det = flow(z, c=[h])``; ``rev=True`` inverts in one pass.

    Args:
        channels: Channels of z.
        spatial_size: ``S``.
        condition_channels: Channels of the condition.
        num_blocks: Number of ActNorm -> GLOW coupling -> shuffle blocks.
        hidden_channels: Width of the coupling subnets.
        clamp: Soft clamp of the log-scales (FrEIA's ``clamp``; scales stay within ``exp(+-clamp)``).
        seed: Seed of the shuffles.

    Returns:
        The flow.
    """
    if channels < 2:
        raise ValueError(f"coupling blocks need at least 2 channels, got {channels}")
    flow = Ff.SequenceINN(channels, spatial_size, spatial_size)
    condition_shape = (condition_channels, spatial_size, spatial_size)
    subnet = functools.partial(ConvSubnet, hidden_channels=hidden_channels)
    seeds = itertools.count(seed * 1_000_003)
    for _ in range(num_blocks):
        flow.append(ActNorm)
        flow.append(Fm.GLOWCouplingBlock, cond=0, cond_shape=condition_shape, subnet_constructor=subnet, clamp=clamp)
        flow.append(ChannelShuffle, seed=next(seeds))
    return flow
