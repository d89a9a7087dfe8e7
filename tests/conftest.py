"""Shared fixtures: seeded RNGs, a restored default dtype, and tiny synthetic datasets made once per session."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

# The CI machine has 2 cores; more threads only contend.
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> str:
    """A tiny synthetic dataset: 24 videos (train 18 / val 2 / test 4), 64x64, 10 future frames."""
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset

    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, SyntheticSettings(videos=24, frames=10, size=64, seed=0, val_fraction=0.1,
                                             test_fraction=0.15), workers=1, progress=False)
    return str(root)
