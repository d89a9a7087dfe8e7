"""Stage-1 training modules on random tensors: fast_dev_run, GAN updates, optimisers, checkpoints, video logging."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from ipoke.lightning.autoencoder import VideoAutoencoderModule
from ipoke.lightning.callbacks import VideoLoggingCallback
from ipoke.lightning.encoders import ImageEncoderModule, PokeEncoderModule, flow_to_rgb
from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.discriminators import PatchDiscriminator2d, TemporalDiscriminator
from ipoke.models.encoders import ImageEncoder, PokeEncoder

SIZE, FRAMES = 32, 3


class RandomPokeBatches(Dataset):
    """Samples shaped like PokeDataModule's: video (T+1, 3, S, S), flow and poke (2, S, S)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        poke = torch.zeros(2, SIZE, SIZE)
        poke[:, 10:15, 10:15] = torch.randn(2, 1, 1, generator=generator) * 3
        return {"video": torch.rand(FRAMES + 1, 3, SIZE, SIZE, generator=generator) * 2 - 1,
                "flow": torch.randn(2, SIZE, SIZE, generator=generator), "poke": poke}


def loader() -> DataLoader:
    return DataLoader(RandomPokeBatches(), batch_size=2)


def tiny_autoencoder() -> VideoAutoencoder:
    return VideoAutoencoder(spatial_size=SIZE, n_frames=FRAMES, z_dim=8, encoder_channels=[8, 8, 8],
                            decoder_channels=[16, 16, 8], spade_hidden_channels=8, gru_layers=2, norm_groups=4,
                            encoder_blocks_per_stage=1)


def tiny_gan_module(**kwargs) -> VideoAutoencoderModule:
    return VideoAutoencoderModule(
        tiny_autoencoder(), PatchDiscriminator2d(base_channels=8, n_layers=2),
        TemporalDiscriminator(channels=[8, 8, 8, 8], blocks_per_stage=1, norm_groups=4),
        spatial_frames=4, learning_rate=1e-3, **kwargs)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), default_root_dir=tmp_path,
                    enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters())


def test_gan_step_updates_generator_and_both_discriminators(tmp_path):
    module = tiny_gan_module()
    before = {name: snapshot(getattr(module, name))
              for name in ("autoencoder", "spatial_discriminator", "temporal_discriminator")}
    trainer(tmp_path, max_steps=3, limit_train_batches=1, limit_val_batches=0).fit(module, loader())
    for name, params in before.items():
        assert changed(params, getattr(module, name)), name
    assert module.train_batches == 1
    logged = module.trainer.callback_metrics
    for key in ("train/d_spatial", "train/d_temporal", "train/r1", "train/g_temporal", "train/feature_matching"):
        assert torch.isfinite(logged[key]), key


def test_optimisers_hold_only_their_networks_parameters():
    module = tiny_gan_module()
    optimizers, schedulers = module.configure_optimizers()
    networks = [module.autoencoder, module.spatial_discriminator, module.temporal_discriminator]
    assert len(optimizers) == 3
    assert len(schedulers) == 3
    for optimizer, network in zip(optimizers, networks):
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert held == {id(p) for p in network.parameters()}
        assert optimizer.defaults["betas"] == (0.5, 0.9)
        assert optimizer.defaults["lr"] == 1e-3
    assert schedulers[0].gamma == 0.98


def test_gan_start_step_keeps_discriminators_frozen_before_it(tmp_path):
    module = tiny_gan_module(gan_start_step=100)
    before = snapshot(module.temporal_discriminator)
    ae_before = snapshot(module.autoencoder)
    trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(module, loader())
    assert not changed(before, module.temporal_discriminator)
    assert changed(ae_before, module.autoencoder)
    assert "train/d_loss" not in module.trainer.callback_metrics


def test_autoencoder_fast_dev_run_and_validation_metrics(tmp_path):
    module = tiny_gan_module()
    fit = trainer(tmp_path, fast_dev_run=1)
    fit.fit(module, loader(), loader())
    metrics = fit.callback_metrics
    for key in ("val/l1", "val/psnr", "val/ssim", "val/loss"):
        assert torch.isfinite(metrics[key]), key
    assert metrics["val/loss"].item() == pytest.approx(10 * metrics["val/l1"].item() + 10 * metrics[
        "val/perceptual"].item(), rel=1e-5)


def test_generator_only_autoencoder_module_loss_drops(tmp_path):
    module = VideoAutoencoderModule(tiny_autoencoder(), learning_rate=3e-3, perceptual="none")
    # Smooth clips (a colour ramp that brightens over time) that a few steps can fit.
    ramp = torch.linspace(-0.8, 0.8, SIZE).view(1, 1, 1, 1, SIZE)
    video = (ramp + torch.linspace(0, 0.2, FRAMES + 1).view(1, -1, 1, 1, 1)).expand(2, -1, 3, SIZE, -1).clone()
    video[1] = -video[1]
    samples = [{"video": video[0]}, {"video": video[1]}]
    with torch.no_grad():
        initial = module.generator_loss(video)[1]["l1"].item()
    trainer(tmp_path, max_epochs=25, limit_val_batches=0).fit(module, DataLoader(samples, batch_size=2))
    with torch.no_grad():
        final = module.generator_loss(video)[1]["l1"].item()
    assert final < initial / 3, (initial, final)
    assert len(module.configure_optimizers()[0]) == 1


def test_every_network_learning_rate_decays_every_lr_decay_every_batches(tmp_path):
    module = tiny_gan_module(lr_decay=0.5, lr_decay_every=2)
    trainer(tmp_path, max_epochs=3, limit_train_batches=5, limit_val_batches=0).fit(module, loader())
    # 3 epochs of 2 batches, a decay step after every 2nd: 1e-3 * 0.5^3 for the generator and both discriminators.
    rates = [group["lr"] for optimizer in module._optimizers() for group in optimizer.optimizer.param_groups]
    assert module.train_batches == 6 and rates == pytest.approx([1.25e-4] * 3)


def test_lightning_checkpoint_round_trip(tmp_path):
    module = tiny_gan_module()
    fit = trainer(tmp_path, max_steps=3, limit_train_batches=1, limit_val_batches=0)
    fit.fit(module, loader())
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert set(checkpoint["ipoke_networks"]) == {"autoencoder", "spatial_discriminator", "temporal_discriminator"}
    assert checkpoint["ipoke_train_batches"] == 1
    loaded = VideoAutoencoder.from_checkpoint(path)
    video = next(iter(loader()))["video"]
    module.autoencoder.eval()
    with torch.no_grad():
        assert torch.equal(loaded(video, sample_posterior=False).sample,
                           module.autoencoder(video, sample_posterior=False).sample)
    assert TemporalDiscriminator.from_checkpoint(path).config == module.temporal_discriminator.config
    # Lightning's own loader rebuilds the networks, which are constructor arguments and not hyperparameters (it
    # failed with "missing 1 required positional argument: 'autoencoder'"); the hyperparameters come back as trained.
    reloaded = VideoAutoencoderModule.load_from_checkpoint(path)
    assert reloaded.hparams.spatial_frames == 4 and reloaded.hparams.learning_rate == 1e-3
    for name in ("autoencoder", "spatial_discriminator", "temporal_discriminator"):
        assert getattr(reloaded, name).config == getattr(module, name).config, name
        for key, value in getattr(module, name).state_dict().items():
            assert torch.equal(getattr(reloaded, name).state_dict()[key], value), (name, key)
    # A network passed explicitly wins over the stored spec (and must fit the weights).
    other = tiny_autoencoder()
    assert VideoAutoencoderModule.load_from_checkpoint(path, autoencoder=other).autoencoder is other
    # A URL or fsspec path (Lightning reads those itself) still loads, networks included.
    from_url = VideoAutoencoderModule.load_from_checkpoint(f"file://{path}")
    assert from_url.autoencoder.config == module.autoencoder.config


def test_resume_restores_batch_counter(tmp_path):
    module = tiny_gan_module()
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    fit.fit(module, loader())
    fit.save_checkpoint(tmp_path / "a.ckpt")
    resumed = tiny_gan_module()
    trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(
        resumed, loader(), ckpt_path=tmp_path / "a.ckpt")
    assert resumed.train_batches == 4


@pytest.mark.parametrize("use_gan", [True, False])
def test_image_encoder_module_fast_dev_run(tmp_path, use_gan):
    encoder = ImageEncoder(spatial_size=SIZE, base_channels=8, max_channels=16, embedding_channels=16, norm_groups=4)
    discriminator = PatchDiscriminator2d(base_channels=8, n_layers=2, norm="group") if use_gan else None
    module = ImageEncoderModule(encoder, discriminator, gan_start_step=0)
    before = snapshot(encoder)
    d_before = snapshot(discriminator) if use_gan else None
    fit = trainer(tmp_path, fast_dev_run=1)
    fit.fit(module, loader(), loader())
    assert changed(before, encoder)
    if use_gan:
        assert changed(d_before, discriminator)
        assert fit.callback_metrics["train/gan_weight"] >= 0
    assert torch.isfinite(fit.callback_metrics["val/psnr"])


def test_compiled_image_encoder_survives_the_gan_start(tmp_path, monkeypatch):
    # compile: true (what the configs suggest on a GPU) crashed when the GAN started: the adaptive weight's two
    # retain_graph gradients through a compiled backward that donates its buffers, once a second batch shape had been
    # compiled. aot_eager traces as the default backend does, without its slow code generation on a CPU.
    import torch._functorch.config as functorch_config

    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: original(self, backend="aot_eager"))
    monkeypatch.setattr(functorch_config, "donated_buffer", functorch_config.donated_buffer)  # restored afterwards
    encoder = ImageEncoder(spatial_size=SIZE, base_channels=8, max_channels=8, embedding_channels=8, norm_groups=4)
    discriminator = PatchDiscriminator2d(base_channels=8, n_layers=2, norm="group")
    module = ImageEncoderModule(encoder, discriminator, gan_start_step=1, compile=True)
    before = snapshot(encoder)
    # Batches of 3 and 1 clips (a second shape), twice: the GAN runs from the second batch on.
    trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(module, DataLoader(RandomPokeBatches(), batch_size=3))
    assert module.train_batches == 4 and changed(before, encoder)
    assert torch.isfinite(module.trainer.callback_metrics["train/gan_weight"])


def test_image_encoder_gan_starts_with_the_epoch_given(tmp_path):
    # The configs start the GAN with epoch 2 (the reference's pretrain: 2 epochs): 4000 batches, the fixed count they
    # gave before, was never reached on the synthetic dataset.
    encoder = ImageEncoder(spatial_size=SIZE, base_channels=8, max_channels=16, embedding_channels=16, norm_groups=4)
    discriminator = PatchDiscriminator2d(base_channels=8, n_layers=2, norm="group")
    module = ImageEncoderModule(encoder, discriminator, gan_start_step=10**9, gan_start_epoch=1)
    d_before = snapshot(discriminator)
    trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module, loader())
    assert module.train_batches == 2 and not changed(d_before, discriminator)
    trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(module, loader(), ckpt_path=None)
    assert changed(d_before, discriminator)


def test_poke_encoder_module_regresses_flow_from_poke(tmp_path):
    encoder = PokeEncoder(spatial_size=SIZE, base_channels=8, max_channels=16, embedding_channels=16, norm_groups=4)
    module = PokeEncoderModule(encoder)
    seen = {}
    original = encoder.forward

    def recording_forward(poke):
        seen["input"] = poke
        return original(poke)

    encoder.forward = recording_forward
    fit = trainer(tmp_path, fast_dev_run=1)
    fit.fit(module, loader(), loader())
    batch = next(iter(loader()))
    assert torch.equal(seen["input"], batch["poke"])  # the poke, not the dense flow, is the input
    assert torch.isfinite(fit.callback_metrics["val/endpoint_error"])


def test_poke_encoder_motion_weight_up_weights_moving_pixels_only():
    encoder = PokeEncoder(spatial_size=SIZE, base_channels=8, max_channels=16, embedding_channels=16, norm_groups=4)
    plain = PokeEncoderModule(encoder, learned_variance=False)
    weighted = PokeEncoderModule(encoder, learned_variance=False, motion_weight=20.0, motion_threshold=0.5)
    flow = torch.zeros(1, 2, SIZE, SIZE)
    flow[:, 0, :4, :4] = 2.0  # 16 moving pixels, 2 px each
    prediction = torch.zeros_like(flow)  # "nothing moves": the plain L1's favourite answer
    moving_error = 2.0 * 16 / (2 * SIZE * SIZE)
    torch.testing.assert_close(plain.flow_loss(flow, prediction)[0], torch.tensor(moving_error))
    torch.testing.assert_close(weighted.flow_loss(flow, prediction)[0], torch.tensor(21 * moving_error))
    # Errors on static pixels keep weight 1.
    static_error = torch.zeros_like(flow)
    static_error[:, 1, -4:, -4:] = 1.0
    exact_where_moving = flow + static_error
    torch.testing.assert_close(weighted.flow_loss(flow, exact_where_moving)[0],
                               plain.flow_loss(flow, exact_where_moving)[0])
    torch.testing.assert_close(plain.flow_loss(flow, exact_where_moving)[0], torch.tensor(16 / (2 * SIZE * SIZE)))


def test_video_logging_callback_writes_gifs_for_csv_logger(tmp_path):
    module = VideoAutoencoderModule(tiny_autoencoder(), perceptual="none")
    callback = VideoLoggingCallback(every_n_steps=1, max_videos=2, log_validation=False)
    trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[callback]).fit(
        module, loader())
    names = sorted(path.name for path in callback.written)
    assert names == ["train_inputs_0000001.gif", "train_inputs_0000002.gif", "train_reconstructions_0000001.gif",
                     "train_reconstructions_0000002.gif"]
    from PIL import Image

    with Image.open(callback.written[0]) as gif:
        assert gif.n_frames == FRAMES + 1
        assert gif.size == (2 * SIZE, SIZE)
    # The folder is marked as ipoke's output: `ipoke data prepare` on a parent folder does not read the gifs.
    from ipoke.data.layouts import LayoutError, discover_videos

    with pytest.raises(LayoutError, match="no videos found"):
        discover_videos(tmp_path)
    (callback.written[0].parent / "ipoke_logged_videos.json").unlink()
    assert sorted(source.path for source in discover_videos(tmp_path)) == sorted(callback.written)
    # A resumed run goes on counting: its files do not restart at step 1 (they overwrote, or misnumbered, others).
    resumed = VideoLoggingCallback(every_n_steps=1, max_videos=1, log_validation=False)
    resumed.load_state_dict(callback.state_dict())
    assert resumed.batches_seen == 2
    trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[resumed]).fit(
        module, loader())
    assert sorted(path.name for path in resumed.written) == ["train_inputs_0000003.gif",
                                                             "train_reconstructions_0000003.gif"]


def test_video_logging_callback_logs_the_test_split_and_checks_its_arguments(tmp_path):
    # `ipoke test` logged no videos, although the CLI points users to it for a stage's reconstructions.
    callback = VideoLoggingCallback(every_n_steps=0, max_videos=1)
    trainer(tmp_path, callbacks=[callback]).test(VideoAutoencoderModule(tiny_autoencoder(), perceptual="none"),
                                                 loader())
    assert sorted(path.name for path in callback.written) == ["test_inputs_0000000.gif",
                                                              "test_reconstructions_0000000.gif"]
    # Bad values stopped training with a traceback at the first log (ZeroDivisionError for fps 0), not at start.
    for bad, message in (({"fps": 0}, "fps must be"), ({"max_videos": 0}, "max_videos must be"),
                         ({"every_n_steps": -1}, "every_n_steps must be"), ({"every_n_steps": 2.5}, "every_n_steps")):
        with pytest.raises(ValueError, match=message):
            VideoLoggingCallback(**bad)


def test_video_logging_callback_logs_to_wandb_offline_without_moviepy(tmp_path, monkeypatch):
    # W&B in offline mode needs no account and no network; plain `pip install wandb` has no moviepy, with which
    # wandb.Video would encode raw frames (it raised mid-training): the callback hands it a GIF file instead.
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    import wandb

    # The GAN module takes three optimizer steps per batch: trainer.global_step runs 3x ahead of the scalars' step.
    module = tiny_gan_module(perceptual="none")
    callback = VideoLoggingCallback(every_n_steps=1, max_videos=2, log_validation=False)
    logger = WandbLogger(project="ipoke-test", save_dir=str(tmp_path), offline=True)
    logged, log = [], wandb.sdk.wandb_run.Run.log
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log",
                        lambda run, data, *args, **kwargs: (logged.append(dict(data)), log(run, data, *args, **kwargs)))
    try:
        trainer(tmp_path, logger=logger, max_epochs=1, limit_train_batches=2, limit_val_batches=0, log_every_n_steps=1,
                callbacks=[callback]).fit(module, loader())
    finally:
        wandb.finish()
    # Videos sit on the scalars' step axis (they were plotted at the optimizer step count, past the loss curves).
    scalar_steps = [entry["trainer/global_step"] for entry in logged if "train/loss" in entry]
    video_steps = [entry["trainer/global_step"] for entry in logged if "train/inputs" in entry]
    assert scalar_steps == video_steps == [0, 1]
    assert len(callback.written) == 4  # inputs and reconstructions at steps 1 and 2, kept beside the run
    assert {path.parent.name for path in callback.written} == {logger.version}  # one folder per W&B run
    media = sorted((tmp_path / "wandb").glob("offline-run-*/files/media/videos/train/*.gif"))
    assert len(media) == 4, f"W&B stored {media}"
    assert {path.read_bytes() for path in media} == {path.read_bytes() for path in callback.written}


def test_video_logging_callback_tensorboard_without_moviepy_logs_an_image(tmp_path, monkeypatch):
    # torch's add_video only prints "add_video needs package moviepy" and logs nothing; the callback checks first and
    # logs the frames side by side instead (and keeps the GIF files).
    from lightning.pytorch.loggers import TensorBoardLogger

    import ipoke.lightning.callbacks as callbacks

    # The logger's experiment is replaced below, so TensorBoard itself (not a test dependency) is never used.
    monkeypatch.setattr("lightning.fabric.loggers.tensorboard._TENSORBOARDX_AVAILABLE", True)
    calls = []

    class Recorder:
        def add_video(self, key, video, step, fps):
            calls.append(("video", key, tuple(video.shape), step))

        def add_image(self, key, image, step):
            calls.append(("image", key, tuple(image.shape), step))

    class StubTensorBoard(TensorBoardLogger):
        @property
        def experiment(self):
            return Recorder()

        def log_metrics(self, metrics, step=None):
            if "train/loss" in metrics:
                scalar_steps.append(step)

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def save(self):
            pass

    module = VideoAutoencoderModule(tiny_autoencoder(), perceptual="none")
    scalar_steps = []
    for available, kind in ((False, "image"), (True, "video")):
        calls.clear()
        scalar_steps.clear()
        monkeypatch.setattr(callbacks, "_tensorboard_video_available", lambda available=available: available)
        callback = VideoLoggingCallback(every_n_steps=1, max_videos=2, log_validation=False)
        trainer(tmp_path / kind, logger=StubTensorBoard(str(tmp_path / kind)), max_epochs=1, limit_train_batches=1,
                log_every_n_steps=1,
                limit_val_batches=0, callbacks=[callback]).fit(module, loader())
        shapes = {"image": (3, SIZE, 2 * SIZE * (FRAMES + 1)), "video": (1, FRAMES + 1, 3, SIZE, 2 * SIZE)}
        # On the scalars' step axis (they were one step apart): the first batch's loss is logged at step 0.
        assert scalar_steps == [0]
        assert sorted(calls) == [(kind, "train/inputs", shapes[kind], 0), (kind, "train/reconstructions",
                                                                           shapes[kind], 0)]
        assert sorted(path.name for path in callback.written) == ["train_inputs_0000001.gif",
                                                                  "train_reconstructions_0000001.gif"]


def test_log_videos_shapes_and_range():
    batch = next(iter(loader()))
    videos = tiny_gan_module().log_videos(batch)
    assert videos["reconstructions"].shape == (2, FRAMES + 1, 3, SIZE, SIZE)
    assert videos["reconstructions"].abs().max() <= 1
    assert torch.equal(videos["reconstructions"][:, 0], batch["video"][:, 0])
    pokes = PokeEncoderModule(PokeEncoder(spatial_size=SIZE, base_channels=8, max_channels=16,
                                          embedding_channels=16, norm_groups=4)).log_videos(batch)
    assert pokes["poke_flow_prediction"].shape == (2, 4, 3, SIZE, SIZE)


def test_flow_to_rgb_colours():
    flow = torch.zeros(1, 2, 1, 3)
    flow[0, 0, 0, 1] = 1.0   # right: red
    flow[0, 1, 0, 2] = -1.0  # zero at index 0: white
    rgb = flow_to_rgb(flow, max_magnitude=1.0)
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.ones(3))
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([1.0, -1.0, -1.0]))


def test_video_logging_leaves_the_training_random_stream_alone(tmp_path):
    # A module whose log_videos samples from the global generator (as the cINN's and the cVAE's do): logging changed
    # every later posterior sample and poke of the training. The callback forks the random state around it.
    class SamplingModule(VideoAutoencoderModule):
        def log_videos(self, batch, max_videos=4):
            return {"noise": torch.rand(1, FRAMES + 1, 3, SIZE, SIZE) * 2 - 1}

    module = SamplingModule(tiny_autoencoder(), perceptual="none")
    callback = VideoLoggingCallback(every_n_steps=1, max_videos=1, log_validation=False)
    the_trainer = trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[callback])
    batch = next(iter(loader()))  # (a loader's iterator draws its seed from the global generator)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    callback._log(the_trainer, module, batch, "train")
    assert torch.equal(torch.get_rng_state(), before) and len(callback.written) == 1


def test_a_resumed_run_draws_new_random_numbers(tmp_path):
    # `ipoke fit` seeds every start alike (seed_everything: 0) and checkpoints hold no random state: each resumed job
    # replayed the first job's clip order, pokes, augmentation and noise. Now the stream moves on with the step.
    class Draws(L.Callback):
        def __init__(self):
            self.values = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.values.append((torch.rand(1).item(), float(np.random.rand()), random.random()))

    def run(max_epochs, ckpt_path=None):
        L.seed_everything(0, verbose=False)  # as the CLI does at each start
        draws = Draws()
        fit = trainer(tmp_path, max_epochs=max_epochs, limit_train_batches=1, limit_val_batches=0, callbacks=[draws])
        fit.fit(tiny_gan_module(), loader(), ckpt_path=ckpt_path)
        return fit, draws.values

    first, first_draws = run(1)
    first.save_checkpoint(tmp_path / "a.ckpt")
    _, resumed = run(2, tmp_path / "a.ckpt")
    _, again = run(2, tmp_path / "a.ckpt")
    assert len(resumed) == 1 and resumed == again  # reproducible
    assert all(new != old for new, old in zip(resumed[0], first_draws[0], strict=True))  # not a replay


def test_a_resume_applies_this_runs_optimiser_settings(tmp_path):
    # Lightning restores the optimisers' and schedulers' states with the settings of the run that wrote them: a resume
    # with learning_rate 1e-5 trained at the old rate (and lr_decay, betas likewise) while recording the new values.
    def module(**settings):
        return VideoAutoencoderModule(
            tiny_autoencoder(), PatchDiscriminator2d(base_channels=8, n_layers=2),
            TemporalDiscriminator(channels=[8, 8, 8, 8], blocks_per_stage=1, norm_groups=4), spatial_frames=4,
            lr_decay_every=1, **settings)

    class Seen(L.Callback):
        def __init__(self):
            self.groups, self.gammas = None, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.groups is None:
                self.groups = [dict(group) for optimizer in trainer.optimizers for group in optimizer.param_groups]
                self.gammas = [config.scheduler.gamma for config in trainer.lr_scheduler_configs]

    first = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    first.fit(module(learning_rate=1e-3, lr_decay=0.9), loader())
    first.save_checkpoint(tmp_path / "a.ckpt")
    reached = [group["lr"] for optimizer in first.optimizers for group in optimizer.param_groups]
    np.testing.assert_allclose(reached, [1e-3 * 0.9 ** 2] * 3)  # decayed after each of the two batches

    def resume(**settings):
        seen = Seen()
        trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0, callbacks=[seen]).fit(
            module(**settings), loader(), ckpt_path=tmp_path / "a.ckpt")
        return seen

    same = resume(learning_rate=1e-3, lr_decay=0.9)
    np.testing.assert_allclose([group["lr"] for group in same.groups], reached)
    assert same.gammas == [0.9] * 3 and all(group["betas"] == (0.5, 0.9) for group in same.groups)
    changed = resume(learning_rate=1e-4, lr_decay=0.5, betas=(0.6, 0.95))
    np.testing.assert_allclose([group["lr"] for group in changed.groups], [1e-4 * 0.9 ** 2] * 3)  # where it was
    np.testing.assert_allclose([group["initial_lr"] for group in changed.groups], [1e-4] * 3)
    assert changed.gammas == [0.5] * 3 and all(tuple(group["betas"]) == (0.6, 0.95) for group in changed.groups)


@pytest.mark.parametrize("scores", ["improving", "constant"])
def test_poke_encoder_rate_drops_only_after_a_validation_that_did_not_improve(tmp_path, scores):
    # Lightning steps plateau schedulers at every training epoch's end with the last logged val/loss: with
    # check_val_every_n_epoch 2 the rate was halved after each epoch without validation, although val/loss improved.
    class ScoredPokeEncoder(PokeEncoderModule):
        def validation_step(self, batch, batch_idx):
            score = 1.0 / (self.current_epoch + 1) if scores == "improving" else 1.0
            self.log("val/loss", score, batch_size=2)

    module = ScoredPokeEncoder(PokeEncoder(spatial_size=SIZE, base_channels=8, max_channels=16, embedding_channels=16,
                                           norm_groups=4), learning_rate=1e-3, lr_patience=0)
    trainer(tmp_path, max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=0,
            limit_train_batches=1, limit_val_batches=1).fit(module, loader(), loader())
    rate = module.optimizers().param_groups[0]["lr"]
    # Validations after epochs 1 and 3: improving keeps 1e-3; constant halves once (the second did not improve).
    assert rate == pytest.approx(1e-3 if scores == "improving" else 5e-4)


def test_temporal_discriminator_loss_weighs_r1_as_the_reference(tmp_path):
    # The reference averages the hinge over real and fake, (real + fake) / 2, then adds gp_weight * R1; the sum
    # without the half weighed R1 at half the configs' r1_weight against the hinge.
    from ipoke.losses.adversarial import hinge_discriminator_loss, r1_penalty

    torch.manual_seed(0)
    module = VideoAutoencoderModule(tiny_autoencoder(), None,
                                    TemporalDiscriminator(channels=[8, 8, 8, 8], blocks_per_stage=1, norm_groups=4),
                                    r1_weight=3.0)
    video = torch.rand(2, FRAMES + 1, 3, SIZE, SIZE) * 2 - 1
    reconstruction = torch.rand(2, FRAMES, 3, SIZE, SIZE) * 2 - 1
    loss, logs = module.discriminator_loss(video, reconstruction)
    real = video.clone().requires_grad_(True)
    real_logits, _ = module.temporal_discriminator(real)
    fake_logits, _ = module.temporal_discriminator(torch.cat([video[:, :1], reconstruction], dim=1))
    hinge = hinge_discriminator_loss(real_logits, fake_logits)
    r1 = r1_penalty(real_logits, real)
    assert hinge.item() > 0.1 and r1.item() > 0
    assert logs["d_temporal"].item() == pytest.approx(0.5 * hinge.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * hinge.item() + 3.0 * r1.item(), rel=1e-5)
