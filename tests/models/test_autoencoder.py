"""VideoAutoencoder: shapes at 64 and 128, reference sizes, posterior, determinism, save/load, overfitting."""

from __future__ import annotations

import pytest
import torch

from ipoke.models.autoencoder import AutoencoderOutput, VideoAutoencoder
from ipoke.models.base import save_pretrained


def tiny_autoencoder(spatial_size: int = 64, n_frames: int = 3) -> VideoAutoencoder:
    halvings = {32: 2, 64: 3, 128: 4}[spatial_size]
    return VideoAutoencoder(spatial_size=spatial_size, n_frames=n_frames, z_dim=8,
                            encoder_channels=[8] * (halvings + 1), decoder_channels=[16] * halvings + [8],
                            spade_hidden_channels=8, gru_layers=2, norm_groups=4, encoder_blocks_per_stage=1)


def random_video(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize("spatial_size", [64, 128])
def test_shapes_and_range(spatial_size):
    model = tiny_autoencoder(spatial_size)
    video = random_video(2, 4, spatial_size)
    out = model(video)
    assert isinstance(out, AutoencoderOutput)
    assert out.sample.shape == (2, 3, 3, spatial_size, spatial_size)
    assert out.posterior.mean.shape == (2, 8, 8, 8)
    assert out.sample.abs().max() <= 1.0
    assert model.decode(out.posterior.mode(), video[:, 0], n_frames=5).shape == (2, 5, 3, spatial_size, spatial_size)


@pytest.mark.parametrize(("spatial_size", "z_dim", "total", "decoder"),
                         [(64, 32, 19.8, 4.48), (64, 64, 20.8, 4.62), (128, 32, 29.3, 6.84), (128, 64, 30.3, 6.99)])
def test_default_widths_match_reference_parameter_counts(spatial_size, z_dim, total, decoder):
    """Reference (ipoke.md section 8): the whole autoencoder and its SPADE decoder, in millions."""
    with torch.device("meta"):
        model = VideoAutoencoder(spatial_size=spatial_size, z_dim=z_dim)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(total, abs=0.05)
    assert sum(p.numel() for p in model.decoder.parameters()) / 1e6 == pytest.approx(decoder, abs=0.01)


def test_wrong_channel_list_is_rejected():
    with pytest.raises(ValueError, match="encoder_channels needs 4 entries"):
        VideoAutoencoder(spatial_size=64, encoder_channels=[8, 8, 8])
    for name in ("z_dim", "n_frames", "gru_layers"):  # 0 built a network that failed on its first batch, or never
        with pytest.raises(ValueError, match=f"{name} must be a whole number >= 1, got 0"):
            VideoAutoencoder(spatial_size=64, **{name: 0})


def test_inputs_that_do_not_fit_are_refused():
    model = tiny_autoencoder(64).eval()
    z = torch.randn(2, 8, 8, 8)
    # Three first frames for two latents: the frame decoder's broadcast accepted any batch dividing B * T and gave
    # clip 1 the first frames of clips 1 and 2.
    for x0 in (torch.zeros(3, 3, 64, 64), torch.zeros(1, 3, 64, 64), torch.zeros(2, 3, 32, 32)):
        with pytest.raises(ValueError, match=r"first_frame must be \(B, 3, 64, 64\) with the B = 2 of z"):
            model.decode(z, x0)
    for n_frames in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n_frames must be a whole number of at least 1"):
            model.decode(z, torch.zeros(2, 3, 64, 64), n_frames=n_frames)
    # A 32 px clip gave a 4x4 latent that failed later, far from its cause.
    with pytest.raises(ValueError, match=r"video must be \(B, T\+1, 3, 64, 64\) for this 64 px autoencoder"):
        model.encode(random_video(1, 4, 32))
    with pytest.raises(ValueError, match="x0 and at least one more frame"):
        model(random_video(1, 1, 64))
    assert model.decode(z, torch.zeros(2, 3, 64, 64), n_frames=2).shape == (2, 2, 3, 64, 64)


def test_posterior_sampling_uses_generator_and_mode_is_deterministic():
    model = tiny_autoencoder().eval()
    video = random_video(1, 4, 64)
    posterior = model.encode(video)
    a = posterior.sample(torch.Generator().manual_seed(3))
    b = posterior.sample(torch.Generator().manual_seed(3))
    c = posterior.sample(torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with torch.no_grad():
        first = model(video, sample_posterior=False).sample
        second = model(video, sample_posterior=False).sample
    assert torch.equal(first, second)


def test_batch_independence():
    model = tiny_autoencoder().eval()
    video = random_video(2, 4, 64)
    with torch.no_grad():
        joint = model(video, sample_posterior=False).sample
        single = torch.cat([model(video[i:i + 1], sample_posterior=False).sample for i in range(2)])
    torch.testing.assert_close(joint, single, atol=1e-5, rtol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    model = tiny_autoencoder().eval()
    video = random_video(2, 4, 64)
    save_pretrained(model, tmp_path / "ae")
    loaded = VideoAutoencoder.from_checkpoint(tmp_path / "ae")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(video, sample_posterior=False).sample, model(video, sample_posterior=False).sample)


def test_overfits_one_tiny_batch():
    torch.manual_seed(0)
    model = VideoAutoencoder(spatial_size=16, latent_size=4, n_frames=3, z_dim=8, encoder_channels=[8, 8, 8],
                             decoder_channels=[16, 16, 8], spade_hidden_channels=8, gru_layers=2, norm_groups=4,
                             encoder_blocks_per_stage=1)
    # Two moving squares on a dark background: the decoder has to unroll the motion from z and x0.
    video = torch.full((2, 4, 3, 16, 16), -1.0)
    for t in range(4):
        video[0, t, :, 4:8, 2 + 2 * t:6 + 2 * t] = 1.0
        video[1, t, 1, 2 + 2 * t:6 + 2 * t, 8:12] = 0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def error() -> float:
        with torch.no_grad():
            return (model(video, sample_posterior=False).sample - video[:, 1:]).abs().mean().item()

    initial = error()
    for _ in range(40):
        loss = (model(video).sample - video[:, 1:]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = error()
    assert final < initial / 8, (initial, final)


def test_compiled_autoencoder_survives_a_new_batch_size():
    # `compile: true` stopped at the first batch of another size: the posterior's noise was drawn with
    # randn(mean.shape), which cannot be traced once the batch dimension turns symbolic. The eager backend traces
    # the same graph as inductor without compiling kernels, so this runs in seconds on a CPU.
    import torch

    from ipoke.models.autoencoder import VideoAutoencoder
    from ipoke.models.distributions import DiagonalGaussian

    torch.manual_seed(0)
    network = VideoAutoencoder(spatial_size=32, n_frames=3, z_dim=4, encoder_channels=[8, 8, 8],
                               decoder_channels=[8, 8, 8], spade_hidden_channels=8, gru_layers=1, norm_groups=4,
                               encoder_blocks_per_stage=1).eval()
    videos = {batch: torch.rand(batch, 4, 3, 32, 32) * 2 - 1 for batch in (2, 3, 1)}
    expected = {batch: network(video, sample_posterior=False).sample for batch, video in videos.items()}
    network.compile(backend="eager")
    for batch, video in videos.items():
        assert network(video, sample_posterior=True).sample.shape == (batch, 3, 3, 32, 32)
        torch.testing.assert_close(network(video, sample_posterior=False).sample, expected[batch])
    # A seeded draw is the same inside and outside a compiled function.
    seeded = torch.compile(lambda mean, generator: DiagonalGaussian(mean, mean).sample(generator), backend="eager")
    mean = torch.zeros(3, 4, 8, 8)
    torch.testing.assert_close(seeded(mean, torch.Generator().manual_seed(5)),
                               DiagonalGaussian(mean, mean).sample(torch.Generator().manual_seed(5)))
