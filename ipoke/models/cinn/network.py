"""The conditional invertible network of stage 2: video latent z <-> residual kinematics r given (x0, poke)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ipoke.models.base import SavableModule
from ipoke.models.cinn.blocks import ActNorm
from ipoke.models.cinn.coupling import build_coupling_flow
from ipoke.models.cinn.macow import RELEASED_FACTOR, RELEASED_NUM_STEPS, MaCowMultiScale
from ipoke.models.noise import Generators, check_temperature, standard_normal
from ipoke.utils import is_whole_number

ARCHITECTURES = ("macow", "coupling")
HALF_DTYPES = (torch.float16, torch.bfloat16)


class ConditionalINN(SavableModule):
    """Conditional bijection ``r = tau(z | h)`` between the video latent ``z`` and a Gaussian residual ``r``.

    ``z`` and ``r`` have shape ``(B, z_dim, S, S)``; the condition ``h`` (``(B, condition_channels, S, S)``) is the
    concatenation of the image embedding of x0 and the poke embedding (64 + 64 = 128 channels at 8x8 in iPOKE).
    Training maximises the likelihood of ``z`` under ``r ~ N(0, I)`` (see :mod:`ipoke.losses.flow`); sampling draws
    ``r`` and inverts.

    Two architectures:

    * ``"macow"``: the reference design (:mod:`ipoke.models.cinn.macow`). The defaults are the released configs:
      ``num_steps=[10,5,5,4,4,4,3,3,3,2,2,2,1,1,1]``, ``factor=16``, ``hidden_channels=2048`` (1054.4 M parameters for
      ``z_dim=32``). Its inverse is sequential over rows/columns (slow sampling).
    * ``"coupling"``: ``num_blocks`` x (ActNorm -> conditional GLOW coupling -> shuffle)
      (:mod:`ipoke.models.cinn.coupling`), whose inverse is a single parallel pass (fast sampling).

    ActNorm layers initialise from data on the first training-mode forward; call :meth:`initialize_actnorm` on the
    first batch explicitly (and :func:`broadcast_actnorm` in multi-process training) to control that.

    ``static_reference=True`` (not in the reference code) makes the last ``z_dim`` channels of the condition a
    reference latent ``z_static``: the autoencoder's latent of the motionless clip (x0 repeated; see
    :func:`~ipoke.models.cinn.condition.stage2_condition`). The flow then maps ``z - z_static`` (a shift: no change
    to the log-determinant) and :meth:`inverse` adds it back. The appearance that the encoder stores in ``z`` comes
    for free, so the likelihood is left with the motion, which the poke explains: on the quickstart's data, ``z``
    of a clip whose poke hits the background equals ``z_static`` to 1e-12, while ``z`` of a moving clip is as far
    from it as two random clips' latents are from each other.

    Args:
        z_dim: Channels of the latent ``z``.
        condition_channels: Channels of the condition ``h``.
        spatial_size: Side ``S`` of the latent grid.
        architecture: ``"macow"`` or ``"coupling"``.
        hidden_channels: Width of the coupling networks (both architectures).
        num_steps: ``macow``: MaCow steps per level.
        factor: ``macow``: every level factors out ``z_dim // factor`` channels.
        masked_conv_hidden_factor: ``macow``: masked convolutions are ``factor * C_level`` wide.
        condition_couplings: ``macow``: also feed the condition to the affine couplings (off in the reference).
        num_blocks: ``coupling``: number of blocks.
        clamp: ``coupling``: soft clamp of the log-scales.
        seed: Seed of the fixed channel permutations (not of the weights).
        static_reference: Model ``z`` relative to the reference latent carried in the condition's last ``z_dim``
            channels (counted in ``condition_channels``).
    """

    def __init__(self, *, z_dim: int = 32, condition_channels: int = 128, spatial_size: int = 8,
                 architecture: str = "macow", hidden_channels: int = 2048,
                 num_steps: Sequence[int] = RELEASED_NUM_STEPS, factor: int = RELEASED_FACTOR,
                 masked_conv_hidden_factor: int = 4, condition_couplings: bool = False, num_blocks: int = 16,
                 clamp: float = 2.0, seed: int = 0, static_reference: bool = False):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        # Checked here: 0 or an empty num_steps built a network that failed deep inside a convolution, divided by
        # zero, or (num_steps: []) an identity map that trained nothing.
        for name, value, minimum in (("z_dim", z_dim, 2), ("condition_channels", condition_channels, 1),
                                     ("spatial_size", spatial_size, 1), ("hidden_channels", hidden_channels, 1),
                                     ("factor", factor, 1), ("num_blocks", num_blocks, 1)):
            if not is_whole_number(value, minimum):
                raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
        if (isinstance(num_steps, (str, bytes)) or not isinstance(num_steps, Sequence) or not num_steps
                or not all(is_whole_number(steps, 1) for steps in num_steps)):
            raise ValueError(f"num_steps must list the MaCow steps of each level (whole numbers >= 1, at least one "
                             f"level), got {num_steps!r}")
        if static_reference and condition_channels <= z_dim:
            raise ValueError(f"static_reference needs the condition to end with the z_dim={z_dim} channels of the "
                             f"reference latent besides the embeddings; condition_channels={condition_channels}")
        self.static_reference = bool(static_reference)
        self.z_dim = z_dim
        self.condition_channels = condition_channels
        self.spatial_size = spatial_size
        self.architecture = architecture
        if architecture == "macow":
            self.flow: nn.Module = MaCowMultiScale(
                [self.latent_shape], [(condition_channels, spatial_size, spatial_size)], num_steps=list(num_steps),
                factor=factor, hidden_channels=hidden_channels, masked_conv_hidden_factor=masked_conv_hidden_factor,
                condition_couplings=condition_couplings, seed=seed)
        else:
            self.flow = build_coupling_flow(
                channels=z_dim, spatial_size=spatial_size, condition_channels=condition_channels,
                num_blocks=num_blocks, hidden_channels=hidden_channels, clamp=clamp, seed=seed)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(z_dim, S, S)``."""
        return (self.z_dim, self.spatial_size, self.spatial_size)

    @property
    def num_dimensions(self) -> int:
        """``z_dim * S * S``: the dimensionality the NLL is summed over."""
        return self.z_dim * self.spatial_size * self.spatial_size

    def _run(self, x: Tensor, condition: Tensor, rev: bool, jac: bool) -> tuple[Tensor, Tensor]:
        if x.shape[1:] != self.latent_shape:
            raise ValueError(f"expected a latent of shape (B, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(x.shape)}")
        expected = (x.shape[0], self.condition_channels, self.spatial_size, self.spatial_size)
        if tuple(condition.shape) != expected:
            raise ValueError(f"expected a condition of shape {expected}, got {tuple(condition.shape)}")
        # Under bf16/fp16 autocast the frozen encoders hand over half-precision latents and conditions; the flow
        # state and its log-dets must stay in fp32 (blocks.py), so half-precision inputs are promoted here.
        if x.dtype in HALF_DTYPES:
            x = x.float()
        if condition.dtype in HALF_DTYPES:
            condition = condition.float()
        reference = condition[:, -self.z_dim:] if self.static_reference else None
        if reference is not None and not rev:
            x = x - reference.to(x.dtype)
        if self.architecture == "macow":
            (out,), log_det = self.flow([x], c=[condition], rev=rev, jac=jac)
        else:
            out, log_det = self.flow(x, c=[condition], rev=rev, jac=jac)
        if reference is not None and rev:
            out = out + reference.to(out.dtype)
        if not torch.is_tensor(log_det) or log_det.dim() == 0:
            log_det = x.new_zeros(x.shape[0]) + log_det
        return out, log_det

    def forward(self, z: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        """Map a latent to its residual.

        Args:
            z: ``(B, z_dim, S, S)``.
            condition: ``(B, condition_channels, S, S)``.

        Returns:
            ``(r, log_det)``: ``r`` of the shape of ``z``, ``log_det = log|det dr/dz|`` of shape ``(B,)``.
        """
        return self._run(z, condition, rev=False, jac=True)

    def inverse(self, r: Tensor, condition: Tensor) -> Tensor:
        """Map a residual back to its latent: ``z = tau^-1(r | h)``.

        Args:
            r: ``(B, z_dim, S, S)``.
            condition: ``(B, condition_channels, S, S)``.

        Returns:
            ``z``, ``(B, z_dim, S, S)``.
        """
        return self._run(r, condition, rev=True, jac=False)[0]

    def sample(self, condition: Tensor, generator: Generators = None, temperature: float = 1.0) -> Tensor:
        """Draw ``r ~ N(0, temperature^2 I)`` and invert it.

        Args:
            condition: ``(B, condition_channels, S, S)``.
            generator: Makes the draw reproducible; ``r`` is drawn on the generator's device (so a CPU generator
                gives the same ``z`` whichever device the network is on). A sequence of generators splits the
                batch into equal consecutive groups, one per generator (:func:`ipoke.models.noise.standard_normal`).
            temperature: Standard deviation of ``r``.

        Returns:
            ``z``, ``(B, z_dim, S, S)`` in the condition's dtype if it is float64, else float32.
        """
        check_temperature(temperature)
        dtype = torch.float64 if condition.dtype == torch.float64 else torch.float32
        r = standard_normal((condition.shape[0], *self.latent_shape), generator, device=condition.device, dtype=dtype)
        return self.inverse(r * temperature, condition.to(dtype))

    def actnorm_layers(self) -> list[ActNorm]:
        """All :class:`~ipoke.models.cinn.blocks.ActNorm` layers, in module order."""
        return [module for module in self.modules() if isinstance(module, ActNorm)]

    @property
    def actnorm_initialized(self) -> bool:
        """Whether every ActNorm layer has been initialised (from data or a loaded state dict)."""
        return all(layer.is_initialized() for layer in self.actnorm_layers())

    @torch.no_grad()
    def initialize_actnorm(self, z: Tensor, condition: Tensor) -> None:
        """Data-dependent init of every ActNorm layer from one batch, each on the activations that reach it.

        Re-initialises layers that were initialised before. Runs in fp32 (or the input's dtype if float64) without
        autocast.

        Args:
            z: ``(B, z_dim, S, S)``, e.g. posterior samples of the first training batch.
            condition: ``(B, condition_channels, S, S)``.
        """
        for layer in self.actnorm_layers():
            layer.reset_initialization()
        was_training = self.training
        self.train()
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        try:
            with torch.autocast(device_type=z.device.type, enabled=False):
                self._run(z.to(dtype), condition.to(dtype), rev=False, jac=False)
        finally:
            self.train(was_training)


@torch.no_grad()
def broadcast_actnorm(model: nn.Module, src: int = 0) -> None:
    """Copy every ActNorm's parameters and init flag from rank ``src`` to all ranks (no-op if not distributed).

    ActNorm initialises on each rank's own first batch; without this the replicas of a DDP run differ from step one
    (DDP broadcasts parameters only when it wraps the model).

    Args:
        model: Any module containing :class:`~ipoke.models.cinn.blocks.ActNorm` layers.
        src: The rank whose values win.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for module in model.modules():
        if isinstance(module, ActNorm):
            for tensor in (module.log_scale.data, module.bias.data, module.initialized):
                dist.broadcast(tensor, src=src)
            module._known_initialized = False
