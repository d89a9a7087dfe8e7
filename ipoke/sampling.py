"""Using a trained iPOKE model: poke an image, get videos (``Poker``).

``Poker`` bundles the four networks of a trained model: the frozen video autoencoder, the source-image encoder,
the poke encoder and the conditional INN. Sampling draws ``r ~ N(0, I)``, inverts the cINN given
``h = [phi_x0(x0), phi_c(poke)]`` and decodes ``z`` with the first frame::

    poker = Poker.from_checkpoint("quickstart/model")            # exported folder, Lightning .ckpt or zoo name
    videos = poker.animate("plant.png", pokes=[(40, 30, 6, -2)], n_samples=4, seed=0)   # (4, T+1, 3, S, S)

Pokes are ``(x, y, dx, dy)`` in the pixels of the image you pass (any size): ``(x, y)`` is the pixel at column
``x``, row ``y``. The image is centre-cropped to a square and resized to the model's resolution, and a poke lands on
the model pixel whose area holds the centre of the poked pixel (fractional ``x, y`` count pixel centres at integers,
as OpenCV does).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import yaml
from torch import nn

from ipoke.data.datasets import PokeDataset, evaluation_clips, frames_to_tensor
from ipoke.data.pokes import poke_map_from_coords
from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.base import (
    SavableModule,
    WeightsMismatchError,
    clip_settings,
    cpu_as_cpu,
    load_network,
    networks_of_class,
    save_pretrained,
)
from ipoke.models.cinn.condition import stage2_condition
from ipoke.models.cinn.network import ConditionalINN
from ipoke.models.encoders import ImageEncoder, PokeEncoder
from ipoke.models.noise import Generators, check_generators, check_temperature, standard_normal
from ipoke.utils import atomic_directory, exclusive_output

MODEL_FILE = "poker.yaml"


MAX_POKE_LENGTH = 4  # the longest poke, in sides of the square the model sees


class ModelLoadError(ValueError):
    """A model path that exists but holds no loadable ipoke model (damaged export, foreign file)."""


ROLES = {"autoencoder": VideoAutoencoder, "image_encoder": ImageEncoder, "poke_encoder": PokeEncoder,
         "cinn": ConditionalINN}


# PIL modes whose pixels np.asarray returns as grey, RGB or RGBA values (or as integers the checks below judge);
# any other mode (palette, CMYK, YCbCr, grey + alpha, 1-bit, ...) is converted to RGB first.
PIL_MODES_READ_AS_IS = ("RGB", "RGBA", "L", "I", "F")


def load_image(image: str | os.PathLike | np.ndarray | torch.Tensor | PIL.Image.Image) -> np.ndarray:
    """An image as uint8 RGB ``(H, W, 3)``.

    Accepts a file path (any format OpenCV reads; grey and RGBA files become RGB), a PIL image (palette, CMYK, grey
    + alpha and other modes are converted to RGB, 16-bit grey scaled to 8 bits), an array ``(H, W)`` or
    ``(H, W, C)``, or a tensor ``(H, W)`` or ``(C, H, W)``, with ``C`` 1 (grey, repeated), 3 (RGB) or 4 (RGBA: the
    alpha channel is dropped, not composited). Values: integers in [0, 255], or floats in [-1, 1] (a float image
    outside [-1, 1] is refused, as a [0, 255] one would be; a [0, 1] one cannot be told apart and is read as
    [-1, 1], washed out: convert it with ``x * 2 - 1``).
    """
    if isinstance(image, (str, os.PathLike)):
        from ipoke.data.video_io import decode_image_file

        try:
            rgb = decode_image_file(image)
        except OSError as error:  # missing, a folder, unreadable
            raise FileNotFoundError(f"cannot read image {image}: {error.strerror or error}") from error
        if rgb is None:
            raise FileNotFoundError(f"cannot read image {image}: not an image file, or a damaged one")
        return rgb
    if isinstance(image, PIL.Image.Image):
        # Turned upright by its EXIF orientation, as a file path is (OpenCV applies it): a photo opened with
        # PIL.Image.open came out rotated or mirrored against the same file given as a path.
        image = PIL.ImageOps.exif_transpose(image)
    if isinstance(image, PIL.Image.Image) and image.mode.startswith("I;16"):
        # 16-bit grey (any byte order) scaled to 8 bits (x / 257, rounded; a 16-bit file given as a path is decoded
        # by OpenCV, which drops the low byte: at most one grey level apart); convert("RGB") clipped every value
        # above 255 to white.
        image = np.round(np.asarray(image.convert("I"), np.float64) / 257.0).astype(np.uint8)
    elif isinstance(image, PIL.Image.Image) and image.mode not in PIL_MODES_READ_AS_IS:
        # np.asarray gives a palette image's indices, CMYK or YCbCr values as if they were RGB(A), and two
        # channels for grey + alpha: all were animated as another picture or crashed.
        image = image.convert("RGB")
    kind = "tensor" if isinstance(image, torch.Tensor) else "array"
    given_shape = tuple(image.shape) if isinstance(image, torch.Tensor) else None
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        array = tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor.float().numpy()
    else:
        array = np.asarray(image)
    layout = "(H, W) or (C, H, W)" if kind == "tensor" else "(H, W) or (H, W, C)"
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        # The shape as given: a tensor's is quoted before the (C, H, W) -> (H, W, C) permute (an (H, W, 3) tensor
        # was reported as (W, 3, H)).
        raise ValueError(f"image {kind}s must be {layout} with C = 1, 3 or 4, got shape "
                         f"{given_shape or tuple(array.shape)}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"image {kind}s must hold numbers, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"float image {kind}s must hold values in [-1, 1], got NaN or infinite values")
        if values.min() < -1.001 or values.max() > 1.001:
            raise ValueError(f"float image {kind}s must hold values in [-1, 1], got [{values.min():.3g}, "
                             f"{values.max():.3g}]; pass uint8 for [0, 255] or map [0, 1] with x * 2 - 1")
        array = np.round((np.clip(values, -1, 1) + 1) * 127.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"integer image {kind}s must hold values in [0, 255], got [{array.min()}, "
                             f"{array.max()}]")
        array = array.astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _seed(seed: Any) -> int:
    """A seed torch accepts: a whole number in [-2**63, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not -2**63 <= int(seed) < 2**64:
        raise ValueError(f"seed must be a whole number in [-2**63, 2**64) (or None for fresh randomness), got {seed!r}")
    return int(seed)


def _check_device(device: str | torch.device) -> None:
    """Refuse a device that is not one or that this machine lacks, before any weight is read."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"map_location {device!r} is not a device; use 'cpu' or 'cuda' ('cuda:1', ...)") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"map_location {device!r}: no CUDA GPU is available here; use 'cpu'")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"map_location {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         "numbered from 0")
    if parsed.type == "cpu" and parsed.index not in (None, 0):
        raise ValueError(f"map_location {device!r}: the CPU has no index; use 'cpu'")
    if parsed.type not in ("cpu", "cuda"):
        # mps, xpu, ...: usable only if this PyTorch build and machine have them (the weights' loader would fail
        # with "Storage device not recognized", read as a damaged model); meta holds no weights at all.
        try:
            if parsed.type == "meta":
                raise RuntimeError("meta tensors hold no values")
            torch.empty(0, device=parsed)
        except Exception as error:  # noqa: BLE001 - backends fail with NotImplementedError, AssertionError, ...
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"map_location {device!r}: that device is not available here ({reason}); use 'cpu' "
                             "or 'cuda'") from None


def poke_rows(pokes: Sequence[Sequence[float]] | Sequence[float] | np.ndarray) -> np.ndarray:
    """Pokes as a float32 ``(P, 4)`` array of ``(x, y, dx, dy)`` rows, ``P >= 1``; one flat poke is one row.

    Anything else is refused rather than reshaped: four pokes of three numbers are not three pokes of four.
    """
    try:
        coords = np.asarray(pokes, np.float32)
    except (ValueError, TypeError) as error:  # ragged rows, not numbers
        raise ValueError(f"pokes must be (x, y, dx, dy) rows of four numbers, got {pokes!r}") from error
    if coords.ndim == 1 and coords.size == 4:
        coords = coords[None]
    if coords.size == 0:
        raise ValueError("give at least one poke (x, y, dx, dy)")
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"pokes must be (x, y, dx, dy) rows of four numbers, got an array of shape "
                         f"{coords.shape}")
    return coords


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` in [-1, 1] -> uint8 ``(..., H, W, 3)``."""
    array = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.movedim(-3, -1).numpy()


class Poker(nn.Module):
    """A trained iPOKE model ready to animate images.

    Args:
        autoencoder: Video autoencoder (decoder conditioned on x0).
        image_encoder: Embeds x0 as ``(64, 8, 8)``.
        poke_encoder: Embeds the poke map as ``(64, 8, 8)``.
        cinn: Conditional INN between ``z`` and ``r`` given the two embeddings.
        poke_size: Side of the square a poke fills in the poke map, as in training.
        frame_step: Stored frames between generated frames in the training clips (the data's temporal stride). A
            poke means "this pixel ends up here after ``n_frames * frame_step`` stored frames"; evaluation and
            ``ipoke sample --data`` cut clips with the same stride.
    """

    def __init__(self, *, autoencoder: VideoAutoencoder, image_encoder: ImageEncoder, poke_encoder: PokeEncoder,
                 cinn: ConditionalINN, poke_size: int = 5, frame_step: int = 1) -> None:
        super().__init__()
        self.autoencoder, self.image_encoder = autoencoder, image_encoder
        self.poke_encoder, self.cinn = poke_encoder, cinn
        self.poke_size, self.frame_step = int(poke_size), int(frame_step)
        self.requires_grad_(False).eval()

    @property
    def size(self) -> int:
        """Model resolution S."""
        return int(self.autoencoder.spatial_size)

    @property
    def n_frames(self) -> int:
        """Frames generated after x0, T."""
        return int(self.autoencoder.n_frames)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The networks' floating-point type, float32 or float64 (float inputs of any precision are cast to it).
        Half-precision networks cannot sample (the cINN's inverse runs in float32); use ``torch.autocast`` for bf16
        speed."""
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------------------------------------------------
    # Loading and saving

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Poker:
        """Load a model from an exported folder (:meth:`export`), a Lightning checkpoint of the cINN training
        module, or the name of a registered model (:mod:`ipoke.zoo`). ``map_location`` must be a device this machine
        has (a ``ValueError`` says so otherwise, rather than blaming the model)."""
        _check_device(map_location)
        map_location = cpu_as_cpu(map_location)
        path_obj = Path(path)
        # A folder or file that is not a model does not hide a registered name: zoo names such as synthetic_64 are
        # common folder and file names too (they won, and their error never mentioned the zoo). A checkpoint is a
        # zip archive (torch.save's format since PyTorch 1.6).
        not_a_model = ((path_obj.is_dir() and not (path_obj / MODEL_FILE).exists())
                       or (path_obj.is_file() and not zipfile.is_zipfile(path_obj)))
        if not path_obj.exists() or not_a_model:
            from ipoke import zoo

            try:
                registered = zoo.is_registered(str(path))
            except zoo.ZooError:  # a damaged registry: it matters only when the path itself is nothing
                if not path_obj.exists():
                    raise
                registered = False
            if registered:
                path_obj = zoo.resolve(str(path))
            elif not path_obj.exists():
                raise FileNotFoundError(f"{path} is neither a model folder, a checkpoint file nor a registered model "
                                        f"name (registered: {', '.join(zoo.names()) or 'none'})")
        if path_obj.is_dir():
            manifest_file = path_obj / MODEL_FILE
            if not manifest_file.exists():
                raise FileNotFoundError(f"{path_obj} has no {MODEL_FILE}; export a model with `ipoke export` or "
                                        "Poker.export()")
            try:
                manifest = yaml.safe_load(manifest_file.read_text())
                folders = manifest["networks"]
                if set(folders) != set(ROLES):
                    raise ValueError(f"it names the networks {sorted(folders)}, not {sorted(ROLES)}")
                networks = {role: load_network(path_obj / folder, map_location=map_location,
                                               expected_class=ROLES[role]) for role, folder in folders.items()}
            except WeightsMismatchError:
                raise  # intact weights of another architecture: its message says so, re-exporting would not help
            except (yaml.YAMLError, TypeError, KeyError, ValueError, RuntimeError, OSError) as error:
                raise ModelLoadError(f"cannot load the model in {path_obj}: {MODEL_FILE} or a network in it is "
                                     f"damaged ({type(error).__name__}: {error}); export it again") from error
            poker = cls(**networks, poke_size=manifest.get("poke_size", 5), frame_step=manifest.get("frame_step", 1))
        else:
            try:
                checkpoint = torch.load(path_obj, map_location="cpu", weights_only=False)
            except Exception as error:  # noqa: BLE001 - unpickling any file raises ImportError, KeyError, ... too
                raise ModelLoadError(f"{path_obj} is not a readable checkpoint ({type(error).__name__}: {error}); "
                                     "pass an exported model folder, a cINN Lightning .ckpt or a zoo name") from error
            poker = cls._from_loaded_checkpoint(path_obj, checkpoint, map_location=map_location)
        return poker.to(map_location)

    @classmethod
    def _from_loaded_checkpoint(cls, path: Path, checkpoint: Any, *, map_location: str | torch.device) -> Poker:
        """The model in ``checkpoint``, the contents of the cINN Lightning checkpoint at ``path`` (already read by
        the caller, so that a file of several hundred MB is not unpickled twice)."""
        if not isinstance(checkpoint, dict):
            raise ModelLoadError(f"{path} is not a Lightning checkpoint of an ipoke training module")
        from ipoke.models.cvae import PokeConditionedVAE

        if networks_of_class(checkpoint, PokeConditionedVAE):
            raise ModelLoadError(f"{path} is a checkpoint of the cVAE baseline, which Poker does not load (it animates "
                                 "iPOKE models); score the cVAE with `ipoke evaluate --ckpt` (or "
                                 "ipoke.evaluation.load_model)")
        networks = {}
        for role, role_class in ROLES.items():
            names = networks_of_class(checkpoint, role_class)
            if len(names) != 1:
                raise ModelLoadError(f"{path} does not hold exactly one {role_class.__name__} (found {names}); "
                                     "pass the checkpoint of a trained cINN module (ipoke.lightning.cinn)")
            networks[role] = load_network(path, name=names[0], map_location=map_location, checkpoint=checkpoint)
        return cls(**networks, **clip_settings(checkpoint))

    def export(self, directory: str | os.PathLike) -> Path:
        """Write the four networks and a manifest into ``directory`` atomically; :meth:`from_checkpoint` loads it.

        Raises:
            FileExistsError: ``directory`` is a folder of another kind, or another process is exporting into it right
                now (two exports into one folder used to delete each other's files halfway).
        """
        directory = Path(directory)
        with exclusive_output(directory, "model export"), atomic_directory(directory, marker=MODEL_FILE) as tmp:
            for role in ROLES:
                network: SavableModule = getattr(self, role)
                save_pretrained(network, tmp / role)
            manifest = {"networks": {role: role for role in ROLES}, "poke_size": self.poke_size,
                        "frame_step": self.frame_step, "size": self.size, "n_frames": self.n_frames}
            (tmp / MODEL_FILE).write_text(yaml.safe_dump(manifest, sort_keys=False))
        return directory

    # ------------------------------------------------------------------------------------------------------------
    # Core sampling on model-resolution tensors

    def condition(self, first_frame: torch.Tensor, poke: torch.Tensor) -> torch.Tensor:
        """``h = [phi_x0(x0), phi_c(poke)]`` (``(B, 128, 8, 8)`` in iPOKE), from x0 ``(B, 3, S, S)`` and poke
        ``(B, 2, S, S)``; followed by the static latent when the cINN has ``static_reference``."""
        return stage2_condition(image_encoder=self.image_encoder, poke_encoder=self.poke_encoder,
                                first_frame=first_frame, poke=poke,
                                autoencoder=self.autoencoder if self.cinn.static_reference else None)

    @torch.no_grad()
    def sample(self, first_frame: torch.Tensor, poke: torch.Tensor, *, n_samples: int = 1,
               generator: Generators = None, temperature: float = 1.0,
               n_frames: int | None = None) -> torch.Tensor:
        """Videos for each (x0, poke) pair.

        Args:
            first_frame: ``(B, 3, S, S)`` in [-1, 1].
            poke: ``(B, 2, S, S)`` poke maps (pixels at size S).
            n_samples: Samples K per pair, at least 1.
            generator: Source of the residuals ``r`` (a CPU generator gives the same videos on any device); a
                sequence of exactly ``B`` generators draws each pair's samples from its own, independent of the batch.
            temperature: Standard deviation of ``r``.
            n_frames: Frames to generate (default: as trained).

        Returns:
            ``(B, K, T + 1, 3, S, S)`` in [-1, 1], x0 first.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
        self._check_inputs(first_frame=first_frame, poke=poke)
        check_temperature(temperature)
        if n_frames is not None and (isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer))
                                     or n_frames < 1):
            raise ValueError(f"n_frames must be a whole number >= 1 (or None: as trained), got {n_frames!r}")
        batch = first_frame.shape[0]
        check_generators(generator, batch, seed_hint=" (for a seed: Poker.animate(seed=))")
        device, dtype = self.device, self.dtype
        first_frame, poke = first_frame.to(device, dtype), poke.to(device, dtype)
        h = self.condition(first_frame, poke).repeat_interleave(n_samples, dim=0)
        z = self.cinn.sample(h, generator=generator, temperature=temperature)
        x0 = first_frame.repeat_interleave(n_samples, dim=0)
        frames = self.autoencoder.decode(z.to(x0.dtype), x0, n_frames=n_frames)
        video = torch.cat([x0.unsqueeze(1), frames], dim=1)
        return video.unflatten(0, (batch, n_samples))

    def _check_inputs(self, **tensors: torch.Tensor) -> None:
        """Refuse model inputs of the wrong layout or dtype before they fail deep inside a network.

        Names ending in ``first_frame`` are ``(B, 3, S, S)`` in [-1, 1], in ``poke`` ``(B, 2, S, S)`` pokes maps,
        ``source_video`` ``(B, T + 1, 3, S, S)`` in [-1, 1]; all float (of any precision: the callers cast them to
        the networks' type) and finite, with one ``B``.
        """
        if self.dtype not in (torch.float32, torch.float64):
            # The cINN draws and inverts in float32 (its inverse exponentiates scales); half-precision weights
            # failed deep inside a coupling ("Input type (float) and bias type (c10::Half) should be the same").
            raise ValueError(f"this Poker's networks are {self.dtype}; sampling needs float32 (or float64) weights. "
                             "For bf16 speed keep them in float32 and sample inside torch.autocast(device_type, "
                             "dtype=torch.bfloat16)")
        size = self.size
        for name, tensor in tensors.items():
            if name == "source_video":
                layout, expected = "(B, T + 1, 3, S, S)", (3, size, size)
            else:
                channels = 2 if name.endswith("poke") else 3
                layout, expected = f"(B, {channels}, S, S)", (channels, size, size)
            if (not isinstance(tensor, torch.Tensor) or tensor.ndim != len(layout.split(","))
                    or tuple(tensor.shape[-3:]) != expected or not tensor.is_floating_point()):
                got = (f"{tuple(tensor.shape)} {tensor.dtype}" if isinstance(tensor, torch.Tensor)
                       else type(tensor).__name__)
                raise ValueError(f"{name} must be a float tensor {layout} with S = {size}, got {got} "
                                 "(Poker.prepare maps an image and pokes in its pixels to these inputs)")
            if tensor.numel() and not torch.isfinite(tensor).all():
                raise ValueError(f"{name} must hold finite values, got NaN or infinite values")
            if tensor.numel() and not name.endswith("poke"):
                # As load_image refuses such images: a [0, 255] frame was decoded into saturated videos silently.
                low, high = float(tensor.min()), float(tensor.max())
                if low < -1.001 or high > 1.001:
                    raise ValueError(f"{name} must hold values in [-1, 1], got [{low:.3g}, {high:.3g}]; map [0, 255] "
                                     "with x / 127.5 - 1 and [0, 1] with x * 2 - 1 (Poker.prepare maps an image)")
        batches = {name: tensor.shape[0] for name, tensor in tensors.items()}
        if len(set(batches.values())) > 1:
            raise ValueError(f"the inputs must share one batch size, got {batches}")

    @torch.no_grad()
    def transfer(self, source_video: torch.Tensor, source_poke: torch.Tensor, target_first_frame: torch.Tensor,
                 target_poke: torch.Tensor | None = None) -> torch.Tensor:
        """Kinematics transfer: the residual of a real clip, replayed from another start frame.

        ``r = cinn(E(video_a) | x0_a, poke_a)``, then ``z' = cinn^-1(r | x0_b, poke)`` decoded with ``x0_b``.

        Args:
            source_video: ``(B, T + 1, 3, S, S)`` real clip whose motion is transferred.
            source_poke: ``(B, 2, S, S)`` its poke.
            target_first_frame: ``(B, 3, S, S)`` the start frame to animate.
            target_poke: ``(B, 2, S, S)``; default: the source poke (same location and vector).

        Returns:
            ``(B, T + 1, 3, S, S)`` starting with the target frame.
        """
        self._check_inputs(source_video=source_video, source_poke=source_poke, target_first_frame=target_first_frame,
                           **({} if target_poke is None else {"target_poke": target_poke}))
        if source_video.shape[1] != self.n_frames + 1:
            # The cINN models latents of clips of this length: the encoder reads any length, but the residual of
            # another length's latent means nothing to the flow.
            raise ValueError(f"source_video must have {self.n_frames + 1} frames (x0 and the {self.n_frames} this "
                             f"model generates), got {source_video.shape[1]}")
        device, dtype = self.device, self.dtype
        source_video, source_poke = source_video.to(device, dtype), source_poke.to(device, dtype)
        target_first_frame = target_first_frame.to(device, dtype)
        target_poke = source_poke if target_poke is None else target_poke.to(device, dtype)
        # The posterior mean, not a sample as in training (and the reference's `_test_transfer`): the transfer of a
        # clip is then deterministic, and with the tiny KL weight the posterior's spread is far below the latent's.
        z = self.autoencoder.encode(source_video).mean
        residual, _ = self.cinn(z, self.condition(source_video[:, 0], source_poke))
        z_target = self.cinn.inverse(residual, self.condition(target_first_frame, target_poke))
        frames = self.autoencoder.decode(z_target, target_first_frame, n_frames=source_video.shape[1] - 1)
        return torch.cat([target_first_frame.unsqueeze(1), frames], dim=1)

    # ------------------------------------------------------------------------------------------------------------
    # Convenience on user images

    def evaluation_clips(self, data_dir: str | os.PathLike, *, split: str = "test", seed: int = 42,
                         max_clips: int | None = None) -> PokeDataset:
        """A dataset's clips as this model takes them: :func:`ipoke.data.datasets.evaluation_clips` at the model's
        size, clip length, frame step and poke size (one seeded poke per clip, no augmentation)."""
        from ipoke.data.datasets import check_clip_lag
        from ipoke.data.format import PreparedDataset

        check_clip_lag(PreparedDataset(data_dir), self.n_frames, self.frame_step, model=True)  # says what to change
        return evaluation_clips(data_dir, split=split, size=self.size, n_frames=self.n_frames,
                                frame_step=self.frame_step, poke_size=self.poke_size, seed=seed, max_clips=max_clips)

    def prepare_image(self, image: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The model's view of an image of any size: its centre square, resized to ``S x S``.

        Args:
            image: Anything :func:`load_image` takes.

        Returns:
            ``(uint8 (S, S, 3), (left, top, side))``: the square ``[left, left + side) x [top, top + side)`` of the
            image was resized.
        """
        array = load_image(image)
        height, width = array.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        interpolation = cv2.INTER_AREA if side > self.size else cv2.INTER_LINEAR
        resized = cv2.resize(array[top:top + side, left:left + side], (self.size, self.size),
                             interpolation=interpolation)
        return resized, (left, top, side)

    def prepare(self, image: Any, pokes: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Map an image of any size and pokes in its pixels to model inputs.

        Args:
            image: Path, uint8 ``(H, W, 3)`` array or ``(3, H, W)`` tensor.
            pokes: ``(x, y, dx, dy)`` rows in the image's pixels: ``(x, y)`` is the pixel at column ``x``, row ``y``
                (fractions count pixel centres at integers, as OpenCV does).

        Returns:
            ``(x0 (1, 3, S, S), poke map (1, 2, S, S), pokes (P, 4) in model pixels)``. The model pixel ``i`` spans
            ``[i, i + 1)`` there (as in the datasets' pokes): a poke is mapped to the position of the poked pixel's
            centre, and the poke map is centred on the model pixel that holds it.
        """
        array = load_image(image)
        coords = poke_rows(pokes)
        if not np.isfinite(coords).all():
            raise ValueError(f"pokes must be finite numbers, got {coords.tolist()}")
        height, width = array.shape[:2]
        # Pixel p spans [p - 0.5, p + 0.5): the integers 0 .. width - 1 are the columns.
        outside = ((coords[:, 0] < -0.5) | (coords[:, 0] >= width - 0.5) | (coords[:, 1] < -0.5)
                   | (coords[:, 1] >= height - 0.5))
        if outside.any():
            raise ValueError(f"poke(s) {coords[outside, :2].tolist()} lie outside the {width}x{height} image "
                             f"(columns 0 to {width - 1}, rows 0 to {height - 1})")
        resized, (left, top, side) = self.prepare_image(array)
        lengths = np.hypot(coords[:, 2], coords[:, 3])
        if (lengths > MAX_POKE_LENGTH * side).any():  # 1e9 gave NaN videos, or an OpenCV error drawing the arrow
            raise ValueError(f"poke(s) of length {lengths.max():.4g} px are longer than {MAX_POKE_LENGTH} times the "
                             f"{side} px square the model sees")
        scale = self.size / side
        # The centre of the poked pixel, in model pixels (pixel i spans [i, i + 1) there). Mapping the pixel's
        # corner, (x - left) * scale, put many pokes one model pixel up or left of the one holding the poked pixel
        # wherever the square is no whole multiple of the model's size (pixel 39 of a 100 px image fell in model
        # pixel 24 of 64, its centre is in 25). In float64, so that a centre on a model pixel's edge is not rounded
        # across it.
        centres = coords[:, :2].astype(np.float64) + 0.5
        positions = (centres - np.array([left, top])) * self.size / side
        inside = ((positions >= 0) & (positions < self.size)).all(axis=1)
        if not inside.all():
            raise ValueError(f"poke(s) {coords[~inside, :2].tolist()} fall outside the centre square crop (columns "
                             f"{left} to {left + side - 1}, rows {top} to {top + side - 1}) the model sees")
        mapped = coords.copy()
        mapped[:, :2] = positions
        mapped[:, 2:] = coords[:, 2:] * scale
        x0 = frames_to_tensor(resized[None])
        poke = torch.from_numpy(poke_map_from_coords(mapped, self.size, self.poke_size)).unsqueeze(0)
        return x0, poke, mapped

    def animate(self, image: Any, pokes: Sequence[Sequence[float]], *, n_samples: int = 4, seed: int | None = 0,
                temperature: float = 1.0, n_frames: int | None = None) -> torch.Tensor:
        """Animate an image with one or more pokes.

        Args:
            image: Path, uint8 ``(H, W, 3)`` array or ``(3, H, W)`` tensor, any size.
            pokes: ``(x, y, dx, dy)`` rows in the image's pixels (all applied together), or one such row; they must
                lie in the centre square crop of the image.
            n_samples: Videos to draw, at least 1.
            seed: Seed of the residuals (same seed, same videos); ``None`` for fresh randomness.
            temperature: Standard deviation of the residuals.
            n_frames: Frames to generate (default: as trained).

        Returns:
            ``(n_samples, T + 1, 3, S, S)`` in [-1, 1]; frame 0 is the prepared input image.
        """
        x0, poke, _ = self.prepare(image, pokes)
        generator = None if seed is None else torch.Generator().manual_seed(_seed(seed))
        return self.sample(x0, poke, n_samples=n_samples, generator=generator, temperature=temperature,
                           n_frames=n_frames)[0]

    def control_sensitivity(self, image: Any, x: float, y: float, *, magnitudes: Sequence[float] | None = None,
                            n_directions: int = 8, seed: int | None = 0,
                            temperature: float = 1.0) -> tuple[torch.Tensor, np.ndarray]:
        """One location, many poke directions and magnitudes.

        Args:
            image, x, y: The image and the poked pixel (column ``x``, row ``y``), as in :meth:`prepare`.
            magnitudes: Poke lengths in the image's pixels; default 4 and 8 pixels *of the model's resolution*
                (converted to the image's pixels, so a large photo gets pokes the model can see).
            n_directions: Directions, evenly spaced from +x.
            seed: Seed of the one residual shared by every video (None: a fresh random one).
            temperature: Standard deviation of that residual (0: the most likely residual, r = 0, for each
                poke).

        Returns:
            ``(videos (n_directions * len(magnitudes), T + 1, 3, S, S), pokes (N, 4) in the image's pixels)``;
            every video uses the same residual so only the poke differs.
        """
        image = load_image(image)  # once, not once per poke
        for name, value in (("x", x), ("y", y)):
            # One real number: a Python or numpy number, a 0-d array or a one-element tensor (a row of a poke
            # tensor); not a bool, a string or a sequence.
            try:
                number = None if isinstance(value, (bool, np.bool_, str, bytes)) else float(value)
            except (TypeError, ValueError):
                number = None
            if number is None or not math.isfinite(number):
                raise ValueError(f"{name} must be a number (a pixel of the image), got {value!r}")
        if magnitudes is None:
            side = min(image.shape[:2])
            magnitudes = (4.0 * side / self.size, 8.0 * side / self.size)
        magnitudes = np.asarray(magnitudes, np.float64).reshape(-1)
        if magnitudes.size == 0 or not np.isfinite(magnitudes).all() or (magnitudes <= 0).any():
            raise ValueError(f"magnitudes must be one or more positive poke lengths, got {magnitudes.tolist()}")
        if isinstance(n_directions, bool) or not isinstance(n_directions, (int, np.integer)) or n_directions < 1:
            raise ValueError(f"n_directions must be a whole number >= 1, got {n_directions!r}")
        check_temperature(temperature)
        angles = np.linspace(0, 2 * np.pi, n_directions, endpoint=False)
        pokes = np.array([[x, y, m * np.cos(a), m * np.sin(a)] for m in magnitudes for a in angles], np.float32)
        first = [self.prepare(image, [poke]) for poke in pokes]
        x0, maps = torch.cat([item[0] for item in first]), torch.cat([item[1] for item in first])
        # As sample() checks them (a half-precision Poker failed inside a coupling with a dtype mismatch).
        self._check_inputs(first_frame=x0, poke=maps)
        # Cast to the model's dtype like sample() (a float64 Poker failed here with a dtype mismatch).
        x0, maps = x0.to(self.device, self.dtype), maps.to(self.device, self.dtype)
        generator = None if seed is None else torch.Generator().manual_seed(_seed(seed))
        residual = standard_normal((1, *self.cinn.latent_shape), generator) * temperature  # as sample() draws
        with torch.no_grad():
            h = self.condition(x0, maps)
            z = self.cinn.inverse(residual.expand(len(pokes), -1, -1, -1).to(h), h)
            frames = self.autoencoder.decode(z, x0)
        return torch.cat([x0.to(frames.device).unsqueeze(1), frames], dim=1), pokes
