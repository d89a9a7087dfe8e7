"""Stage-2 training module: frozen stage-1 networks, ActNorm init, a real fit loop, sampling and checkpoints."""

from __future__ import annotations

from unittest import mock

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ipoke.lightning.cinn import PokeINNModule
from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.cinn import ConditionalINN

SIZE, FRAMES, Z_DIM, EMBED = 16, 3, 4, 4


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, make_tiny_stage1) -> dict[str, str]:
    """Tiny random stage-1 networks saved like trained ones; returns the checkpoint arguments."""
    return make_tiny_stage1(tmp_path_factory.mktemp("stage1"), size=SIZE, n_frames=FRAMES, z_dim=Z_DIM,
                            embedding=EMBED)


def tiny_flow(architecture: str = "coupling") -> ConditionalINN:
    extra = dict(num_blocks=2) if architecture == "coupling" else dict(num_steps=[1], factor=4)
    return ConditionalINN(z_dim=Z_DIM, condition_channels=2 * EMBED, spatial_size=8, architecture=architecture,
                          hidden_channels=8, **extra)


def batches(n: int, batch_size: int = 2, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for index in range(n):
        video = torch.rand(batch_size, FRAMES + 1, 3, SIZE, SIZE, generator=generator) * 2 - 1
        poke = torch.zeros(batch_size, 2, SIZE, SIZE)
        poke[:, :, 4:9, 4:9] = torch.randn(batch_size, 2, 1, 1, generator=generator) * 3
        out.append({"video": video, "poke": poke, "flow": torch.zeros(batch_size, 2, SIZE, SIZE),
                    "poke_coords": torch.zeros(batch_size, 1, 4), "poke_count": torch.ones(batch_size).long(),
                    "video_id": [f"v{index}_{i}" for i in range(batch_size)]})
    return out


def loader(n: int, seed: int = 0) -> DataLoader:
    return DataLoader(batches(n, seed=seed), batch_size=None)


def frozen_state(module: PokeINNModule) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items() if not key.startswith("flow.")}


def test_training_step_updates_only_the_flow_and_keeps_stage1_in_eval(stage1):
    module = PokeINNModule(**stage1, flow=tiny_flow(), warmup_steps=1, total_steps=10, learning_rate=1e-2)
    module.train()
    assert module.flow.training and not module.autoencoder.training
    assert not module.image_encoder.training and not module.poke_encoder.training
    assert not any(p.requires_grad for name in ("autoencoder", "image_encoder", "poke_encoder")
                   for p in getattr(module, name).parameters())
    before_frozen = frozen_state(module)
    before_flow = {k: v.clone() for k, v in module.flow.state_dict().items()}
    optimizer = module.configure_optimizers()["optimizer"]
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {
        id(p) for p in module.flow.parameters()}
    assert not module.flow.actnorm_initialized
    for batch in batches(2):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert module.flow.actnorm_initialized
    for key, value in frozen_state(module).items():
        torch.testing.assert_close(value, before_frozen[key], atol=0, rtol=0, msg=key)
    changed = [k for k, v in module.flow.state_dict().items() if not torch.equal(v, before_flow[k])]
    assert any("subnet" in key or "conv" in key for key in changed)
    assert not module.autoencoder.training and module.flow.training


def test_fit_validate_checkpoint_and_reload(stage1, tmp_path):
    module = PokeINNModule(**stage1, flow=tiny_flow("macow"), warmup_steps=2, val_sample_batches=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=2, num_sanity_val_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader(3), val_dataloaders=loader(2, seed=1))
    metrics = trainer.callback_metrics
    for key in ("val/nll", "val/bits_per_dim", "val/psnr", "val/ssim", "val/l1", "val/reference_nll",
                "train/nll"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["val/reference_nll"].item() == Z_DIM * 64 / 2
    # The learning rate followed the per-step schedule: warm-up then decay towards 0 at the estimated total.
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert not module.autoencoder.training

    checkpoint = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(checkpoint)
    flow = ConditionalINN.from_checkpoint(checkpoint)
    assert flow.config == module.flow.config and flow.actnorm_initialized
    z = torch.randn(2, Z_DIM, 8, 8)
    h = torch.randn(2, 2 * EMBED, 8, 8)
    module.flow.eval()
    torch.testing.assert_close(flow(z, h)[0], module.flow(z, h)[0], atol=0, rtol=0)
    autoencoder = VideoAutoencoder.from_checkpoint(checkpoint)
    torch.testing.assert_close(autoencoder.gru_input, module.autoencoder.gru_input, atol=0, rtol=0)
    # The sampling API finds all four networks in the training checkpoint.
    from ipoke.sampling import Poker

    poker = Poker.from_checkpoint(checkpoint)
    torch.testing.assert_close(poker.cinn(z, h)[0], module.flow(z, h)[0], atol=0, rtol=0)
    # Lightning's loader rebuilds the flow that was passed to the constructor (it used to build a default flow from
    # flow_args=None, which failed or, worse, had another architecture).
    reloaded = PokeINNModule.load_from_checkpoint(checkpoint).eval()
    assert reloaded.flow.config == module.flow.config and reloaded.hparams.warmup_steps == 2
    torch.testing.assert_close(reloaded.flow(z, h)[0], module.flow(z, h)[0], atol=0, rtol=0)
    # The stage-1 paths it was trained with are often relative to the training folder: the frozen networks come
    # from the checkpoint's own specs and weights, so it loads from anywhere (it failed with "checkpoint
    # runs/autoencoder/... does not exist").
    moved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in ("autoencoder_checkpoint", "image_encoder_checkpoint", "poke_encoder_checkpoint"):
        moved["hyper_parameters"][key] = f"runs/nowhere/{key}.ckpt"
    torch.save(moved, tmp_path / "moved.ckpt")
    elsewhere = PokeINNModule.load_from_checkpoint(tmp_path / "moved.ckpt").eval()
    torch.testing.assert_close(elsewhere.flow(z, h)[0], module.flow(z, h)[0], atol=0, rtol=0)
    for name in ("autoencoder", "image_encoder", "poke_encoder"):
        for key, value in getattr(module, name).state_dict().items():
            assert torch.equal(getattr(elsewhere, name).state_dict()[key], value), (name, key)
    from ipoke.lightning import cinn as cinn_module

    assert cinn_module._preloaded_stage1() == {}
    # `ipoke evaluate` loads the same model and unpickles the (possibly large) file once.
    from ipoke.evaluation import load_model

    reads = []
    real_load = torch.load

    def counting_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        reads.append(args[0])
        return real_load(*args, **kwargs)

    with mock.patch("torch.load", counting_load):
        loaded = load_model(checkpoint)
    assert len(reads) == 1 and loaded.kind == "ipoke" and loaded.size == poker.size
    assert (loaded.n_frames, loaded.poke_size, loaded.frame_step) == (poker.n_frames, poker.poke_size,
                                                                      poker.frame_step)


def test_fast_dev_run(stage1, tmp_path):
    module = PokeINNModule(**stage1, flow_args=dict(architecture="coupling", hidden_channels=8, num_blocks=2))
    assert module.flow.condition_channels == 2 * EMBED and module.flow.z_dim == Z_DIM
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader(1), val_dataloaders=loader(1, seed=1))
    assert module.flow.actnorm_initialized
    # Built from flow_args, it is built again from them by Lightning's loader.
    trainer.save_checkpoint(tmp_path / "coupling.ckpt")
    reloaded = PokeINNModule.load_from_checkpoint(tmp_path / "coupling.ckpt")
    assert reloaded.flow.config == module.flow.config and reloaded.flow.config["architecture"] == "coupling"


def test_sample_video_is_deterministic_per_generator(stage1):
    module = PokeINNModule(**stage1, flow=tiny_flow()).eval()
    with torch.no_grad():
        for parameter in module.flow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    batch = batches(1)[0]
    x0, poke = batch["video"][:, 0], batch["poke"]
    a = module.sample_video(x0, poke, generator=torch.Generator().manual_seed(0))
    b = module.sample_video(x0, poke, generator=torch.Generator().manual_seed(0))
    c = module.sample_video(x0, poke, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().max() > 1e-4
    videos = module.log_videos(batch, max_videos=1)["real_vs_sample"]
    assert videos.shape == (1, FRAMES + 1, 3, SIZE, 2 * SIZE)


def test_incompatible_flow_is_rejected(stage1):
    wrong = ConditionalINN(z_dim=Z_DIM, condition_channels=EMBED, spatial_size=8, architecture="coupling",
                           hidden_channels=8, num_blocks=1)
    with pytest.raises(ValueError, match="condition_channels"):
        PokeINNModule(**stage1, flow=wrong)
    with pytest.raises(ValueError, match="either"):
        PokeINNModule(**stage1, flow=tiny_flow(), flow_args={"architecture": "macow"})
    # flow_args is a plain dict the config parser cannot check: names and simple types are checked here (a string
    # for a number failed inside the network with "not all arguments converted during string formatting").
    for flow_args, message in (({"hidden_channels": "sixteen"}, "flow_args.hidden_channels must be int, got 'sixteen'"),
                               ({"num_blocks": 2.5}, "flow_args.num_blocks must be int"),
                               ({"clamp": True}, "flow_args.clamp must be float"),
                               ({"hidden": 8}, r"flow_args.hidden: not an argument to set here; choose from \["),
                               ({"z_dim": 4}, "flow_args.z_dim: not an argument to set here")):
        with pytest.raises(ValueError, match=message):
            PokeINNModule(**stage1, flow_args={"architecture": "coupling", **flow_args})


def test_cuda_graph_option_trains_with_manual_optimisation(stage1, tmp_path):
    # On CPU the graphed step falls back to eager autograd; the manual-optimisation wiring is what is checked here.
    module = PokeINNModule(**stage1, flow=tiny_flow(), cuda_graph=True, warmup_steps=1, val_sample_batches=0)
    assert not module.automatic_optimization
    before_frozen = frozen_state(module)
    before_flow = [p.detach().clone() for p in module.flow.parameters()]
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader(3), val_dataloaders=loader(1, seed=1))
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/nll"])
    assert any(not torch.equal(p, q) for p, q in zip(module.flow.parameters(), before_flow))
    for key, value in frozen_state(module).items():
        torch.testing.assert_close(value, before_frozen[key], atol=0, rtol=0, msg=key)


def test_static_reference_flow_is_conditioned_on_the_latent_of_the_motionless_clip(stage1):
    from ipoke.models.cinn.condition import static_latent

    module = PokeINNModule(**stage1, flow_args={"architecture": "coupling", "num_blocks": 2, "hidden_channels": 8,
                                                "static_reference": True}, warmup_steps=1, val_sample_batches=0)
    assert module.flow.condition_channels == 2 * EMBED + Z_DIM
    batch = batches(1)[0]
    x0 = batch["video"][:, 0]
    h = module.condition(x0, batch["poke"])
    still = x0.unsqueeze(1).expand(-1, FRAMES + 1, -1, -1, -1)
    torch.testing.assert_close(h[:, -Z_DIM:], module.autoencoder.encode(still).mean)
    torch.testing.assert_close(h[:, -Z_DIM:], static_latent(module.autoencoder, x0))
    torch.testing.assert_close(h[:, :2 * EMBED], torch.cat([module.image_encoder.encode(x0),
                                                             module.poke_encoder.encode(batch["poke"])], dim=1))
    # An untrained flow (zero-init couplings, ActNorm at identity) samples exactly the static latent at r = 0.
    z = module.flow.inverse(torch.zeros(2, Z_DIM, 8, 8), h)
    torch.testing.assert_close(z, h[:, -Z_DIM:])
    with pytest.raises(ValueError, match="condition_channels"):
        PokeINNModule(**stage1, flow=ConditionalINN(z_dim=Z_DIM, condition_channels=2 * EMBED + Z_DIM,
                                                    spatial_size=8, architecture="coupling", hidden_channels=8,
                                                    num_blocks=1))


def test_frozen_networks_give_float32_latent_and_condition_under_bf16_autocast(stage1):
    """bf16-mixed: the flow's target and condition come out of the frozen networks in fp32, as without autocast."""
    module = PokeINNModule(**stage1, flow=tiny_flow(), warmup_steps=1, val_sample_batches=0)
    batch = batches(1)[0]
    torch.manual_seed(5)
    z, h = module._flow_inputs(batch, training=False)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        z_mixed, h_mixed = module._flow_inputs(batch, training=False)
        nll = module.flow(z_mixed, h_mixed)[1]
    assert z_mixed.dtype == h_mixed.dtype == nll.dtype == torch.float32
    torch.testing.assert_close(z_mixed, z, atol=0, rtol=0)
    torch.testing.assert_close(h_mixed, h, atol=0, rtol=0)


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_trains_in_float64_and_refuses_half_precision_weights(stage1, precision):
    # The frozen networks' inputs were cast to float32 whatever the trainer's precision had made of the networks:
    # "64-true" failed in the first convolution. "bf16-true" failed there too; the flow cannot keep its fp32 state
    # with bf16 weights, so it is refused, naming the precision that works.
    module = PokeINNModule(**stage1, flow=tiny_flow(), warmup_steps=1, val_sample_batches=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, precision=precision, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    if precision == "bf16-true":
        with pytest.raises(ValueError, match="use --trainer.precision bf16-mixed"):
            trainer.fit(module, loader(2), loader(1))
        return
    trainer.fit(module, loader(2), loader(1))
    assert next(module.flow.parameters()).dtype == torch.float64
    assert torch.isfinite(torch.tensor(float(trainer.callback_metrics["val/nll"])))


def test_resuming_with_more_epochs_keeps_training_and_validation_is_deterministic(stage1, tmp_path):
    # A resume restored the schedule of the first run (its end at that run's last step), so a longer resumed run
    # trained at learning rate 0. And val/nll, which selects checkpoints, used a random posterior sample.
    def fit(module, epochs, ckpt_path=None):
        trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, limit_val_batches=1, num_sanity_val_steps=0,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(module, train_dataloaders=loader(4), val_dataloaders=loader(1, seed=1), ckpt_path=ckpt_path)
        return trainer

    module = PokeINNModule(**stage1, flow=tiny_flow(), warmup_steps=2)
    first = fit(module, 1)
    checkpoint = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(checkpoint)
    assert first.optimizers[0].param_groups[0]["lr"] == 0.0  # the end of a 4-step schedule
    before = {key: value.clone() for key, value in module.flow.state_dict().items()}
    resumed_module = PokeINNModule(**stage1, flow=tiny_flow(), warmup_steps=2)
    resumed = fit(resumed_module, 3, ckpt_path=checkpoint)
    assert resumed.global_step == 12
    changed = [key for key, value in resumed_module.flow.state_dict().items() if not torch.equal(value, before[key])]
    assert changed, "the resumed run did not train"
    # A resume with another learning rate trains at it (the restored schedule kept the old peak, 1e-3 by default).
    class FirstRate(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.rate = getattr(self, "rate", trainer.optimizers[0].param_groups[0]["lr"])

    seen, lower = FirstRate(), PokeINNModule(**stage1, flow=tiny_flow(), warmup_steps=2, learning_rate=1e-5)
    L.Trainer(accelerator="cpu", max_epochs=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
              callbacks=[seen]).fit(lower, train_dataloaders=loader(4), ckpt_path=checkpoint)
    # Step 4 of a 2-step warm-up and a 12-step linear decay: (12 - 4) / (12 - 2) of the peak.
    assert seen.rate == pytest.approx(1e-5 * 8 / 10)
    # Validating the same weights twice gives the same figures.
    again = [L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                       default_root_dir=tmp_path).validate(resumed_module, loader(1, seed=1), verbose=False)[0]
             for _ in range(2)]
    assert again[0] == again[1]


def test_stage2_data_must_cut_clips_as_stage1_was_trained_on(tmp_path):
    # frame_step and poke_size other than stage 1's trained silently; the exported model then sampled clips 2 frames
    # apart with 9 px pokes for an autoencoder trained on neighbouring frames and a poke encoder trained on 5 px.
    from types import SimpleNamespace

    from ipoke.data.format import DatasetFormatError
    from ipoke.lightning.base import check_clips_fit, recorded_clip_settings

    stage1_checkpoint = tmp_path / "autoencoder.ckpt"
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": {"frame_step": 1, "poke_size": 5}}, stage1_checkpoint)
    torch.save({"state_dict": {}}, tmp_path / "old.ckpt")
    assert recorded_clip_settings(stage1_checkpoint) == {"frame_step": 1, "poke_size": 5}
    assert recorded_clip_settings(tmp_path / "old.ckpt") == {} == recorded_clip_settings(tmp_path)  # nothing known

    def module(frame_step, poke_size):
        data = SimpleNamespace(n_frames=4, size=64, frame_step=frame_step, poke_size=poke_size)
        return SimpleNamespace(_trainer=SimpleNamespace(datamodule=SimpleNamespace(train_set=data)))

    check_clips_fit(module(1, 5), n_frames=4, size=64, frame_step=1, poke_size=5)
    check_clips_fit(module(2, 9), n_frames=4, size=64)  # not recorded: not checked
    with pytest.raises(DatasetFormatError, match=r"frame_step 2 in the data \(data.init_args.frame_step\) against 1 "
                                                 r"in the clips the stage-1 networks were trained on; poke_size 9"):
        check_clips_fit(module(2, 9), n_frames=4, size=64, frame_step=1, poke_size=5, networks="the stage-1 networks")
    # A poke encoder trained on clips ending at another lag (n_frames x frame_step) regresses the flow of that lag:
    # the cINN trained with it silently (only the autoencoder's frame_step was compared).
    poke_checkpoint = tmp_path / "poke_encoder.ckpt"
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": {"n_frames": 10, "frame_step": 2, "poke_size": 5}},
               poke_checkpoint)
    assert recorded_clip_settings(poke_checkpoint) == {"frame_step": 2, "poke_size": 5, "flow_lag": 20}
    check_clips_fit(module(5, 5), n_frames=4, size=64, flow_lag=20)  # 4 x 5: the same lag
    with pytest.raises(DatasetFormatError, match=r"clips ending 4 frames after x0 in the data \(n_frames 4 x "
                                                 r"frame_step 1\) against 20 in the clips the poke encoder"):
        check_clips_fit(module(1, 5), n_frames=4, size=64, frame_step=1, poke_size=5, flow_lag=20)
