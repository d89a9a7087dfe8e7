"""ImageEncoder and PokeEncoder: embedding shapes at 64 and 128, outputs, save/load, a poke-to-flow fit."""

from __future__ import annotations

import re

import pytest
import torch

from ipoke.models.base import save_pretrained
from ipoke.models.encoders import ImageEncoder, PokeEncoder


@pytest.mark.parametrize("spatial_size", [64, 128])
def test_image_encoder_shapes(spatial_size):
    model = ImageEncoder(spatial_size=spatial_size)
    image = torch.rand(2, 3, spatial_size, spatial_size) * 2 - 1
    embedding = model.encode(image)
    assert embedding.shape == (2, 64, 8, 8)
    reconstruction = model.decode(embedding)
    assert reconstruction.shape == (2, 3, spatial_size, spatial_size)
    assert reconstruction.abs().max() <= 1.0


@pytest.mark.parametrize("spatial_size", [64, 128])
def test_poke_encoder_shapes(spatial_size):
    model = PokeEncoder(spatial_size=spatial_size)
    poke = torch.zeros(2, 2, spatial_size, spatial_size)
    poke[:, :, 10:15, 20:25] = torch.tensor([4.0, -3.0])[:, None, None]
    assert model.encode(poke).shape == (2, 64, 8, 8)
    assert model(poke).shape == (2, 2, spatial_size, spatial_size)


@pytest.mark.parametrize(("spatial_size", "encoder_millions", "decoder_millions"),
                         [(64, 0.26, 0.34), (128, 0.37, 0.45)])
def test_reference_sizes(spatial_size, encoder_millions, decoder_millions):
    # Reference (ipoke.md section 8), image and poke encoder alike. The encoder's count needs 3x3 skip convs in its
    # downsampling blocks (with 1x1 ones it has 0.21 M / 0.29 M).
    for model in (ImageEncoder(spatial_size=spatial_size), PokeEncoder(spatial_size=spatial_size)):
        assert sum(p.numel() for p in model.encoder.parameters()) / 1e6 == pytest.approx(encoder_millions, abs=0.005)
        assert sum(p.numel() for p in model.decoder.parameters()) / 1e6 == pytest.approx(decoder_millions, abs=0.005)


def test_poke_encoder_rejects_images():
    with pytest.raises(ValueError, match=r"poke must be \(B, 2, 64, 64\)"):
        PokeEncoder(spatial_size=64).encode(torch.zeros(1, 3, 64, 64))
    # A stem wider than the cap built, then failed in the first conv with a channel-count error.
    for cls in (ImageEncoder, PokeEncoder):
        with pytest.raises(ValueError, match=r"base_channels \(64\) must be at most max_channels \(32\)"):
            cls(spatial_size=64, base_channels=64, max_channels=32)


@pytest.mark.parametrize("cls", [ImageEncoder, PokeEncoder])
def test_save_pretrained_round_trip(cls, tmp_path):
    model = cls(spatial_size=32, base_channels=8, max_channels=16, embedding_channels=16, norm_groups=4).eval()
    x = torch.randn(2, model.in_channels, 32, 32)
    save_pretrained(model, tmp_path / "net")
    loaded = cls.from_checkpoint(tmp_path / "net")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert loaded.encode(x).shape == (2, 16, 8, 8)


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0)])
def test_any_name_of_the_cpu_loads_a_network(device, tmp_path):
    # torch.load cannot restore storages tagged "cpu:0" ("don't know how to restore data location"): the network
    # loaders failed with torch's raw error where Poker.from_checkpoint already worked.
    from ipoke.models.base import load_network

    model = ImageEncoder(spatial_size=32, base_channels=8, max_channels=16, embedding_channels=16, norm_groups=4)
    save_pretrained(model, tmp_path / "net")
    for loaded in (load_network(tmp_path / "net", map_location=device),
                   ImageEncoder.from_checkpoint(tmp_path / "net", map_location=device)):
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                     strict=True))


def test_saved_network_records_its_defaults_and_survives_a_changed_default(tmp_path, monkeypatch):
    """Defaults are written with the network: a later version that changes one still rebuilds what was trained."""
    import inspect

    model = ImageEncoder(spatial_size=32, embedding_channels=16, norm_groups=4).eval()
    defaults = {name: parameter.default for name, parameter in inspect.signature(ImageEncoder).parameters.items()}
    assert set(model.spec()["init_args"]) == set(defaults)
    assert model.spec()["init_args"]["base_channels"] == defaults["base_channels"] == 32
    assert model.spec()["init_args"]["embedding_channels"] == 16  # given, not the default
    save_pretrained(model, tmp_path / "net")
    original_init = inspect.unwrap(ImageEncoder.__init__)
    monkeypatch.setattr(original_init, "__kwdefaults__", {**original_init.__kwdefaults__, "base_channels": 8})
    assert ImageEncoder(spatial_size=32, embedding_channels=16, norm_groups=4).config[
        "base_channels"] == 8  # the changed default is in effect for new networks
    loaded = ImageEncoder.from_checkpoint(tmp_path / "net")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert loaded.config["base_channels"] == 32 and torch.equal(loaded(x), model(x))


def test_weights_of_another_architecture_fail_clearly(tmp_path):
    """A network saved with 1x1 skip convs (earlier ipoke versions) names the tensor that does not fit."""
    from ipoke.models.base import WEIGHTS_FILE

    model = ImageEncoder(spatial_size=32, base_channels=8, max_channels=16, embedding_channels=16, norm_groups=4)
    save_pretrained(model, tmp_path / "net")
    state = torch.load(tmp_path / "net" / WEIGHTS_FILE)
    key = next(key for key, value in state.items() if "skip" in key and value.ndim == 4)
    state[key] = state[key][:, :, 1:2, 1:2].clone()
    torch.save(state, tmp_path / "net" / WEIGHTS_FILE)
    expected = rf"do not fit .*: {re.escape(key)} \(16, 8, 1, 1\) \(the network has \(16, 8, 3, 3\)\)"
    with pytest.raises(RuntimeError, match=expected):
        ImageEncoder.from_checkpoint(tmp_path / "net")


def test_poke_encoder_learns_dense_flow_from_sparse_poke():
    torch.manual_seed(0)
    model = PokeEncoder(spatial_size=16, latent_size=4, base_channels=8, max_channels=16, embedding_channels=16,
                        norm_groups=4)
    # Each sample: one poke square whose vector moves the whole image (dense flow = the poke's vector everywhere).
    vectors = torch.tensor([[3.0, 0.0], [0.0, -2.0], [-1.5, 1.5], [2.0, 2.0]])
    poke = torch.zeros(4, 2, 16, 16)
    poke[:, :, 6:11, 6:11] = vectors[:, :, None, None]
    flow = vectors[:, :, None, None].expand(-1, -1, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    initial = (model(poke) - flow).abs().mean().item()
    for _ in range(60):
        loss = (model(poke) - flow).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = (model(poke) - flow).abs().mean().item()
    assert final < initial / 5, (initial, final)
