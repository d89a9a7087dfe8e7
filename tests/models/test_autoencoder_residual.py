"""The optional residual decoder (frames = x0 + predicted change): exact copy at initialisation, learns changes."""

from __future__ import annotations

import torch

from ipoke.models.autoencoder import VideoAutoencoder


def _tiny(residual_output: bool) -> VideoAutoencoder:
    return VideoAutoencoder(spatial_size=32, n_frames=3, z_dim=4, encoder_channels=[8, 8, 8],
                            decoder_channels=[8, 8, 8], spade_hidden_channels=8, gru_layers=1, norm_groups=4,
                            encoder_blocks_per_stage=1, residual_output=residual_output)


def test_untrained_residual_decoder_copies_the_first_frame():
    model = _tiny(True)
    video = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    frames = model(video).sample
    assert frames.shape == (2, 3, 3, 32, 32)
    assert torch.equal(frames, video[:, :1].expand(-1, 3, -1, -1, -1))
    plain = _tiny(False)(video).sample
    assert not torch.allclose(plain, video[:, :1].expand(-1, 3, -1, -1, -1), atol=1e-2)


def test_residual_decoder_learns_a_change():
    torch.manual_seed(0)
    model = _tiny(True)
    video = torch.rand(1, 4, 3, 32, 32) * 2 - 1
    video[:, 1:] = (video[:, :1] + 0.3).clamp(-1, 1)  # every later frame is brighter than x0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = (model(video, sample_posterior=False).sample - video[:, 1:]).abs().mean().item()
    for _ in range(30):
        loss = (model(video, sample_posterior=False).sample - video[:, 1:]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
