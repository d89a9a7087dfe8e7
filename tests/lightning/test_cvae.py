"""The cVAE baseline: shapes, prior sampling, overfitting, `ipoke fit` on the tiny config, `ipoke evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ipoke.cli import main
from ipoke.lightning.cvae import PokeVAEModule
from ipoke.models.cvae import PokeConditionedVAE

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _tiny() -> PokeConditionedVAE:
    return PokeConditionedVAE(spatial_size=32, n_frames=3, z_dim=4, poke_channels=4, encoder_channels=[8, 8, 8],
                              decoder_channels=[8, 8, 8], spade_hidden_channels=8, gru_layers=1, norm_groups=4,
                              encoder_blocks_per_stage=1)


def test_shapes_and_seeded_prior_samples():
    vae = _tiny()
    video, poke = torch.rand(2, 4, 3, 32, 32) * 2 - 1, torch.randn(2, 2, 32, 32)
    frames, posterior = vae(video, poke)
    assert frames.shape == (2, 3, 3, 32, 32) and posterior.mean.shape == (2, 4, 8, 8)
    vae.eval()  # spectral norm runs a power iteration per forward in training mode
    a = vae.sample(video[:, 0], poke, n_samples=3, generator=torch.Generator().manual_seed(1))
    b = vae.sample(video[:, 0], poke, n_samples=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 4, 3, 32, 32) and torch.equal(a, b)
    assert torch.equal(a[:, :, 0], video[:, None, 0].expand(-1, 3, -1, -1, -1))
    other_poke = vae.sample(video[:, 0], -poke, n_samples=3, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, other_poke), "the poke must change the samples"
    mode = vae.sample(video[:, 0], poke, n_samples=2, generator=torch.Generator().manual_seed(1), temperature=0.0)
    other_seed = vae.sample(video[:, 0], poke, n_samples=2, generator=torch.Generator().manual_seed(7), temperature=0.0)
    assert torch.equal(mode, other_seed) and torch.equal(mode[:, 0], mode[:, 1])  # z = 0 for every draw
    half = vae.sample(video[:, 0], poke, n_samples=3, generator=torch.Generator().manual_seed(1), temperature=0.5)
    assert not torch.allclose(half[:, 0], a[:, 0]) and not torch.allclose(half[:, 0], mode[:, 0])
    with pytest.raises(ValueError, match="temperature"):
        vae.sample(video[:, 0], poke, temperature=-1.0)
    # As Poker.sample: a generator list of another length shared generators between pairs without a word; frames of
    # another size failed deep inside torch.
    with pytest.raises(ValueError, match="give one generator, or one per"):
        vae.sample(video[:, 0], poke, generator=[torch.Generator()] * (video.shape[0] + 1))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        vae.sample(video[:, 0], poke, generator=5)
    with pytest.raises(ValueError, match="first_frame must be"):
        vae.sample(video[:, 0, :, :8, :8], poke)
    for bad in (0, -1, 1.5):  # as Poker.sample (IndexError / RuntimeError from inside torch before)
        with pytest.raises(ValueError, match="n_samples must be a whole number >= 1"):
            vae.sample(video[:, 0], poke, n_samples=bad)


def test_built_like_the_quickstart_autoencoder():
    # The docstring promised every autoencoder argument; spectral_norm and decoder_size were refused.
    vae = PokeConditionedVAE(spatial_size=32, n_frames=3, z_dim=4, poke_channels=4, encoder_channels=[8, 8, 8],
                             decoder_channels=[8, 8], spade_hidden_channels=8, gru_layers=1, norm_groups=4,
                             encoder_blocks_per_stage=1, spectral_norm=False, output="warp", decoder_size=16).eval()
    assert vae.video.config["decoder_size"] == 16 and vae.video.config["output"] == "warp"
    assert not any("parametrizations" in name for name, _ in vae.named_parameters())
    video, poke = torch.rand(2, 4, 3, 32, 32) * 2 - 1, torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        frames, _ = vae(video, poke, sample_posterior=False)
    assert frames.shape == (2, 3, 3, 32, 32) and frames.abs().max() <= 1


def test_loss_drops_when_overfitting_one_batch():
    torch.manual_seed(0)
    module = PokeVAEModule(vae=_tiny(), learning_rate=3e-3, perceptual="none")
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    video = torch.stack([(smooth + 0.2 * t).clamp(-1, 1) for t in range(4)], dim=1)  # brightening clips
    batch = {"video": video, "poke": torch.randn(2, 2, 32, 32)}
    optimizer = module.configure_optimizers()
    first = module._losses(batch)["l1"].item()
    for _ in range(100):
        loss = module._losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert module._losses(batch)["l1"].item() < 0.4 * first


def test_validation_loss_does_not_depend_on_the_random_state():
    # val/loss selects checkpoints: it decoded a random posterior sample, so one checkpoint scored differently each
    # time it was validated.
    module = PokeVAEModule(vae=_tiny(), perceptual="none", kl_weight=1.0).eval()
    batch = {"video": torch.rand(2, 4, 3, 32, 32) * 2 - 1, "poke": torch.randn(2, 2, 32, 32)}
    logged = []
    module.log_dict = lambda metrics, **kwargs: logged.append({k: float(v) for k, v in metrics.items()})
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            module.validation_step(batch, 0)
    assert logged[0] == logged[1]
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = [module._losses(batch)["l1"].item() for _ in range(2)]
    assert sampled[0] != sampled[1]  # training still decodes posterior samples


def test_fit_tiny_config_then_evaluate(tmp_path, synthetic_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CONFIGS / "cvae" / "tiny.yaml"), "--data.init_args.data_dir",
                 synthetic_dataset, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]) == 0
    checkpoint = tmp_path / "runs" / "cvae" / "tiny" / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    assert isinstance(PokeConditionedVAE.from_checkpoint(checkpoint), PokeConditionedVAE)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--ckpt", str(checkpoint), "--data", synthetic_dataset, "--metrics", "ssim,diversity",
                 "--n-clips", "2", "--samples", "2", "--no-baselines", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["results"]["last"]
    assert 0 < row["ssim"] <= 1 and row["diversity/mse"] > 0 and row["n_clips"] == 2
    # `ipoke sample` said "does not hold exactly one VideoAutoencoder (found [])"; it now says what the file is.
    from ipoke.sampling import ModelLoadError, Poker

    with pytest.raises(ModelLoadError, match="checkpoint of the cVAE baseline.*ipoke evaluate --ckpt"):
        Poker.from_checkpoint(checkpoint)
    if not torch.cuda.is_available():  # torch's "Found no NVIDIA driver" for a cVAE; a cINN said it in one line
        from ipoke.evaluation import load_model

        with pytest.raises(ValueError, match="no CUDA GPU is available here"):
            load_model(checkpoint, device="cuda")
