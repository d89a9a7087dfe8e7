"""Optical flow between two RGB frames, without custom CUDA ops: OpenCV DIS or Farneback, or torchvision's RAFT.

All estimators take uint8 RGB frames ``(H, W, 3)`` and return float32 flow ``(2, H, W)`` in pixels: channel 0 is the
horizontal displacement ``dx``, channel 1 the vertical ``dy``, forward, so the content at ``(x, y)`` in ``frame_a`` is
at ``(x + dx, y + dy)`` in ``frame_b`` (the convention of ``docs/data_format.md``)::

    flow = estimate_flow(frame_a, frame_b)                        # DIS, MEDIUM preset (default)
    flow = estimate_flow(frame_a, frame_b, method="farneback")
    raft = make_flow_estimator("raft", raft_model="raft_large", device="cuda")   # weights must be on disk
    flows = raft.estimate_pairs([a0, a1], [b0, b1])               # (2, 2, H, W), one batched forward pass

Which to choose (measured on this project's 2-core CPU, see ``docs/real_data.md``): DIS MEDIUM is as accurate as
Farneback on smooth synthetic motion at 3-4x the speed and copes with large motion, and needs no weights. RAFT is far
more accurate on real footage (the original iPOKE used FlowNet2, which needs custom CUDA ops) but needs its weights
file and is slow without a GPU. ipoke never downloads weights.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ipoke.utils import is_whole_number

FLOW_METHODS = ("dis", "farneback", "raft")
DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
DIS_PAD_FACTOR = 4  # see DISFlow
DIS_CHAIN_HOP = 5  # see DISFlow.estimate_lags
CONSECUTIVE_CACHE = 64  # consecutive-frame flows a DISFlow remembers
CHAIN_ERROR_WEIGHT = 0.8  # see DISFlow.estimate_lags
# torchvision's default (best) weights of each RAFT variant; the file names are the last part of their URLs.
RAFT_WEIGHT_FILES = {"raft_small": "raft_small_C_T_V2-01064c6d.pth",
                     "raft_large": "raft_large_C_T_SKHT_V2-ff5fadd5.pth"}
RAFT_MIN_SIDE = 128


def _check_pair(frame_a: np.ndarray, frame_b: np.ndarray) -> None:
    if frame_a.shape != frame_b.shape or frame_a.ndim != 3 or frame_a.shape[-1] != 3:
        raise ValueError(f"expected two RGB frames (H, W, 3) of the same size, got {frame_a.shape} and "
                         f"{frame_b.shape}")
    if frame_a.dtype != np.uint8 or frame_b.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frame_a.dtype} and {frame_b.dtype}")


def _checked_lags(frames: Sequence[np.ndarray], lags: Sequence[int]) -> list[int]:
    """``lags`` as ints, each in ``[1, len(frames) - 1]`` (else ``ValueError``)."""
    lags = [int(lag) for lag in lags]
    if not lags or min(lags) < 1 or max(lags) >= len(frames):
        raise ValueError(f"lags must be in [1, {len(frames) - 1}] for {len(frames)} frames, got {lags}")
    return lags


class FlowEstimator:
    """Base class: ``estimator(frame_a, frame_b)`` -> float32 ``(2, H, W)``; subclasses implement :meth:`__call__`."""

    name = "base"

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def estimate_pairs(self, frames_a: Sequence[np.ndarray], frames_b: Sequence[np.ndarray]) -> np.ndarray:
        """Flow for several pairs of equally sized frames.

        Args:
            frames_a: P uint8 ``(H, W, 3)`` source frames.
            frames_b: P uint8 ``(H, W, 3)`` target frames.

        Returns:
            float32 ``(P, 2, H, W)``.
        """
        return np.stack([self(a, b) for a, b in zip(frames_a, frames_b, strict=True)])

    def estimate_lags(self, frames: Sequence[np.ndarray], lags: Sequence[int]) -> np.ndarray:
        """Flow from ``frames[0]`` to ``frames[lag]`` for each lag, float32 ``(L, 2, H, W)``: the frames of a video,
        so that an estimator may use the frames in between (:class:`DISFlow` does); here the direct estimates."""
        lags = _checked_lags(frames, lags)
        return self.estimate_pairs([frames[0]] * len(lags), [frames[lag] for lag in lags])


class DISFlow(FlowEstimator):
    """OpenCV's Dense Inverse Search flow on the grey-scale frames (CPU, deterministic, no weights).

    DIS picks its pyramid depth from the image size, so on its own it finds motion up to about a tenth of the frame
    side only (at 64 px: 6 px right, 8 px came out as -0.7; at 128 px: 12 px right, 16 px as -3): larger motion
    comes out near zero or reversed. With ``pad_factor`` > 1 (default 4) it also estimates the flow on the frames
    padded (edge pixels repeated) to ``pad_factor`` times their side, which adds ``log2(pad_factor)`` pyramid
    levels, and keeps per pixel whichever of the two flows warps the second frame onto the first with the smaller
    (locally averaged) colour error. The padded estimate finds a square moving 20 px in a 64 px frame when it stands
    out from the background by its brightness; the coarse levels that padding adds only see mean brightness, so a
    textured object on a background of the same mean brightness (most real footage) is still lost beyond about a tenth
    of the frame (8 to 20 px at 64 px: -2 to +1.4 px found). The unpadded estimate keeps what padding can blur (a
    whole-frame pan, where the repeated border does not move). Cost: about ``1 + pad_factor**2`` times the unpadded
    estimate.

    Between frames of a video, :meth:`estimate_lags` (what ``ipoke data prepare`` uses) also follows the motion
    through the frames in between, where it is small (see :meth:`estimate_lags`): that finds the textured object
    moving 10 to 20 px in a 64 px frame within 0.3 px on average over 8 scenes (0.8 at most), and 30 px (half the
    frame) within 0.5 (1.0 at most) (tests/data/test_flow.py).

    Args:
        preset: ``"medium"`` (default; most accurate), ``"fast"`` or ``"ultrafast"``.
        pad_factor: Side of the padded frames over the frames' side, a power of two >= 1 (1: no padding).
        chain_hop: Frames per hop of the chained estimate of :meth:`estimate_lags` (default 5); 0 turns the chained
            estimate off (:meth:`estimate_lags` is then the direct estimate of each pair).
    """

    name = "dis"

    def __init__(self, *, preset: str = "medium", pad_factor: int = DIS_PAD_FACTOR,
                 chain_hop: int = DIS_CHAIN_HOP) -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
        if not is_whole_number(pad_factor, 1) or int(pad_factor) & (int(pad_factor) - 1):
            raise ValueError(f"pad_factor must be a power of two >= 1, got {pad_factor!r}")
        if not is_whole_number(chain_hop, 0):
            raise ValueError(f"chain_hop must be a whole number >= 0 (0: no chained estimate), got {chain_hop!r}")
        self.preset, self.pad_factor, self.chain_hop = preset, int(pad_factor), int(chain_hop)
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        # Flows between consecutive frames, by the frames' digests: a video's windows overlap, so each consecutive
        # pair is estimated once (bounded; oldest first out).
        self._consecutive: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        _check_pair(frame_a, frame_b)
        flow = _select_by_warp_error(frame_a, frame_b, self._direct_candidates(frame_a, frame_b))
        return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)

    def estimate_lags(self, frames: Sequence[np.ndarray], lags: Sequence[int]) -> np.ndarray:
        """Flow from ``frames[0]`` to ``frames[lag]`` for each lag, using the frames in between.

        Besides the direct estimates of :meth:`__call__`, a chained one: the flows between consecutive frames are
        composed (each point followed from frame to frame) over hops of ``chain_hop`` frames, each hop refined by
        estimating the small flow left between ``frames[0]`` and the hop's end frame warped back along it, and the
        hops composed and refined the same way up to each lag. Motion between consecutive frames is small, so DIS
        finds it where the direct estimate of a large displacement fails; the refinement removes the drift that
        plain composition accumulates (2 px over 10 frames, 5 over 20 in the test scene). Per pixel, the estimate
        that warps ``frames[lag]`` onto ``frames[0]`` best is kept, a direct one only where it warps clearly better
        (its error below 0.8 times the chain's): at the edge of an object that moved far, the wrong direct
        estimate (near zero) won by a little where the locally averaged error of the right one includes the
        background beside the object (4.3 px off at 30 px instead of 1.0 at most). Occlusions break a chain; there
        the direct estimate usually wins the comparison.
        """
        frames = list(frames)
        lags = _checked_lags(frames, lags)
        for frame in frames[1:]:
            _check_pair(frames[0], frame)
        if self.chain_hop == 0:
            return super().estimate_lags(frames, lags)
        chained = self._chained(frames, lags)
        first = frames[0]
        flows = []
        for lag in lags:
            direct = self._direct_candidates(first, frames[lag])
            weights = [1.0] * len(direct) + [CHAIN_ERROR_WEIGHT]
            flows.append(_select_by_warp_error(first, frames[lag], [*direct, chained[lag]], weights))
        return np.stack([np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32) for flow in flows])

    def _calc(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        """Unpadded DIS on two RGB frames: ``(H, W, 2)``."""
        return self._dis.calc(cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(frame_b, cv2.COLOR_RGB2GRAY),
                              None)

    def _direct_candidates(self, frame_a: np.ndarray, frame_b: np.ndarray) -> list[np.ndarray]:
        """The unpadded estimate and, with ``pad_factor`` > 1, the padded one, each ``(H, W, 2)``."""
        grey_a = cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY)
        grey_b = cv2.cvtColor(frame_b, cv2.COLOR_RGB2GRAY)
        candidates = [self._dis.calc(grey_a, grey_b, None)]
        if self.pad_factor > 1:
            height, width = grey_a.shape
            top, left = (self.pad_factor - 1) * height // 2, (self.pad_factor - 1) * width // 2
            bottom, right = (self.pad_factor - 1) * height - top, (self.pad_factor - 1) * width - left
            padded_a, padded_b = (cv2.copyMakeBorder(grey, top, bottom, left, right, cv2.BORDER_REPLICATE)
                                  for grey in (grey_a, grey_b))
            candidates.append(self._dis.calc(padded_a, padded_b, None)[top:top + height, left:left + width])
        return candidates

    def _consecutive_flow(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        key = hashlib.blake2b(frame_a.tobytes() + frame_b.tobytes() + repr(frame_a.shape).encode(),
                              digest_size=16).digest()
        flow = self._consecutive.get(key)
        if flow is None:
            flow = self._calc(frame_a, frame_b)
            self._consecutive[key] = flow
            if len(self._consecutive) > CONSECUTIVE_CACHE:
                self._consecutive.popitem(last=False)
        return flow

    def _refined(self, frame_a: np.ndarray, frame_b: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """``flow`` (``frame_a`` -> ``frame_b``, ``(H, W, 2)``) plus the flow left between ``frame_a`` and
        ``frame_b`` warped back along it."""
        return flow + self._calc(frame_a, _warp(frame_b, flow))

    def _chained(self, frames: Sequence[np.ndarray], lags: Sequence[int]) -> dict[int, np.ndarray]:
        """The chained estimate from ``frames[0]`` to each lag (see :meth:`estimate_lags`), ``(H, W, 2)`` each."""
        bounds = sorted({0, *range(self.chain_hop, max(lags), self.chain_hop), *lags})
        total: np.ndarray | None = None
        chained = {}
        for start, end in zip(bounds[:-1], bounds[1:]):
            hop = self._consecutive_flow(frames[start], frames[start + 1])
            for index in range(start + 1, end):
                hop = _compose(hop, self._consecutive_flow(frames[index], frames[index + 1]))
            if end - start > 1:
                hop = self._refined(frames[start], frames[end], hop)
            total = hop if total is None else self._refined(frames[0], frames[end], _compose(total, hop))
            chained[end] = total
        return {lag: chained[lag] for lag in lags}


def _select_by_warp_error(frame_a: np.ndarray, frame_b: np.ndarray, candidates: list[np.ndarray],
                          weights: Sequence[float] | None = None) -> np.ndarray:
    """Per pixel, the candidate flow ``(H, W, 2)`` that warps ``frame_b`` onto ``frame_a`` best (the first on ties),
    each candidate's error multiplied by its weight (default 1)."""
    if len(candidates) == 1:
        return candidates[0]
    errors = np.stack([_warp_error(frame_a, frame_b, flow) * (1.0 if weights is None else weights[index])
                       for index, flow in enumerate(candidates)])
    best = np.argmin(errors, axis=0)
    return np.take_along_axis(np.stack(candidates), best[None, ..., None], axis=0)[0]


def _sampling_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return grid_x + flow[..., 0], grid_y + flow[..., 1]


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``x + flow(x)`` (bilinear, border repeated): ``frame_b`` warped back onto ``frame_a``
    when ``flow`` goes from ``frame_a`` to ``frame_b``."""
    map_x, map_y = _sampling_grid(flow)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The flow of ``first`` (a -> b) followed by ``second`` (b -> c): ``first(x) + second(x + first(x))``."""
    return first + _warp(np.ascontiguousarray(second), first)


def _warp_error(frame_a: np.ndarray, frame_b: np.ndarray, flow: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """``(H, W)`` colour error between ``frame_a`` and ``frame_b`` warped back along ``flow`` ``(H, W, 2)``,
    Gaussian-averaged over a neighbourhood (a single pixel's error is too noisy to choose a flow by)."""
    warped = _warp(frame_b, flow)
    error = np.abs(frame_a.astype(np.float32) - warped.astype(np.float32)).mean(axis=2)
    return cv2.GaussianBlur(error, (0, 0), sigma)


class FarnebackFlow(FlowEstimator):
    """OpenCV's Farneback polynomial-expansion flow (CPU, no weights; slower than DIS, weak on large motion).

    Args:
        pyramid_scale, levels, window_size, iterations, poly_n, poly_sigma: ``cv2.calcOpticalFlowFarneback``'s
            parameters; the defaults are OpenCV's documented example values.
    """

    name = "farneback"

    def __init__(self, *, pyramid_scale: float = 0.5, levels: int = 3, window_size: int = 15, iterations: int = 3,
                 poly_n: int = 5, poly_sigma: float = 1.2) -> None:
        self.parameters = (pyramid_scale, levels, window_size, iterations, poly_n, poly_sigma, 0)

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        _check_pair(frame_a, frame_b)
        grey_a = cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY)
        grey_b = cv2.cvtColor(frame_b, cv2.COLOR_RGB2GRAY)
        flow = cv2.calcOpticalFlowFarneback(grey_a, grey_b, None, *self.parameters)
        return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)


def find_raft_weights(model: str = "raft_small", *, path: str | os.PathLike | None = None) -> Path:
    """Locate the weights file of a torchvision RAFT model without downloading it.

    Args:
        model: ``"raft_small"`` or ``"raft_large"``.
        path: A weights file given by the user (a ``state_dict`` saved with ``torch.save``); when set, nothing else
            is searched.

    Returns:
        The file: ``path``, else ``RAFT_WEIGHT_FILES[model]`` in the ipoke cache or torch's hub cache.

    Raises:
        WeightsNotFoundError: If it is not there; the message names the file, where it looked and how to get it.
    """
    from ipoke.weights import WeightsNotFoundError, find_torch_hub_checkpoint

    if model not in RAFT_WEIGHT_FILES:
        raise ValueError(f"RAFT model must be one of {sorted(RAFT_WEIGHT_FILES)}, got {model!r}")
    try:
        return find_torch_hub_checkpoint(RAFT_WEIGHT_FILES[model], path=path)
    except WeightsNotFoundError as error:
        raise WeightsNotFoundError(
            f"RAFT flow needs torchvision's {model} weights: {error} Without them, use the default flow method "
            "'dis' (OpenCV, no weights).") from error


class RAFTFlow(FlowEstimator):
    """torchvision's RAFT (pure PyTorch, runs on CPU or GPU); weights are read from disk, never downloaded.

    Args:
        raft_model: ``"raft_small"`` (1 M parameters) or ``"raft_large"`` (5.3 M, more accurate).
        weights: Path of a weights file; default: the torchvision file in the ipoke or torch hub cache
            (see :func:`find_raft_weights`).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda"``.
        iterations: Number of recurrent refinement steps (12 is torchvision's default).

    Raises:
        WeightsNotFoundError: If the weights file is not found.
    """

    name = "raft"

    def __init__(self, *, raft_model: str = "raft_small", weights: str | os.PathLike | None = None,
                 device: str = "cpu", iterations: int = 12) -> None:
        weights_path = find_raft_weights(raft_model, path=weights)  # before the slow torchvision import
        import torch
        from torchvision.models import optical_flow

        network = getattr(optical_flow, raft_model)(weights=None)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise ValueError(f"{weights_path} is not a state_dict of torchvision's {raft_model}: {error}") from error
        self.raft_model = raft_model
        self.weights_path = weights_path
        self.device = torch.device(device)
        self.iterations = int(iterations)
        self.network = network.eval().to(self.device)

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        return self.estimate_pairs([frame_a], [frame_b])[0]

    def estimate_pairs(self, frames_a: Sequence[np.ndarray], frames_b: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        for frame_a, frame_b in zip(frames_a, frames_b, strict=True):
            _check_pair(frame_a, frame_b)
        height, width = frames_a[0].shape[:2]
        # RAFT's correlation pyramid needs feature maps of at least 16 x 16, i.e. images of at least 128 px: enlarge
        # small frames by an integer factor and shrink the flow back (vectors rescaled by resize_flow).
        scale = max(1, -(-RAFT_MIN_SIDE // min(height, width)))
        if scale > 1:
            frames_a = [cv2.resize(frame, (width * scale, height * scale), interpolation=cv2.INTER_LINEAR)
                        for frame in frames_a]
            frames_b = [cv2.resize(frame, (width * scale, height * scale), interpolation=cv2.INTER_LINEAR)
                        for frame in frames_b]
        big_height, big_width = height * scale, width * scale

        def to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
            batch = torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2).float()
            # RAFT's weights were trained on images in [-1, 1] and its encoder downsamples by 8, so sides must be
            # multiples of 8: pad by repeating the border, then crop the flow back.
            batch = batch / 127.5 - 1.0
            return F.pad(batch, (0, -big_width % 8, 0, -big_height % 8), mode="replicate")

        with torch.inference_mode():
            predictions = self.network(to_tensor(frames_a), to_tensor(frames_b), num_flow_updates=self.iterations)
        flow = predictions[-1][:, :, :big_height, :big_width].float().cpu().numpy()
        if scale > 1:
            flow = np.stack([resize_flow(field, (height, width)) for field in flow])
        return flow


def make_flow_estimator(method: str = "dis", **options: Any) -> FlowEstimator:
    """Build a flow estimator.

    Args:
        method: ``"dis"`` (default), ``"farneback"`` or ``"raft"``.
        **options: Passed to the estimator: ``preset``, ``pad_factor``, ``chain_hop`` (DIS); Farneback's parameters;
            ``raft_model``, ``weights``, ``device``, ``iterations`` (RAFT). Options of other methods are ignored,
            so one option dict can serve every method.

    Returns:
        A :class:`FlowEstimator`.
    """
    if method == "dis":
        return DISFlow(**{key: value for key, value in options.items()
                          if key in ("preset", "pad_factor", "chain_hop")})
    if method == "farneback":
        allowed = ("pyramid_scale", "levels", "window_size", "iterations", "poly_n", "poly_sigma")
        return FarnebackFlow(**{key: value for key, value in options.items() if key in allowed})
    if method == "raft":
        allowed = ("raft_model", "weights", "device", "iterations")
        return RAFTFlow(**{key: value for key, value in options.items() if key in allowed})
    raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")


@lru_cache(maxsize=4)
def _cached_estimator(method: str, options: tuple[tuple[str, Any], ...]) -> FlowEstimator:
    return make_flow_estimator(method, **dict(options))


def estimate_flow(frame_a: np.ndarray, frame_b: np.ndarray, method: str = "dis", **options: Any) -> np.ndarray:
    """Optical flow from ``frame_a`` to ``frame_b``.

    Args:
        frame_a: uint8 RGB ``(H, W, 3)``.
        frame_b: uint8 RGB ``(H, W, 3)``.
        method: ``"dis"`` (OpenCV DIS, MEDIUM preset; default), ``"farneback"`` or ``"raft"``.
        **options: See :func:`make_flow_estimator`; estimators are cached per method and options, so repeated
            calls do not reload RAFT.

    Returns:
        float32 ``(2, H, W)``: ``(dx, dy)`` in pixels.
    """
    return _cached_estimator(method, tuple(sorted(options.items())))(frame_a, frame_b)


def resize_flow(flow: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a flow field and rescale its vectors so they stay in pixels of the new size.

    Args:
        flow: ``(2, H, W)`` flow in pixels at ``H x W``.
        size: New side ``S`` or ``(height, width)``.

    Returns:
        float32 ``(2, height, width)``; ``dx`` is multiplied by ``width / W`` and ``dy`` by ``height / H``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    old_height, old_width = flow.shape[1:]
    if (height, width) == (old_height, old_width):
        return np.asarray(flow, dtype=np.float32).copy()
    shrinking = height < old_height and width < old_width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(np.asarray(channel, dtype=np.float32), (width, height),
                                   interpolation=interpolation) for channel in flow])
    resized[0] *= width / old_width
    resized[1] *= height / old_height
    return resized


def endpoint_error(flow: np.ndarray, reference: np.ndarray, *, border: int = 0) -> float:
    """Mean end-point error (Euclidean distance of the vectors) between two ``(2, H, W)`` flows, ignoring a border."""
    if border:
        flow = flow[:, border:-border, border:-border]
        reference = reference[:, border:-border, border:-border]
    return float(np.sqrt(((np.asarray(flow, np.float64) - reference) ** 2).sum(0)).mean())
