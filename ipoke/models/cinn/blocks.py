"""Invertible building blocks of the cINN, each a FrEIA ``InvertibleModule``.

Every block follows FrEIA's contract: ``block([x], c=[h], rev=False, jac=True) -> ((y,), log_det)`` with ``x`` and
``y`` of shape ``(B, C, H, W)``, ``h`` of shape ``(B, C_h, H, W)`` for conditional blocks, and ``log_det`` of shape
``(B,)`` (or the scalar 0 for volume-preserving blocks). With ``rev=True`` a block maps ``y`` back to ``x`` and returns
``-log_det``.

Mixed precision: the small networks inside the blocks may run under ``torch.autocast`` (bf16), but the flow state and
every scale / log-determinant are kept in the dtype of the incoming tensor (fp32 or fp64), because a log-det summed
over 2048 dimensions and hundreds of blocks is not meaningful in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from FrEIA.modules import InvertibleModule
from torch import Tensor, nn

Shape = Sequence[int]

_LOG_2 = math.log(2.0)


def bounded_scale(raw_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's affine scale ``s = 1 + tanh(raw / 2)`` in (0, 2), and ``log s``.

    ``1 + tanh(a / 2) == 2 * sigmoid(a)``, so ``log s = log 2 + logsigmoid(a)`` is computed without ever taking the
    log of a number that underflowed to 0. A zero ``raw_scale`` gives ``s = 1`` (identity).

    Args:
        raw_scale: Unconstrained network output, any shape.

    Returns:
        ``(scale, log_scale)``, both of the shape of ``raw_scale``.
    """
    log_scale = F.logsigmoid(raw_scale) + _LOG_2
    return log_scale.exp(), log_scale


def _sum_per_sample(t: Tensor) -> Tensor:
    return t.flatten(1).sum(dim=1)


class ZeroGainConv2d(nn.Conv2d):
    """Output layer of every transform network: a weight-normalised convolution ``w = g * v / ||v||`` with gain ``g``
    (one per output channel) and bias starting at zero, so that each block is the identity at init.

    This is the reference's layer (weight norm with a data-dependent init of scale 0) minus the data-dependent part,
    which with ``g = 0`` only draws ``v``. It is *not* interchangeable with a plain zero-initialised convolution:
    Adam's first steps move every parameter by about the learning rate whatever its gradient, so a zero-initialised
    ``fan_in``-wide output layer jumps to weights of ``+-lr`` with coherent signs, i.e. an output of
    ``lr * fan_in * |features|``, and the ~500 blocks of the reference-size flow each start to amplify their input by
    5-10 %; their product overflowed fp32 after a single step at ``lr = 1e-3`` (docs/cinn.md). Here the first steps
    only move ``g``, so each output moves by ``lr * |features| / sqrt(fan_in)`` in a random direction instead.

    Args:
        in_channels, out_channels, kernel_size, padding: As :class:`torch.nn.Conv2d` (always with a bias).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        nn.init.normal_(self.weight, std=0.05)  # the reference's init of the direction v
        nn.init.zeros_(self.bias)
        self.gain = nn.Parameter(torch.zeros(out_channels, 1, 1, 1))

    def normalized_weight(self) -> Tensor:
        """``g * v / ||v||`` (norm over everything but the output channel)."""
        norm = self.weight.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return self.gain * (self.weight / norm)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # Checkpoints written before the weight norm hold a plain zero-initialised convolution: the same function is
        # v = w, g = ||w|| (an all-zero w, i.e. a never-trained layer, keeps a fresh random direction).
        weight = state_dict.get(prefix + "weight")
        if prefix + "gain" not in state_dict and weight is not None:
            norm = weight.flatten(1).norm(dim=1)
            state_dict[prefix + "gain"] = norm.view(-1, 1, 1, 1).clone()
            untrained = norm == 0
            if untrained.any():
                weight = weight.clone()
                weight[untrained] = self.weight.detach()[untrained].to(weight)
                state_dict[prefix + "weight"] = weight
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class ActNorm(InvertibleModule):
    """Per-channel affine normalisation ``y = x * exp(log_scale) + bias`` with data-dependent initialisation.

    The first forward pass in training mode (or an explicit :meth:`initialize`) sets ``log_scale`` and ``bias`` so
    that the output of that batch has zero mean and unit variance per channel. Whether that happened is stored in
    the ``initialized`` buffer, so it survives ``state_dict`` round trips (a loaded network is never re-initialised).

    Written here rather than using FrEIA 0.2's ``ActNorm`` because that one breaks on tensor ``init_data``
    (``if init_data:``) and keeps its init flag outside the state dict.

    In multi-process training every rank would initialise on its own batch and the ranks would silently diverge
    (DDP only broadcasts parameters when it wraps the model). Initialise before wrapping, or broadcast afterwards,
    e.g. with :func:`ipoke.models.cinn.network.broadcast_actnorm`.

    Args:
        dims_in: ``[(C, H, W)]``.
        dims_c: Unused (ActNorm is unconditional); accepted for FrEIA's graph builders.
        eps: Added to the standard deviation at initialisation.
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, eps: float = 1e-6):
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(1, channels, *([1] * (len(dims_in[0]) - 1))))
        self.bias = nn.Parameter(torch.zeros_like(self.log_scale))
        # uint8 rather than bool: collective backends (NCCL, gloo) broadcast it without special cases.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self._pixels = math.prod(dims_in[0][1:])
        # Host-side copy of the flag: reading the buffer is a device sync, which in every training forward of 515
        # layers would stall the GPU (and break CUDA-graph capture). Only "known initialised" is cached.
        self._known_initialized = False

    def is_initialized(self) -> bool:
        """Whether the layer has been initialised (from data or a loaded state dict); syncs at most once."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def reset_initialization(self) -> None:
        """Forget the initialisation so that the next training forward (or :meth:`initialize`) sets it again."""
        self.initialized.zero_()
        self._known_initialized = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from a batch so that its output is standardised per channel.

        Args:
            x: ``(B, C, H, W)``; statistics are taken over batch and space, in fp32 at least.
        """
        x = x.detach()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True, unbiased=False)
        log_scale = -torch.log(std + self.eps)
        self.log_scale.copy_(log_scale)
        self.bias.copy_(-mean * log_scale.exp())
        self.initialized.fill_(1)
        self._known_initialized = True

    def forward(self, x: Sequence[Tensor], c: Sequence[Tensor] | None = None, rev: bool = False,
                jac: bool = True) -> tuple[tuple[Tensor], Tensor]:
        x = x[0]
        if not rev and self.training and not self.is_initialized():
            self.initialize(x)
        log_scale = self.log_scale.to(x.dtype)
        bias = self.bias.to(x.dtype)
        log_det = (log_scale.sum() * self._pixels).expand(x.shape[0])
        if rev:
            return ((x - bias) * torch.exp(-log_scale),), -log_det
        return (x * log_scale.exp() + bias,), log_det

    def output_dims(self, input_dims: Sequence[Shape]) -> list[tuple[int, ...]]:
        return [tuple(input_dims[0])]


class ChannelShuffle(InvertibleModule):
    """A fixed random permutation of the channels (log-det 0).

    The permutation comes from ``seed`` (not from the global RNG), so every process that builds the network with
    the same arguments gets the same permutation; it is also stored as a buffer and travels in the state dict.

    Args:
        dims_in: ``[(C, H, W)]``.
        dims_c: Unused.
        seed: Seed of the permutation.
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, seed: int = 0):
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        generator = torch.Generator(device="cpu").manual_seed(seed)
        permutation = torch.randperm(channels, generator=generator, device="cpu")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def forward(self, x: Sequence[Tensor], c: Sequence[Tensor] | None = None, rev: bool = False,
                jac: bool = True) -> tuple[tuple[Tensor], float]:
        index = self.inverse_permutation if rev else self.permutation
        return (x[0].index_select(1, index),), 0.0

    def output_dims(self, input_dims: Sequence[Shape]) -> list[tuple[int, ...]]:
        return [tuple(input_dims[0])]


class CouplingNet(nn.Module):
    """The transform network of :class:`AffineCoupling`: Conv3x3 -> ELU -> Conv1x1 -> ELU -> Conv3x3 (zero gain).

    Same layout as the reference's ``NICEConvBlock`` (no biases in the hidden layers; the reference's dropout has
    p = 0 in every config and is left out).

    Args:
        in_channels: Channels of the input (the conditioning half, plus the condition if any).
        out_channels: Channels of the output (``2 *`` transformed channels: raw scale and shift).
        hidden_channels: Width of the hidden layers (2048 in the released configs).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False)
        self.conv_hidden = nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False)
        self.conv_out = ZeroGainConv2d(hidden_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` in the dtype of ``x``."""
        out = self.conv_out(F.elu(self.conv_hidden(F.elu(self.conv_in(x)))))
        return out.to(x.dtype)


class AffineCoupling(InvertibleModule):
    """Affine coupling ``y_t = s(x_p) * x_t + mu(x_p)`` with ``s = 1 + tanh(.)`` (the reference's "NICE2d").

    The channels are split into a transformed part ``x_t`` and a passive part ``x_p``:

    * ``split="continuous"``: ``direction="down"`` transforms the last ``k`` channels given the others, ``"up"`` the
      first ``k`` (``k = C // 2`` unless ``transformed_channels`` is given);
    * ``split="interleaved"``: ``"down"`` transforms the odd channels given the even ones, ``"up"`` the even ones.

    Args:
        dims_in: ``[(C, H, W)]``.
        dims_c: ``[]`` (unconditional, as every released iPOKE config) or ``[(C_h, H, W)]``, concatenated to the
            passive part as input of the transform network.
        hidden_channels: Width of the :class:`CouplingNet`.
        split: ``"continuous"`` or ``"interleaved"``.
        direction: ``"up"`` or ``"down"``.
        transformed_channels: ``k`` for the continuous split (default ``C // 2``); the multi-scale prior uses it to
            transform exactly the channels that are factored out next.
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, *, hidden_channels: int,
                 split: str = "continuous", direction: str = "down", transformed_channels: int | None = None):
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        if split not in ("continuous", "interleaved"):
            raise ValueError(f"split must be 'continuous' or 'interleaved', got {split!r}")
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if split == "interleaved" and transformed_channels is not None:
            raise ValueError("transformed_channels is only supported with the continuous split")
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        if split == "continuous":
            # "down": the last k channels are transformed, "up": the first k.
            k = transformed_channels if transformed_channels is not None else channels // 2
            if not (0 < k < channels):
                raise ValueError(f"cannot transform {k} of {channels} channels")
            boundary = channels - k if direction == "down" else k
            first_index = torch.arange(boundary)
            second_index = torch.arange(boundary, channels)
        else:
            first_index = torch.arange(0, channels, 2)
            second_index = torch.arange(1, channels, 2)
        transformed, passive = (second_index, first_index) if direction == "down" else (first_index, second_index)
        self.register_buffer("transformed_index", transformed, persistent=False)
        self.register_buffer("passive_index", passive, persistent=False)
        # Where each channel of cat([transformed, passive]) has to go to restore the input order.
        self.register_buffer("merge_index", torch.argsort(torch.cat([transformed, passive])), persistent=False)
        condition_channels = sum(shape[0] for shape in self.dims_c)
        self.net = CouplingNet(len(passive) + condition_channels, 2 * len(transformed), hidden_channels)

    def forward(self, x: Sequence[Tensor], c: Sequence[Tensor] | None = None, rev: bool = False,
                jac: bool = True) -> tuple[tuple[Tensor], Tensor]:
        x = x[0]
        x_t, x_p = self._split(x)
        net_in = torch.cat([x_p, *c], dim=1) if self.dims_c else x_p
        raw_scale, shift = self.net(net_in).chunk(2, dim=1)
        scale, log_scale = bounded_scale(raw_scale)
        if rev:
            y_t = (x_t - shift) / scale
        else:
            y_t = scale * x_t + shift
        y = self._merge(y_t, x_p)
        log_det = _sum_per_sample(log_scale)
        return (y,), -log_det if rev else log_det

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.transformed_index), x.index_select(1, self.passive_index)

    def _merge(self, x_t: Tensor, x_p: Tensor) -> Tensor:
        return torch.cat([x_t, x_p], dim=1).index_select(1, self.merge_index)

    def output_dims(self, input_dims: Sequence[Shape]) -> list[tuple[int, ...]]:
        return [tuple(input_dims[0])]


# Orders of the masked convolutional flows. Every order is reduced to "top" (row i depends on rows above it) by a
# flip and/or a transpose of the spatial axes; these functions map to that canonical frame and back.
_ORDERS = ("top", "bottom", "left", "right")


def _to_canonical(t: Tensor, order: str) -> Tensor:
    if order == "bottom":
        return t.flip(-2)
    if order == "left":
        return t.transpose(-1, -2)
    if order == "right":
        return t.transpose(-1, -2).flip(-2)
    return t


def _from_canonical(t: Tensor, order: str) -> Tensor:
    if order == "bottom":
        return t.flip(-2)
    if order == "left":
        return t.transpose(-1, -2)
    if order == "right":
        return t.flip(-2).transpose(-1, -2)
    return t


class MaskedConvFlow(InvertibleModule):
    """Element-wise affine autoregressive transform over space with causal ("masked") convolutions (MaCow).

    ``y[:, :, i, j] = s * x[:, :, i, j] + mu`` where ``(s, mu)`` at pixel ``(i, j)`` are computed from the input
    pixels strictly before it in the flow's ``order`` (for ``"top"``: rows ``i-2`` and ``i-1``, columns ``j-1..j+1``,
    a 2x3 kernel; ``"left"``/``"right"`` use the transposed 3x2 kernel) and from the condition at ``(i, j)``:

        shifted causal conv (C -> hidden, no bias) -> concat condition -> ELU -> 1x1 conv (zero gain) -> (s_raw, mu)

    with ``s = 1 + tanh(s_raw / 2)``. The Jacobian is triangular, so ``log|det| = sum log s``. The forward pass is one
    parallel convolution; the inverse must recover the rows (or columns) one after the other (``H`` passes of a
    one-row convolution), which is what makes sampling from the MaCow cINN slow.

    Args:
        dims_in: ``[(C, H, W)]``.
        dims_c: ``[]`` or ``[(C_h, H, W)]``: the condition is concatenated after the causal convolution (it depends
            on nothing of ``x``, so causality is kept).
        order: ``"top"``, ``"bottom"``, ``"left"`` or ``"right"``: from where the dependence comes.
        hidden_channels: Width of the causal convolution (the reference uses ``4 * C``).
    """

    def __init__(self, dims_in: Sequence[Shape], dims_c: Sequence[Shape] | None = None, *, order: str = "top",
                 hidden_channels: int | None = None):
        super().__init__(dims_in, dims_c)
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        channels = dims_in[0][0]
        self.order = order
        hidden_channels = hidden_channels or 4 * channels
        condition_channels = sum(shape[0] for shape in self.dims_c)
        # Kernel in the canonical ("top") frame; for left/right the transpose makes it a 3x2 kernel in image space.
        self.causal_conv = nn.Conv2d(channels, hidden_channels, (2, 3), bias=False)
        self.conv_out = ZeroGainConv2d(hidden_channels + condition_channels, 2 * channels, 1)

    def _affine_parameters(self, causal_features: Tensor, condition: Tensor | None, dtype: torch.dtype) -> tuple[
            Tensor, Tensor, Tensor]:
        features = causal_features if condition is None else torch.cat([causal_features, condition], dim=1)
        raw_scale, shift = self.conv_out(F.elu(features)).to(dtype).chunk(2, dim=1)
        scale, log_scale = bounded_scale(raw_scale)
        return scale, log_scale, shift

    def forward(self, x: Sequence[Tensor], c: Sequence[Tensor] | None = None, rev: bool = False,
                jac: bool = True) -> tuple[tuple[Tensor], Tensor]:
        x = _to_canonical(x[0], self.order)
        condition = _to_canonical(c[0], self.order) if self.dims_c else None
        if rev:
            out, log_scale = self._inverse(x, condition)
        else:
            height = x.shape[-2]
            # Pad 2 rows on top and 1 column each side: output row i then sees input rows i-2, i-1 only; the last
            # output row (which would see row H-1) is dropped.
            features = self.causal_conv(F.pad(x, (1, 1, 2, 0)))[..., :height, :]
            scale, log_scale, shift = self._affine_parameters(features, condition, x.dtype)
            out = scale * x + shift
        log_det = _sum_per_sample(log_scale)
        return (_from_canonical(out, self.order),), -log_det if rev else log_det

    def _inverse(self, y: Tensor, condition: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, channels, height, width = y.shape
        zero_row = y.new_zeros(batch, channels, 1, width)
        rows = [zero_row, zero_row]
        log_scales = []
        for i in range(height):
            # Out-of-place row bookkeeping keeps the inverse differentiable (e.g. for kinematics transfer).
            window = F.pad(torch.cat(rows[-2:], dim=2), (1, 1, 0, 0))
            features = self.causal_conv(window)
            row_condition = None if condition is None else condition[:, :, i:i + 1]
            scale, log_scale, shift = self._affine_parameters(features, row_condition, y.dtype)
            rows.append((y[:, :, i:i + 1] - shift) / scale)
            log_scales.append(log_scale)
        return torch.cat(rows[2:], dim=2), torch.cat(log_scales, dim=2)

    def output_dims(self, input_dims: Sequence[Shape]) -> list[tuple[int, ...]]:
        return [tuple(input_dims[0])]
