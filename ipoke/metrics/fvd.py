"""Fréchet Video Distance with the TF protocol (Unterthiner et al. 2018, google-research ``frechet_video_distance``).

Protocol, as in the TF reference:

1. Videos (uint8 [0, 255] or float [-1, 1]) are resized frame by frame directly to 224x224 (no crop) with TF1's
   ``resize_bilinear`` convention (``align_corners=False`` and *no* half-pixel centres: source = dst * in/out),
   in [-1, 1].
2. The TF-Hub Kinetics-400 I3D (:class:`~ipoke.metrics.i3d.InceptionI3d`) maps each clip to its 400 logits
   averaged over time. TF32 is switched off during extraction (and restored afterwards) so Ampere/Hopper GPUs do
   not lower the precision of convolutions.
3. The Fréchet distance between the Gaussians of real and fake features, float64, unbiased covariance.

Caveats: FVD is biased by the sample size (roughly ∝ 1/N; with N < 400 the covariance is singular), so a value
means nothing without its N: :meth:`FrechetVideoDistance.compute` returns the clip counts with it, and sets are never
padded with duplicate clips to reach a batch multiple (TF asserts N divisible by 16; here the last batch is simply
smaller). FVD also depends on the number of frames. Agreement with TF FVD is 0.15-2 % on constant-video checks,
not bit-identical.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ipoke.metrics.common import FVD, MetricUnavailable, as_tensor, check_video, to_unit_range
from ipoke.metrics.frechet import FeatureStatistics
from ipoke.metrics.i3d import InceptionI3d
from ipoke.weights import WeightsNotFoundError

I3D_SIZE = 224


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Turn off TF32 for cuDNN convolutions and CUDA matmuls inside the block; restore the previous settings after.

    Uses PyTorch's ``fp32_precision`` settings where they exist (torch >= 2.9): once a user has set TF32 through
    them (``torch.backends.fp32_precision = "tf32"``), reading the older ``allow_tf32`` flags raises.
    """
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        previous = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = previous
        return
    previous = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = previous


def _resize_axis_tf1(images: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    in_size = images.shape[dim]
    if in_size == out_size:
        return images
    source = torch.arange(out_size, device=images.device, dtype=torch.float64) * (in_size / out_size)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    shape = [1] * images.ndim
    shape[dim] = out_size
    weight = (source - lower).to(images.dtype).view(shape)
    return images.index_select(dim, lower) * (1 - weight) + images.index_select(dim, upper) * weight


def resize_bilinear_tf1(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with TF1 ``tf.image.resize_bilinear`` defaults (``align_corners=False``, no half-pixel).

    torch's ``F.interpolate(..., align_corners=False)`` uses half-pixel centres, which shifts the image by up to
    half a source pixel relative to TF; this reproduces TF instead.

    Args:
        images: ``(..., H, W)`` float tensor.
        size: Output ``(height, width)``.

    Returns:
        ``(..., height, width)`` tensor of the same dtype.
    """
    return _resize_axis_tf1(_resize_axis_tf1(images, images.ndim - 2, size[0]), images.ndim - 1, size[1])


def preprocess_for_i3d(video: torch.Tensor | np.ndarray, *, resize: str = "tf1") -> torch.Tensor:
    """Resize a video to 224x224 in [-1, 1] as FVD's TF code does.

    Args:
        video: ``(B, T, 3, H, W)`` uint8 in [0, 255] or float in [-1, 1].
        resize: ``"tf1"`` (TF1 bilinear, the reference) or ``"torch"`` (``F.interpolate`` bilinear with half-pixel
            centres, no antialiasing).

    Returns:
        ``(B, T, 3, 224, 224)`` float32 in [-1, 1].
    """
    video = to_unit_range(video)
    check_video(video)
    if video.shape[2] != 3:
        raise ValueError(f"I3D needs RGB videos (C = 3), got shape {tuple(video.shape)}")
    batch, frames = video.shape[:2]
    if resize == "tf1":
        return resize_bilinear_tf1(video, (I3D_SIZE, I3D_SIZE))
    if resize == "torch":
        flat = F.interpolate(video.flatten(0, 1), size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
        return flat.view(batch, frames, 3, I3D_SIZE, I3D_SIZE)
    raise ValueError(f"resize must be 'tf1' or 'torch', got {resize!r}")


def _default_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_fvd_network(*, weights_path: str | os.PathLike | None = None,
                     device: torch.device | str | None = None) -> InceptionI3d:
    """The Kinetics-400 I3D for FVD, or :class:`MetricUnavailable` with install instructions when it is missing."""
    try:
        return InceptionI3d.from_kinetics400(weights_path=weights_path, device=_default_device(device))
    except WeightsNotFoundError as error:
        raise MetricUnavailable(str(error)) from error


class FrechetVideoDistance:
    """Streaming FVD: feed real and fake clips batch by batch, then :meth:`compute`.

    Only float64 sums and outer-product sums of the 400-d I3D features are kept (no clips), so memory does not grow
    with N. Real and fake sets may have different sizes; nothing is padded.

        metric = FrechetVideoDistance()
        for batch in loader:
            metric.update(real=batch["video"], fake=generate(batch))
        result = metric.compute()          # {"fvd": 56.1, "fvd/n_real": 1000, "fvd/n_fake": 1000}

    Args:
        network: An already loaded I3D (shared between metrics); default loads the Kinetics-400 weights.
        weights_path: Passed to :meth:`InceptionI3d.from_kinetics400` when ``network`` is not given.
        device: Device for I3D (default CUDA if available).
        batch_size: Clips per I3D forward pass (only memory; no effect on the value).
        resize: ``"tf1"`` (reference) or ``"torch"``; see :func:`preprocess_for_i3d`.

    Raises:
        MetricUnavailable: If the I3D weights are missing (the message says how to install them).
    """

    def __init__(self, *, network: InceptionI3d | None = None, weights_path: str | os.PathLike | None = None,
                 device: torch.device | str | None = None, batch_size: int = 16, resize: str = "tf1") -> None:
        self.device = _default_device(device) if network is None or device is not None \
            else next(network.parameters()).device
        self.network = network if network is not None else load_fvd_network(weights_path=weights_path,
                                                                              device=self.device)
        self.network = self.network.to(self.device).eval()
        self.batch_size = batch_size
        self.resize = resize
        self.real = FeatureStatistics()
        self.fake = FeatureStatistics()
        self.n_frames: int | None = None  # T of the clips seen so far: every clip of both sets must have it

    def reset(self) -> None:
        """Forget all accumulated clips."""
        self.real, self.fake = FeatureStatistics(), FeatureStatistics()
        self.n_frames = None

    @torch.no_grad()
    def features(self, videos: torch.Tensor | np.ndarray) -> torch.Tensor:
        """I3D embeddings of clips.

        Args:
            videos: ``(N, T, 3, H, W)`` uint8 in [0, 255] or float in [-1, 1], T >= 9.

        Returns:
            ``(N, 400)`` float64 CPU tensor of time-averaged Kinetics logits.
        """
        outputs = []
        with tf32_disabled():
            for start in range(0, len(videos), self.batch_size):
                chunk = videos[start:start + self.batch_size]
                chunk = as_tensor(chunk).to(self.device)
                outputs.append(self.network(preprocess_for_i3d(chunk, resize=self.resize)).double().cpu())
        return torch.cat(outputs) if outputs else torch.zeros(0, 400, dtype=torch.float64)

    def update(self, *, real: torch.Tensor | np.ndarray | None = None,
               fake: torch.Tensor | np.ndarray | None = None) -> None:
        """Add a batch of real and/or fake clips ``(N, T, 3, H, W)`` (uint8 [0, 255] or float [-1, 1]).

        Raises:
            ValueError: If T differs from that of the clips added before (real or fake): FVD depends on T, and the
                same clips cut to 16 and 9 frames scored 3482 with no warning.
        """
        given = {name: as_tensor(videos) for name, videos in (("real", real), ("fake", fake))
                 if videos is not None and len(videos)}
        n_frames = self.n_frames
        for name, videos in given.items():
            check_video(videos, f"{name} clips")
            frames = int(videos.shape[1])
            if n_frames is not None and frames != n_frames:
                before = "the clips before" if self.n_frames is not None else "the real clips"
                raise ValueError(f"these {name} clips have {frames} frames, {before} {n_frames}: FVD compares sets "
                                 "of clips of one length (cut both to the same T)")
            n_frames = frames
        # Every feature first, then the statistics: a batch that fails (too few frames for I3D, say) adds nothing,
        # neither its length nor the real half of a real + fake call.
        features = {name: self.features(videos) for name, videos in given.items()}
        for name, values in features.items():
            getattr(self, name).update(values)
        self.n_frames = n_frames

    def compute(self) -> dict[str, float | int]:
        """``{"fvd": value, "fvd/n_real": N_real, "fvd/n_fake": N_fake}``; report the counts with the value."""
        if self.real.count < 2 or self.fake.count < 2:
            raise ValueError(f"FVD needs at least 2 real and 2 fake clips, got {self.real.count} and "
                             f"{self.fake.count}")
        return {FVD: self.real.frechet_distance(self.fake), f"{FVD}/n_real": self.real.count,
                f"{FVD}/n_fake": self.fake.count}


def fvd(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, *, batch_size: int = 16,
        device: torch.device | str | None = None, weights_path: str | os.PathLike | None = None,
        network: InceptionI3d | None = None, resize: str = "tf1") -> float:
    """FVD between two sets of clips, TF protocol (224x224 TF1-bilinear, [-1, 1], I3D-K400 logits, float64 FD).

    Args:
        real: ``(N_real, T, 3, H, W)``, uint8 in [0, 255] or float in [-1, 1]; T >= 9 (FVD usually uses 16).
        fake: ``(N_fake, T, 3, H, W)``, same convention.
        batch_size: Clips per I3D forward pass (memory only).
        device: Device for I3D (default CUDA if available).
        weights_path: Optional I3D weights file (see :meth:`InceptionI3d.from_kinetics400`).
        network: An already loaded I3D, to avoid reloading it per call.
        resize: ``"tf1"`` (reference) or ``"torch"``.

    Returns:
        The FVD as a float. It depends on N (report N_real/N_fake with it) and on T.

    Raises:
        MetricUnavailable: If the I3D weights are missing.
    """
    metric = FrechetVideoDistance(network=network, weights_path=weights_path, device=device, batch_size=batch_size,
                                  resize=resize)
    metric.update(real=real, fake=fake)
    return float(metric.compute()[FVD])
