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
    """An ``InvertibleModule`` made of a FrEIA ``SequenceINN`` (so it can itself be appended to one)."""

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


class MaCowMultiScale(Fm.InvertibleModule):
    """The MaCow channel multi-scale cINN: levels of FrEIA ``SequenceINN`` s with channels factored out in between.

    Called like every FrEIA module: ``(r,), log_det = flow([z], c=[h])``; ``rev=True`` inverts. (The level
    structure is a chain with side outputs; written as a loop over ``SequenceINN`` levels rather than a
    ``GraphINN``, whose forward copies a host tensor to the device, i.e. syncs, on every call.)

    Args:
        dims_in: ``[(C, S, S)]`` (``C = z_dim``).
        dims_c: ``[(C_h, S, S)]``.
        num_steps: MaCow steps per level; ``len(num_steps)`` levels.
        factor: Every level splits off ``C // factor`` channels.
        hidden_channels: Width of the coupling networks.
        masked_conv_hidden_factor: Width of the masked convolutions relative to the level's channels.
        condition_couplings: Also condition the couplings (not in the reference).
        seed: Seed of all channel shuffles.
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, *,
                 num_steps: Sequence[int] = RELEASED_NUM_STEPS, factor: int = RELEASED_FACTOR,
                 hidden_channels: int = 2048, masked_conv_hidden_factor: int = 4, condition_couplings: bool = False,
                 seed: int = 0):
        super().__init__(dims_in, dims_c)
        if not self.dims_c:
            raise ValueError("MaCowMultiScale is conditional: pass dims_c")
        channels, *spatial = dims_in[0]
        condition_shape = tuple(self.dims_c[0])
        self.factored_channels = factored_channels_per_level(channels, num_steps, factor)
        seeds: Iterator[int] = itertools.count(seed * 1_000_003)
        self.levels = torch.nn.ModuleList()
        current = channels
        for level_steps in num_steps:
            level = Ff.SequenceINN(current, *spatial)
            for _ in range(level_steps):
                level.append(MaCowStep, cond=0, cond_shape=condition_shape, hidden_channels=hidden_channels,
                             masked_conv_hidden_factor=masked_conv_hidden_factor,
                             condition_couplings=condition_couplings, seed=next(seeds))
            prior_condition = dict(cond=0, cond_shape=condition_shape) if condition_couplings else {}
            level.append(MultiScalePrior, factored_channels=self.factored_channels, hidden_channels=hidden_channels,
                         seed=next(seeds), **prior_condition)
            # The reference shuffles once more before splitting, so the factored-out channels are a random pick of
            # prior-normalised and other channels; kept for fidelity (a fixed permutation is exact and free).
            level.append(ChannelShuffle, seed=next(seeds))
            self.levels.append(level)
            current -= self.factored_channels

    def forward(self, x: Sequence[Tensor], c: Sequence[Tensor] | None = None, rev: bool = False,
                jac: bool = True) -> tuple[tuple[Tensor], Tensor]:
        k = self.factored_channels
        condition = list(c)
        log_det = 0.0
        if not rev:
            current, factored = x[0], []
            for level in self.levels:
                current, level_log_det = level(current, c=condition, jac=jac)
                log_det = log_det + level_log_det
                factored.append(current[:, -k:])
                current = current[:, :-k]
            # Latest pieces first, as the reference.
            return (torch.cat([current, *reversed(factored)], dim=1),), log_det
        remainder = x[0].shape[1] - k * len(self.levels)
        current = x[0][:, :remainder]
        pieces = x[0][:, remainder:].split(k, dim=1)[::-1]
        for level, piece in zip(reversed(self.levels), reversed(pieces)):
            current, level_log_det = level(torch.cat([current, piece], dim=1), c=condition, rev=True, jac=jac)
            log_det = log_det + level_log_det
        return (current,), log_det

    def output_dims(self, input_dims: Sequence[Shape]) -> list[tuple[int, ...]]:
        return [tuple(input_dims[0])]
