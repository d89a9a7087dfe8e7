"""Where ipoke finds pretrained weights it cannot download: the ipoke cache and torchvision's hub cache.

Nothing in ipoke downloads weights. Pretrained networks (the I3D of FVD, the AlexNet backbone of LPIPS, a VGG19 for a
perceptual loss) are looked up, in this order, at a path the user gives, in the ipoke cache (:func:`cache_dir`) and in
torch's hub cache (``torch.hub.get_dir()/checkpoints``, where ``torchvision.models.*(weights=...)`` stores them). When
a file is missing, :class:`WeightsNotFoundError` says where it was looked for and how to get it.

    path = find_torch_hub_checkpoint("vgg19-dcbb9e9d.pth")           # or raises WeightsNotFoundError
    path = find_torch_hub_checkpoint("vgg19-dcbb9e9d.pth", path=user_path)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

CACHE_ENV = "IPOKE_CACHE"
TORCHVISION_URL = "https://download.pytorch.org/models/"


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weights file is not on this machine; the message says how to get it."""


def load_weights_file(path: str | os.PathLike) -> dict:
    """``torch.load`` of a weights file (tensors only); a file that is not one raises :class:`WeightsNotFoundError`
    naming it, instead of the unpickler's bare error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises KeyError, UnpicklingError, RuntimeError, ...
        raise WeightsNotFoundError(f"{path} is not a readable PyTorch weights file ({type(error).__name__}: "
                                   f"{error}); give the original .pth file") from error


def cache_dir() -> Path:
    """ipoke's own cache folder: ``$IPOKE_CACHE`` if set, else ``~/.cache/ipoke`` (not created here)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ipoke"


def torch_hub_checkpoint_dir() -> Path:
    """Torch's hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_torch_hub_checkpoint(filename: str, *, path: str | os.PathLike | None = None) -> Path:
    """Find a torchvision weights file such as ``alexnet-owt-7be5be79.pth`` or ``vgg19-dcbb9e9d.pth``.

    Args:
        filename: The file name torchvision downloads to (the last part of its URL).
        path: A file given by the user; when set it must exist and nothing else is searched.

    Returns:
        The path of the first existing candidate: ``path``, then ``cache_dir()/filename``, then
        ``torch_hub_checkpoint_dir()/filename``.

    Raises:
        WeightsNotFoundError: If no candidate exists; the message lists where it looked and the download URL.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} does not exist (expected a copy of {filename})")
        return path
    candidates = [cache_dir() / filename, torch_hub_checkpoint_dir() / filename]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WeightsNotFoundError(
        f"pretrained weights {filename!r} not found; looked in {', '.join(str(c) for c in candidates)}. ipoke never "
        f"downloads weights: on a machine with internet run `wget {TORCHVISION_URL}{filename}` (or instantiate the "
        f"torchvision model with its default weights once), copy the file into {torch_hub_checkpoint_dir()}, or pass "
        "its path explicitly."
    )


def sha256_of(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints do not sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state: dict) -> str:
    """Hex SHA-256 of a state dict's content: every tensor's name, dtype, shape and values, in name order.

    Independent of the file format and of where the tensors were saved, so that a converted network (the I3D of
    FVD) can be recognised however it was stored.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = torch.as_tensor(state[name]).detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# SHA-256 digests (of files, or of state dicts' content) that tests register for the weights they make: numbers
# computed with them are not the metrics, and only tests may add to this (see register_stand_in_weights).
_STAND_IN_DIGESTS: set[str] = set()


def register_stand_in_weights(digest: str) -> None:
    """FOR TESTS ONLY: let a metric load weights a test made (random AlexNet, I3D), identified by ``digest``.

    The metrics refuse weights that are not the genuine pretrained files (a number computed with a stand-in network
    is not LPIPS or FVD); tests of the loading and computing code register their stand-ins here.
    """
    _STAND_IN_DIGESTS.add(digest)


def is_stand_in(digest: str) -> bool:
    """Whether ``digest`` was registered by :func:`register_stand_in_weights`."""
    return digest in _STAND_IN_DIGESTS
