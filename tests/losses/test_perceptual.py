"""Perceptual losses: the choice by name, VGG19 weight loading and its error, I3D features, SSIM."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import vgg19

from ipoke.losses.perceptual import I3DPerceptualLoss, SSIMLoss, VGG19PerceptualLoss, build_perceptual_loss
from ipoke.weights import WeightsNotFoundError


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "ipoke_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


@pytest.fixture(scope="module")
def random_vgg19_features_path(tmp_path_factory):
    # Only the convolutional part is needed by the loss; saving the 20 M feature weights keeps the file at 80 MB.
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    state = {f"features.{k}": v for k, v in vgg19(weights=None).features.state_dict().items()}
    torch.save(state, path)
    return path


def test_unknown_name_is_rejected():
    with pytest.raises(ValueError, match='Unknown perceptual loss "lpips"'):
        build_perceptual_loss("lpips")


def test_vgg19_without_weights_says_how_to_get_them(empty_caches):
    with pytest.raises(WeightsNotFoundError, match="vgg19-dcbb9e9d.pth") as info:
        build_perceptual_loss("vgg19")
    assert "download.pytorch.org/models/vgg19-dcbb9e9d.pth" in str(info.value)


def test_vgg19_with_a_missing_explicit_path(empty_caches):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_perceptual_loss("vgg19", weights_path=empty_caches / "nope.pth")


def test_vgg19_with_saved_random_weights(random_vgg19_features_path):
    loss = build_perceptual_loss("vgg19", weights_path=random_vgg19_features_path)
    assert isinstance(loss, VGG19PerceptualLoss)
    assert loss.state_dict() == {}  # frozen network stays out of training checkpoints
    assert not list(loss.parameters())
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == 0.0
    y = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    value = loss(y, x)
    assert value.item() > 0
    value.backward()
    assert y.grad.abs().sum() > 0


def test_vgg19_cache_lookup(monkeypatch, tmp_path, random_vgg19_features_path):
    import shutil

    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    shutil.copy(random_vgg19_features_path, tmp_path / "cache" / "vgg19-dcbb9e9d.pth")
    assert isinstance(build_perceptual_loss("vgg19"), VGG19PerceptualLoss)


def test_i3d_loss_with_a_random_network():
    from ipoke.metrics.i3d import InceptionI3d

    loss = I3DPerceptualLoss(network=InceptionI3d(), endpoints=("Conv3d_2c_3x3", "Mixed_3c"), size=32)
    x = torch.rand(1, 4, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x.flip(1), x).item() > 0
    assert loss.state_dict() == {}


def test_ssim_loss_and_none():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert isinstance(build_perceptual_loss("ssim"), SSIMLoss)
    assert SSIMLoss()(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert SSIMLoss()(-x, x).item() > 0.5
    assert build_perceptual_loss("none")(x, -x).item() == 0.0
