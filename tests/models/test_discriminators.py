"""PatchDiscriminator2d and TemporalDiscriminator: output shapes, features, spectral norm, sizes."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from ipoke.models.discriminators import PatchDiscriminator2d, TemporalDiscriminator
from ipoke.models.layers import ResBlock3d


@pytest.mark.parametrize(("spatial_size", "patches"), [(64, 6), (128, 14)])
def test_patch_discriminator_output_shape(spatial_size, patches):
    model = PatchDiscriminator2d(base_channels=8)
    assert model(torch.randn(3, 3, spatial_size, spatial_size)).shape == (3, 1, patches, patches)


def test_patch_discriminator_reference_size_and_spectral_norm():
    model = PatchDiscriminator2d()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.77e6, rel=0.01)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    assert all(parametrize.is_parametrized(conv, "weight") for conv in convs)
    assert not any(parametrize.is_parametrized(m, "weight")
                   for m in PatchDiscriminator2d(spectral_norm=False).modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("frames", [10, 11])
def test_temporal_discriminator_logits_and_features(frames):
    model = TemporalDiscriminator(channels=[8, 8, 16, 16], blocks_per_stage=1, norm_groups=4)
    logits, features = model(torch.randn(2, frames, 3, 64, 64))
    assert logits.shape == (2, 2)
    assert [tuple(f.shape) for f in features] == [
        (2, 8, frames, 16, 16), (2, 8, (frames + 1) // 2, 16, 16), (2, 16, 3, 8, 8), (2, 16, 2, 4, 4)]


def test_temporal_discriminator_is_spectrally_normalised_and_per_clip():
    model = TemporalDiscriminator(channels=[8, 8, 16, 16], blocks_per_stage=1, norm_groups=4).eval()
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear))]
    assert all(parametrize.is_parametrized(m, "weight") for m in convs)
    videos = torch.randn(2, 10, 3, 32, 32)
    with torch.no_grad():
        joint, _ = model(videos)
        single = torch.cat([model(videos[i:i + 1])[0] for i in range(2)])
    torch.testing.assert_close(joint, single, atol=1e-5, rtol=1e-5)


def test_temporal_discriminator_default_size():
    with torch.device("meta"):
        reference = TemporalDiscriminator()
        slim = TemporalDiscriminator(shortcut_kernel=1)
    # The reference's 3D ResNet-18 discriminator has 37.6 M parameters: its skip-path projections are 3x3x3 convs
    # (torchvision's r3d_18 uses 1x1x1, 33.2 M, which is what an earlier version of ours had).
    assert sum(p.numel() for p in reference.parameters()) == pytest.approx(37.6e6, rel=0.002)
    assert sum(p.numel() for p in slim.parameters()) == pytest.approx(33.17e6, rel=0.002)


def test_resblock3d_shortcut_kernel_is_checked():
    with pytest.raises(ValueError, match="shortcut_kernel must be 1 or 3"):
        ResBlock3d(4, 8, 2, 4, shortcut_kernel=2)
