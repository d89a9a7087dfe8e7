"""Multi-process training (DDP, two CPU processes over gloo): the replicas stay identical and nothing deadlocks.

Every rank saves its parameters after a few steps on its own shard of the data. Without gradient synchronisation
(or with ActNorm initialised per rank) the two sets differ; a collective call inside rank-zero-only code (as
``trainer.log_dir`` in the video callback once was) hangs the run until the timeout.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

from ipoke.lightning.autoencoder import VideoAutoencoderModule
from ipoke.lightning.callbacks import VideoLoggingCallback
from ipoke.lightning.cinn import PokeINNModule
from ipoke.lightning.encoders import ImageEncoderModule
from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.cinn import ConditionalINN
from ipoke.models.discriminators import PatchDiscriminator2d, TemporalDiscriminator
from ipoke.models.encoders import ImageEncoder

SIZE, FRAMES, Z_DIM, EMBED = 16, 3, 4, 4
BATCHES = 3  # per rank


class RandomClips(Dataset):
    """Eight different clips shaped like PokeDataModule's samples (each rank gets four of them)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        poke = torch.zeros(2, SIZE, SIZE)
        poke[:, 4:9, 4:9] = torch.randn(2, 1, 1, generator=generator) * 3
        return {"video": torch.rand(FRAMES + 1, 3, SIZE, SIZE, generator=generator) * 2 - 1,
                "flow": torch.randn(2, SIZE, SIZE, generator=generator), "poke": poke, "index": index}


class SaveReplica(L.Callback):
    """Each rank writes the clips it trained on and its final parameters to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen, self.random_states = folder, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.extend(batch["index"].tolist())
        self.random_states.append(torch.get_rng_state())  # the stream the step's noise is drawn from

    def on_train_end(self, trainer, pl_module) -> None:
        parameters = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        torch.save({"seen": self.seen, "parameters": parameters, "random_states": self.random_states},
                   self.folder / f"rank{trainer.global_rank}.pt")


def fit_on_two_processes(module: L.LightningModule, tmp_path: Path, **trainer_options) -> tuple[dict, dict, dict]:
    """Train ``module`` on 2 forked CPU processes; returns (initial, rank 0, rank 1) states.

    Forked, not spawned: ``ddp_spawn`` pickles the module, which spectral norm's parametrisations forbid. The
    60-second collective timeout turns a deadlock into an error instead of a hung test run.
    """
    initial = {name: p.detach().clone() for name, p in module.named_parameters()}
    strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=60))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, limit_train_batches=BATCHES,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=CSVLogger(tmp_path),
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SaveReplica(tmp_path), *trainer_options.pop("callbacks", [])], **trainer_options)
    loader = DataLoader(RandomClips(), batch_size=1)
    trainer.fit(module, loader, loader)
    return initial, torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


def assert_replicas_trained_identically(initial: dict, rank0: dict, rank1: dict, networks: tuple[str, ...]) -> None:
    assert rank0["seen"] and set(rank0["seen"]).isdisjoint(rank1["seen"]), "the ranks must see different clips"
    # Every rank started from the same seed and drew the same posterior noise and discriminator frames.
    assert len(rank0["random_states"]) == len(rank1["random_states"]) == BATCHES
    assert all(not torch.equal(a, b) for a, b in zip(rank0["random_states"], rank1["random_states"], strict=True))
    for network in networks:
        names = [name for name in initial if name.startswith(network + ".")]
        assert names, network
        assert any(not torch.equal(initial[n], rank0["parameters"][n]) for n in names), f"{network} did not train"
        differing = [n for n in names if not torch.equal(rank0["parameters"][n], rank1["parameters"][n])]
        assert not differing, f"replicas diverged in {differing[:3]}"


def tiny_flow() -> ConditionalINN:
    return ConditionalINN(z_dim=Z_DIM, condition_channels=2 * EMBED, spatial_size=8, architecture="coupling",
                          hidden_channels=8, num_blocks=2)


@pytest.mark.timeout(300)
def test_gan_autoencoder_trains_identical_replicas_under_plain_ddp(tmp_path):
    # Plain DDP (no find_unused_parameters): the module turns the detection on itself. The video callback logs on
    # rank 0 only and must not wait for the other rank.
    autoencoder = VideoAutoencoder(spatial_size=SIZE, n_frames=FRAMES, z_dim=Z_DIM, encoder_channels=[8, 8],
                                   decoder_channels=[8, 8], spade_hidden_channels=8, gru_layers=1, norm_groups=4,
                                   encoder_blocks_per_stage=1)
    module = VideoAutoencoderModule(
        autoencoder, PatchDiscriminator2d(base_channels=8, n_layers=2),
        TemporalDiscriminator(channels=[8, 8, 8, 8], blocks_per_stage=1, norm_groups=4), spatial_frames=2,
        learning_rate=1e-3, lr_decay_every=2)
    states = fit_on_two_processes(module, tmp_path, callbacks=[VideoLoggingCallback(every_n_steps=1, max_videos=1)])
    assert_replicas_trained_identically(*states, networks=("autoencoder", "spatial_discriminator",
                                                           "temporal_discriminator"))
    assert sorted((tmp_path / "lightning_logs" / "version_0" / "videos").glob("train_*.gif"))


@pytest.mark.timeout(300)
def test_image_encoder_with_gan_trains_identical_replicas(tmp_path):
    encoder = ImageEncoder(spatial_size=SIZE, base_channels=8, max_channels=8, embedding_channels=EMBED,
                           norm_groups=4)
    module = ImageEncoderModule(encoder, PatchDiscriminator2d(base_channels=8, n_layers=2, norm="group"),
                                gan_start_step=1)
    states = fit_on_two_processes(module, tmp_path)
    assert_replicas_trained_identically(*states, networks=("image_encoder", "discriminator"))


@pytest.mark.timeout(300)
def test_cinn_trains_identical_replicas_with_actnorm_initialised_on_rank_zero(tmp_path, make_tiny_stage1):
    module = PokeINNModule(flow=tiny_flow(), warmup_steps=1, val_sample_batches=0,
                           **make_tiny_stage1(tmp_path / "stage1"))
    states = fit_on_two_processes(module, tmp_path)
    assert_replicas_trained_identically(*states, networks=("flow",))


def test_cuda_graph_option_refuses_several_processes(tmp_path, make_tiny_stage1):
    module = PokeINNModule(flow=tiny_flow(), cuda_graph=True, **make_tiny_stage1(tmp_path))
    module.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", logger=False)
    with pytest.raises(ValueError, match="cuda_graph trains on one device, but this run has 2 processes"):
        module.setup("fit")
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    module.setup("fit")  # one process: fine
