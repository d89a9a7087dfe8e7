"""The reference cINN design: MaCow steps in a channel multi-scale architecture (all at one spatial size).

Structure (iPOKE's ``SupervisedMacowTransformer``, borrowed from Wolf/MaCow), for an input of ``C`` channels:

* :class:`MaCowUnit`: MCF(top) -> MCF(bottom) -> ActNorm -> MCF(left) -> MCF(right) -> ActNorm, where MCF is a
  conditional :class:`~ipoke.models.cinn.blocks.MaskedConvFlow`.
* :class:`MaCowStep`: ActNorm -> shuffle -> 2 units -> coupling(continuous, up) -> coupling(continuous, down) ->
  ActNorm -> 2 units -> coupling(interleaved, up) -> coupling(interleaved, down).
* level ``i``: ``num_steps[i]`` steps -> :class:`MultiScalePrior` -> shuffle -> split off ``C // factor`` channels,
  which leave the flow unchanged from then on; the rest go on to the next level.
* the output is the concatenation of the last remainder and the factored pieces (latest first, as the reference),
  so it has the input's shape and is judged against N(0, I) as a whole.

Conditioning enters only through the masked convolutional flows (as in every released config); the couplings can be
conditioned too with ``condition_couplings=True``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from torch import Tensor

from ipoke.models.cinn.blocks import ActNorm, AffineCoupling, ChannelShuffle, MaskedConvFlow, Shape

RELEASED_NUM_STEPS = (10, 5, 5, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1)
RELEASED_FACTOR = 16


class _SequenceBlock(Fm.InvertibleModule):
    """An ``InvertibleModule`` made of a FrEIA ``SequenceINN`` (so it can be a node of a ``GraphINN``)."""

    def _build(self, dims_in: Sequence[Shape]) -> Ff.SequenceINN:
        self.flow = Ff.SequenceINN(*dims_in[0])
        return self.flow

    def _append(self, module_class: type, conditional: bool, **kwargs) -> None:
        if conditional and self.dims_c:
            self.flow.append(module_class, cond=0, cond_shape=tuple(self.dims_c[0]), **kwargs)
        else:
            self.flow.append(module_class, **kwargs)

    def forward(self, x: Sequence[Tensor], c: Sequence[Tensor] | None = None, rev: bool = False,
                jac: bool = True) -> tuple[tuple[Tensor], Tensor]:
        out, log_det = self.flow(x[0], c=list(c) if c else None, rev=rev, jac=jac)
        return (out,), log_det

    def output_dims(self, input_dims: Sequence[Shape]) -> list[tuple[int, ...]]:
        return [tuple(input_dims[0])]


class MaCowUnit(_SequenceBlock):
    """Four conditional masked convolutional flows (top, bottom, left, right) with two ActNorms.

    Args:
        dims_in: ``[(C, H, W)]``.
        dims_c: ``[(C_h, H, W)]`` (or ``[]`` for an unconditional unit).
        hidden_factor: Width of each masked convolution is ``hidden_factor * C`` (4 in the reference).
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, *, hidden_factor: int = 4):
        super().__init__(dims_in, dims_c)
        self._build(dims_in)
        hidden = hidden_factor * dims_in[0][0]
        for orders in (("top", "bottom"), ("left", "right")):
            for order in orders:
                self._append(MaskedConvFlow, True, order=order, hidden_channels=hidden)
            self._append(ActNorm, False)


class MaCowStep(_SequenceBlock):
    """One MaCow step: ActNorm, shuffle, 4 MaCow units and 4 affine couplings (see the module docstring).

    Args:
        dims_in: ``[(C, H, W)]``.
        dims_c: ``[(C_h, H, W)]``.
        hidden_channels: Width of the coupling networks (2048 in the released configs).
        masked_conv_hidden_factor: See :class:`MaCowUnit`.
        condition_couplings: Feed the condition to the couplings too (off in the reference).
        seed: Seed of the step's channel shuffle.
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, *, hidden_channels: int,
                 masked_conv_hidden_factor: int = 4, condition_couplings: bool = False, seed: int = 0):
        super().__init__(dims_in, dims_c)
        self._build(dims_in)
        self._append(ActNorm, False)
        self._append(ChannelShuffle, False, seed=seed)
        for index, split in enumerate(("continuous", "interleaved")):
            if index:
                self._append(ActNorm, False)
            for _ in range(2):
                self._append(MaCowUnit, True, hidden_factor=masked_conv_hidden_factor)
            for direction in ("up", "down"):
                self._append(AffineCoupling, condition_couplings, hidden_channels=hidden_channels, split=split,
                             direction=direction)


class MultiScalePrior(Fm.InvertibleModule):
    """Prepares the channels a level factors out: shuffle -> coupling of the last ``k`` channels given the rest ->
    ActNorm on those ``k`` channels (the reference's ``MultiScalePrior``).

    Args:
        dims_in: ``[(C, H, W)]``.
        dims_c: ``[]``, or ``[(C_h, H, W)]`` with ``condition_couplings``.
        factored_channels: ``k``.
        hidden_channels: Width of the coupling network.
        seed: Seed of the shuffle.
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, *, factored_channels: int,
                 hidden_channels: int, seed: int = 0):
        super().__init__(dims_in, dims_c)
        channels, *spatial = dims_in[0]
        self.factored_channels = factored_channels
        self.shuffle = ChannelShuffle(dims_in, seed=seed)
        self.coupling = AffineCoupling(dims_in, self.dims_c, hidden_channels=hidden_channels, split="continuous",
                                       direction="down", transformed_channels=factored_channels)
        self.actnorm = ActNorm([(factored_channels, *spatial)])

    def forward(self, x: Sequence[Tensor], c: Sequence[Tensor] | None = None, rev: bool = False,
                jac: bool = True) -> tuple[tuple[Tensor], Tensor]:
        k = self.factored_channels
        c = list(c) if c else []
        if rev:
            y = x[0]
            (normed,), log_det_norm = self.actnorm([y[:, -k:]], rev=True)
            (y,), log_det_coupling = self.coupling([torch.cat([y[:, :-k], normed], dim=1)], c=c, rev=True)
            (y,), _ = self.shuffle([y], rev=True)
        else:
            (y,), _ = self.shuffle(x)
            (y,), log_det_coupling = self.coupling([y], c=c)
            (normed,), log_det_norm = self.actnorm([y[:, -k:]])
            y = torch.cat([y[:, :-k], normed], dim=1)
        return (y,), log_det_coupling + log_det_norm

    def output_dims(self, input_dims: Sequence[Shape]) -> list[tuple[int, ...]]:
        return [tuple(input_dims[0])]


def factored_channels_per_level(channels: int, num_steps: Sequence[int], factor: int) -> int:
    """Channels split off at every level: ``channels // factor`` (2 for z_dim 32 and factor 16).

    Raises:
        ValueError: if the levels would leave no channels, or fewer than 2 channels at some level (couplings need 2).
    """
    step = channels // factor
    if step < 1:
        raise ValueError(f"factor {factor} is larger than the number of channels {channels}")
    last_level_channels = channels - (len(num_steps) - 1) * step
    if last_level_channels - step < 1 or last_level_channels < 2:
        raise ValueError(f"{len(num_steps)} levels that each split off {step} of {channels} channels leave too few "
                         f"channels; use fewer levels or a larger factor")
    return step


def build_macow_flow(*, channels: int, spatial_size: int, condition_channels: int, num_steps: Sequence[int],
                     factor: int, hidden_channels: int, masked_conv_hidden_factor: int = 4,
                     condition_couplings: bool = False, seed: int = 0) -> Ff.GraphINN:
    """The MaCow multi-scale cINN as a FrEIA ``GraphINN``.

    Call it as ``r, log_det = flow(z, c=[h])`` with ``z`` of shape ``(B, channels, S, S)`` and ``h`` of shape
    ``(B, condition_channels, S, S)``; ``rev=True`` inverts.

    Args:
        channels: Channels of z (``z_dim``).
        spatial_size: ``S`` (8 in iPOKE).
        condition_channels: Channels of the condition (128 in iPOKE).
        num_steps: MaCow steps per level; ``len(num_steps)`` levels.
        factor: Every level splits off ``channels // factor`` channels.
        hidden_channels: Width of the coupling networks.
        masked_conv_hidden_factor: Width of the masked convolutions relative to the level's channels.
        condition_couplings: Also condition the couplings (not in the reference).
        seed: Seed of all channel shuffles.

    Returns:
        The flow; its ``module_list`` holds the levels' modules in order.
    """
    step = factored_channels_per_level(channels, num_steps, factor)
    seeds: Iterator[int] = itertools.count(seed * 1_000_003)
    spatial = (spatial_size, spatial_size)
    input_node = Ff.InputNode(channels, *spatial, name="z")
    condition = Ff.ConditionNode(condition_channels, *spatial, name="condition")
    nodes: list[Ff.Node] = [input_node, condition]
    coupling_condition = condition if condition_couplings else None
    current: Ff.Node | tuple[Ff.Node, int] = input_node
    current_channels = channels
    factored: list[tuple[Ff.Node, int]] = []
    for level, level_steps in enumerate(num_steps):
        for index in range(level_steps):
            nodes.append(Ff.Node(current, MaCowStep, dict(
                hidden_channels=hidden_channels, masked_conv_hidden_factor=masked_conv_hidden_factor,
                condition_couplings=condition_couplings, seed=next(seeds)), conditions=condition,
                name=f"level{level}_step{index}"))
            current = nodes[-1]
        nodes.append(Ff.Node(current, MultiScalePrior, dict(
            factored_channels=step, hidden_channels=hidden_channels, seed=next(seeds)),
            conditions=coupling_condition, name=f"level{level}_prior"))
        # The reference shuffles once more before splitting, so the factored-out channels are a random pick of
        # prior-normalised and other channels; kept for fidelity (a permutation costs nothing and is exact).
        nodes.append(Ff.Node(nodes[-1], ChannelShuffle, dict(seed=next(seeds)), name=f"level{level}_shuffle"))
        nodes.append(Ff.Node(nodes[-1], Fm.Split, dict(section_sizes=[current_channels - step, step], dim=0),
                             name=f"level{level}_split"))
        factored.append((nodes[-1], 1))
        current = (nodes[-1], 0)
        current_channels -= step
    pieces = [current, *reversed(factored)]
    nodes.append(Ff.Node(pieces, Fm.Concat, dict(dim=0), name="merge"))
    nodes.append(Ff.OutputNode(nodes[-1], name="r"))
    return Ff.GraphINN(nodes)
