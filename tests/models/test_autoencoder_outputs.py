"""The decoder's output modes: ``image`` (reference), ``residual`` (x0 + change) and ``warp`` (x0 warped + change)."""

from __future__ import annotations

import pytest
import torch

from ipoke.models.autoencoder import VideoAutoencoder, warp_backward
from ipoke.models.layers import SPADE


def _tiny(output: str, size: int = 32) -> VideoAutoencoder:
    return VideoAutoencoder(spatial_size=size, n_frames=3, z_dim=4, encoder_channels=[8, 8, 8],
                            decoder_channels=[8, 8, 8], spade_hidden_channels=8, gru_layers=1, norm_groups=4,
                            encoder_blocks_per_stage=1, output=output)


@pytest.mark.parametrize("output", ["residual", "warp"])
def test_untrained_decoder_copies_the_first_frame(output):
    model = _tiny(output)
    video = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    frames = model(video).sample
    assert frames.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(frames, video[:, :1].expand(-1, 3, -1, -1, -1), atol=1e-6, rtol=0)


def test_reference_image_decoder_does_not_copy():
    video = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    plain = _tiny("image")(video).sample
    assert not torch.allclose(plain, video[:, :1].expand(-1, 3, -1, -1, -1), atol=1e-2)


def test_unknown_output_mode_is_rejected():
    with pytest.raises(ValueError, match="output must be one of"):
        _tiny("flow")


def test_warp_backward_moves_content_by_the_flow():
    image = torch.arange(2 * 3 * 6 * 7, dtype=torch.float64).reshape(2, 3, 6, 7)
    flow = torch.zeros(2, 2, 6, 7, dtype=torch.float64)
    flow[:, 0] = 2.0  # every pixel takes the colour two columns to its right
    flow[:, 1] = -1.0  # and one row up
    out = warp_backward(image, flow)
    torch.testing.assert_close(out[:, :, 1:, :5], image[:, :, :5, 2:])
    half = warp_backward(image, torch.full_like(flow, 0.5))  # bilinear: mean of a 2x2 neighbourhood
    expected = (image[:, :, :-1, :-1] + image[:, :, 1:, :-1] + image[:, :, :-1, 1:] + image[:, :, 1:, 1:]) / 4
    torch.testing.assert_close(half[:, :, :-1, :-1], expected)


def _smooth_blob(size: int, cx: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    blob = torch.exp(-((xs - cx) ** 2 + (ys - size / 2) ** 2) / 18.0)
    return (blob * 1.6 - 0.8).expand(3, -1, -1)


@pytest.mark.parametrize("output", ["residual", "warp"])
def test_decoder_learns_a_motion(output):
    """A blob drifting right by 1.5 px per frame: both modes learn it; warp gets there with a smooth flow."""
    torch.manual_seed(0)
    model = _tiny(output)
    video = torch.stack([_smooth_blob(32, 12 + 1.5 * t) for t in range(4)])[None]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = (model(video, sample_posterior=False).sample - video[:, 1:]).abs().mean().item()
    for _ in range(40):
        loss = (model(video, sample_posterior=False).sample - video[:, 1:]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_spade_broadcasts_one_condition_over_its_frames():
    torch.manual_seed(0)
    spade = SPADE(6, 3, 8, norm_groups=3)
    x = torch.randn(2 * 4, 6, 8, 8)
    condition = torch.randn(2, 3, 16, 16)
    shared = spade(x, condition)
    repeated = spade(x, condition.repeat_interleave(4, dim=0))  # one copy of x0 per frame
    torch.testing.assert_close(shared, repeated)
    with pytest.raises(ValueError, match="multiple"):
        spade(torch.randn(5, 6, 8, 8), condition)


def test_half_resolution_decoder_upsamples_its_flow_to_the_frame():
    model = VideoAutoencoder(spatial_size=32, n_frames=3, z_dim=4, encoder_channels=[8, 8, 8],
                             decoder_channels=[8, 8], spade_hidden_channels=8, gru_layers=1, norm_groups=4,
                             encoder_blocks_per_stage=1, output="warp", decoder_size=16)
    video = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    frames = model(video).sample
    assert frames.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(frames, video[:, :1].expand(-1, 3, -1, -1, -1), atol=1e-6, rtol=0)
    with torch.no_grad():  # a constant flow of one unit (2 px at 32 px) to the right, no change
        model.decoder.to_rgb.bias[0] = 1.0
    moved = model(video, sample_posterior=False).sample
    torch.testing.assert_close(moved[..., :, :-2], video[:, :1, ..., 2:].expand(-1, 3, -1, -1, -1))
    with pytest.raises(ValueError, match="needs output 'residual' or 'warp'"):
        VideoAutoencoder(spatial_size=32, n_frames=3, z_dim=4, encoder_channels=[8, 8, 8], decoder_channels=[8, 8],
                         output="image", decoder_size=16)
    with pytest.raises(ValueError, match="decoder_channels needs 2 entries for decoder_size 16"):
        VideoAutoencoder(spatial_size=32, n_frames=3, z_dim=4, encoder_channels=[8, 8, 8],
                         decoder_channels=[8, 8, 8], output="warp", decoder_size=16)
