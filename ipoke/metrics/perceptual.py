"""LPIPS (Zhang et al. 2018) with the AlexNet backbone and the v0.1 linear heads of the ``lpips`` package.

The ``lpips`` wheel ships the small calibrated heads, but the AlexNet ImageNet backbone comes from torchvision,
which would download it. ipoke never downloads: :meth:`LearnedPerceptualSimilarity.from_pretrained` builds the
``lpips`` network with a random backbone (no download) and then loads torchvision's ``alexnet-owt-7be5be79.pth``
from the torch hub cache, the ipoke cache or a path the user gives. When the file is missing, or is not that file
(its SHA-256 must start with ``7be5be79``, as torchvision names its files), it raises
:class:`~ipoke.metrics.common.MetricUnavailable`; LPIPS is never computed with another backbone under its name.

    lpips_model = LearnedPerceptualSimilarity.from_pretrained()        # or backbone_path="alexnet-owt-7be5be79.pth"
    distances = lpips_model.video_distance(prediction, target)          # (B, T)
"""

from __future__ import annotations

import os
import warnings

import lpips
import numpy as np
import torch
from torch import nn

from ipoke.metrics.common import MetricUnavailable, as_tensor, to_unit_range
from ipoke.weights import WeightsNotFoundError, find_torch_hub_checkpoint, is_stand_in, load_weights_file, sha256_of

ALEXNET_FILENAME = "alexnet-owt-7be5be79.pth"
# torchvision names its weight files with the first 8 hex digits of their SHA-256 (torch.hub checks them on download).
ALEXNET_SHA256_PREFIX = "7be5be79"
# The smallest frame side AlexNet's layers up to relu5 accept: conv1 (11x11, stride 4, padding 2) gives 7 at 31 px,
# the two 3x3 stride-2 max-poolings 3 and then 1; at 30 px the second pooling gets 2x2 and fails.
LPIPS_MIN_SIZE = 31
# torchvision AlexNet ``features`` indices of the five conv layers, and the lpips slice holding each.
_ALEXNET_CONV_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def alexnet_backbone_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision AlexNet checkpoint and rename its conv weights to ``lpips``'s ``net.slice*`` keys.

    Args:
        path: A torchvision AlexNet state dict (``alexnet-owt-7be5be79.pth``; its ``features.*`` tensors are used).

    Returns:
        ``{"net.slice{k}.{i}.weight"/"bias": tensor}`` for the five conv layers.
    """
    state = load_weights_file(path)
    renamed = {}
    for index, slice_number in _ALEXNET_CONV_SLICES.items():
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            if key not in state:
                raise ValueError(f"{path} is not a torchvision AlexNet checkpoint: it lacks {key!r}")
            renamed[f"net.slice{slice_number}.{index}.{kind}"] = state[key]
    return renamed


class LearnedPerceptualSimilarity(nn.Module):
    """LPIPS distance between images in [-1, 1] (AlexNet, v0.1 heads), frozen and in eval mode.

    Build it with :meth:`from_pretrained`; the constructor takes an already assembled ``lpips.LPIPS`` network.

    Args:
        network: An ``lpips.LPIPS(net="alex", version="0.1")`` whose backbone weights are loaded.
    """

    def __init__(self, network: lpips.LPIPS) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *, backbone_path: str | os.PathLike | None = None,
                        device: torch.device | str | None = None) -> LearnedPerceptualSimilarity:
        """LPIPS-Alex v0.1 with the genuine ImageNet AlexNet backbone.

        Args:
            backbone_path: torchvision's ``alexnet-owt-7be5be79.pth``; default: looked up by
                :func:`ipoke.weights.find_torch_hub_checkpoint` (ipoke cache, then torch hub cache).
            device: Where to put the network (default CPU).

        Raises:
            MetricUnavailable: If the backbone weights are not found (the message says how to get them), or the file
                found is not torchvision's ImageNet AlexNet.
        """
        try:
            path = find_torch_hub_checkpoint(ALEXNET_FILENAME, path=backbone_path)
        except WeightsNotFoundError as error:
            raise MetricUnavailable(f"LPIPS is unavailable: {error}") from error
        digest = sha256_of(path)
        if not digest.startswith(ALEXNET_SHA256_PREFIX) and not is_stand_in(digest):
            # Until session 20 any AlexNet-shaped file (a randomly initialised one, another training) was loaded and
            # its numbers reported as LPIPS.
            raise MetricUnavailable(f"LPIPS is unavailable: {path} is not torchvision's ImageNet AlexNet "
                                    f"{ALEXNET_FILENAME} (its SHA-256 starts with {digest[:8]}, not "
                                    f"{ALEXNET_SHA256_PREFIX}); give that file, unchanged")
        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated ``pretrained=False``; with pnet_rand it builds without download.
            warnings.simplefilter("ignore", UserWarning)
            network = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        missing, unexpected = network.load_state_dict(alexnet_backbone_state(path), strict=False)
        if unexpected or any(key.startswith("net.") for key in missing):
            raise RuntimeError(f"AlexNet weights in {path} do not fit lpips: missing {missing}, "
                               f"unexpected {unexpected}")
        return cls(network).to(device or "cpu")

    @torch.no_grad()
    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        """LPIPS between pairs of images.

        Args:
            images_a: ``(N, 3, H, W)`` float in [-1, 1] (or uint8 in [0, 255]).
            images_b: ``(N, 3, H, W)``, same convention.

        Returns:
            ``(N,)`` float32 distances (0 for identical images).
        """
        device = next(self.parameters()).device
        images_a, images_b = to_unit_range(images_a).to(device), to_unit_range(images_b).to(device)
        if images_a.shape != images_b.shape or images_a.ndim != 4 or images_a.shape[1] != 3:
            raise ValueError(f"expected two (N, 3, H, W) batches, got {tuple(images_a.shape)} and "
                             f"{tuple(images_b.shape)}")
        if min(images_a.shape[-2:]) < LPIPS_MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs frames of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels, got "
                             f"{images_a.shape[-2]}x{images_a.shape[-1]} (its second max-pooling has nothing left to "
                             "pool below that)")
        return self.network(images_a, images_b).flatten().float()

    @torch.no_grad()
    def video_distance(self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, *,
                       batch_size: int = 64) -> torch.Tensor:
        """LPIPS between corresponding frames of two videos.

        Args:
            prediction: ``(B, T, 3, H, W)`` float in [-1, 1] or uint8.
            target: Same shape.
            batch_size: Frames per forward pass (memory only).

        Returns:
            ``(B, T)`` float32 distances on the CPU.
        """
        prediction, target = as_tensor(prediction), as_tensor(target)  # (numpy views with negative strides too)
        if prediction.shape != target.shape or prediction.ndim != 5:
            raise ValueError(f"expected two (B, T, 3, H, W) videos of equal shape, got {tuple(prediction.shape)} "
                             f"and {tuple(target.shape)}")
        if prediction.shape[1] == 0:  # no frames: an empty (B, 0), as SSIM and PSNR give
            return torch.zeros(prediction.shape[:2])
        flat_a, flat_b = prediction.flatten(0, 1), target.flatten(0, 1)
        distances = [self(flat_a[i:i + batch_size], flat_b[i:i + batch_size]).cpu()
                     for i in range(0, len(flat_a), batch_size)]
        return torch.cat(distances).view(prediction.shape[:2])


def lpips_per_frame(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, *,
                    model: LearnedPerceptualSimilarity) -> torch.Tensor:
    """``(B, T)`` LPIPS between corresponding frames of ``(B, T, 3, H, W)`` videos (see ``video_distance``)."""
    return model.video_distance(prediction, target)
