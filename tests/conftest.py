"""Shared fixtures: seeded RNGs, a restored default dtype, and tiny synthetic datasets made once per session."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

# CI runs two pytest workers on 2 cores: one thread each avoids oversubscription (small convs slow down 20-80x).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_dtype_and_one_thread():
    # Small convolutions and hundreds of tiny flow ops run far slower with several threads on a shared 2-core
    # machine than with one; pin one thread per test (and restore whatever a test changed).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> str:
    """A tiny synthetic dataset: 24 videos (train 18 / val 2 / test 4), 64x64, 10 future frames."""
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset

    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, SyntheticSettings(videos=24, frames=10, size=64, seed=0, val_fraction=0.1,
                                             test_fraction=0.15), workers=1, progress=False)
    return str(root)


def tiny_poker(n_frames: int = 10, frame_step: int = 1, static_reference: bool = False):
    """A random-weight iPOKE model with tiny widths (64 px, coupling cINN)."""
    from ipoke.models.autoencoder import VideoAutoencoder
    from ipoke.models.cinn.network import ConditionalINN
    from ipoke.models.encoders import ImageEncoder, PokeEncoder
    from ipoke.sampling import Poker

    torch.manual_seed(0)
    autoencoder = VideoAutoencoder(spatial_size=64, n_frames=n_frames, z_dim=4, encoder_channels=[8, 8, 8, 8],
                                   decoder_channels=[8, 8, 8, 8], spade_hidden_channels=8, gru_layers=1,
                                   norm_groups=4, encoder_blocks_per_stage=1)
    image_encoder = ImageEncoder(spatial_size=64, embedding_channels=8, base_channels=8, max_channels=8, norm_groups=4)
    poke_encoder = PokeEncoder(spatial_size=64, embedding_channels=8, base_channels=8, max_channels=8, norm_groups=4)
    cinn = ConditionalINN(z_dim=4, condition_channels=16 + 4 * static_reference, architecture="coupling",
                          hidden_channels=16, num_blocks=2, static_reference=static_reference)
    with torch.no_grad():  # make the cINN non-trivial (its last layers start at zero)
        for parameter in cinn.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return Poker(autoencoder=autoencoder, image_encoder=image_encoder, poke_encoder=poke_encoder, cinn=cinn,
                 frame_step=frame_step)


def save_tiny_stage1(folder, size: int = 16, n_frames: int = 3, z_dim: int = 4, embedding: int = 4) -> dict[str, str]:
    """Random tiny stage-1 networks (latent and embeddings 8x8 at 16 px) saved like trained ones in ``folder``.

    Returns the checkpoint arguments of :class:`ipoke.lightning.cinn.PokeINNModule`.
    """
    from ipoke.models.autoencoder import VideoAutoencoder
    from ipoke.models.base import save_pretrained
    from ipoke.models.encoders import ImageEncoder, PokeEncoder

    torch.manual_seed(0)
    networks = {
        "autoencoder": VideoAutoencoder(spatial_size=size, n_frames=n_frames, z_dim=z_dim, encoder_channels=[8, 8],
                                        decoder_channels=[8, 8], spade_hidden_channels=8, gru_layers=1,
                                        norm_groups=4, encoder_blocks_per_stage=1),
        "image_encoder": ImageEncoder(spatial_size=size, embedding_channels=embedding, base_channels=8,
                                      max_channels=8, norm_groups=4),
        "poke_encoder": PokeEncoder(spatial_size=size, embedding_channels=embedding, base_channels=8,
                                    max_channels=8, norm_groups=4),
    }
    return {f"{name}_checkpoint": str(save_pretrained(network, folder / name)) for name, network in networks.items()}


@pytest.fixture(scope="session")
def make_tiny_stage1():
    """:func:`save_tiny_stage1` itself."""
    return save_tiny_stage1


@pytest.fixture(scope="session")
def make_tiny_poker():
    """:func:`tiny_poker` itself, for tests that need other settings."""
    return tiny_poker


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """An exported random-weight tiny model folder (see :func:`tiny_poker`)."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_poker().export(folder)
    return folder


def _moving_textured_square(seed: int, speed: float, n_frames: int) -> tuple[list[np.ndarray], list[int]]:
    """A textured 20 px square on a textured 64 px background of the same mean brightness, moving right by ``speed``
    px per frame (rounded to whole pixels): the frames and the square's total shift at each frame."""
    rng = np.random.default_rng(seed)

    def texture(side: int, sigma: float, mean: float, spread: float) -> np.ndarray:
        smooth = cv2.GaussianBlur(rng.uniform(0, 255, (side, side, 3)).astype(np.float32), (0, 0), sigma)
        return np.clip((smooth - smooth.mean()) / smooth.std() * spread + mean, 0, 255).astype(np.uint8)

    background, square = texture(64, 2.0, 110, 50), texture(20, 1.5, 128, 60)
    frames, shifts = [], []
    for index in range(n_frames):
        shift = int(round(speed * index))
        frame = background.copy()
        frame[20:40, 5 + shift:25 + shift] = square
        frames.append(frame)
        shifts.append(shift)
    return frames, shifts


@pytest.fixture
def moving_textured_square():
    """:func:`_moving_textured_square`: the scene that the chained flow estimate is for (flow and metric tests)."""
    return _moving_textured_square
