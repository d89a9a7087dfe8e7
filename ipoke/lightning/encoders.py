"""Training of the cINN's conditioning encoders (stage 1b): :class:`ImageEncoder` and :class:`PokeEncoder`."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from ipoke.lightning.base import (
    NetworkCheckpointMixin,
    check_clips_fit,
    detect_unused_parameters_under_ddp,
    for_evaluated_split,
)
from ipoke.losses.adversarial import adaptive_weight, hinge_discriminator_loss, hinge_generator_loss, r1_penalty
from ipoke.losses.perceptual import build_perceptual_loss
from ipoke.losses.reconstruction import l1_loss, psnr, ssim
from ipoke.models.discriminators import PatchDiscriminator2d
from ipoke.models.encoders import ImageEncoder, PokeEncoder


def _pick_frames(video: torch.Tensor) -> torch.Tensor:
    """One random frame per clip of ``(B, T, C, H, W)`` -> ``(B, C, H, W)``."""
    index = torch.randint(video.shape[1], (video.shape[0],), device=video.device)
    return video[torch.arange(video.shape[0], device=video.device), index]


def flow_to_rgb(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """Colour-code flow: hue = direction, saturation = magnitude (white = still).

    Args:
        flow: ``(B, 2, H, W)`` in pixels.
        max_magnitude: Magnitude shown fully saturated; default the batch maximum.

    Returns:
        ``(B, 3, H, W)`` in [-1, 1].
    """
    dx, dy = flow[:, 0], flow[:, 1]
    magnitude = torch.sqrt(dx ** 2 + dy ** 2)
    scale = max_magnitude if max_magnitude is not None else float(magnitude.max().clamp_min(1e-6))
    saturation = (magnitude / scale).clamp(0, 1)
    hue = (torch.atan2(dy, dx) / (2 * math.pi)) % 1.0
    # HSV (value 1) to RGB with the standard piecewise-linear hue wheel.
    channels = []
    for offset in (0.0, 2 / 3, 1 / 3):
        wheel = (torch.abs(((hue + offset) % 1.0) * 6 - 3) - 1).clamp(0, 1)
        channels.append(1 - saturation * (1 - wheel))
    return torch.stack(channels, dim=1) * 2 - 1


class ImageEncoderModule(NetworkCheckpointMixin):
    """Trains the source-image encoder as an image autoencoder on random frames of the clips.

    Reconstruction loss ``(l1_weight * |x - x̂| + perceptual_weight * P) / exp(s) + s`` with a learned scalar
    log-variance ``s`` (as the reference; ``learned_variance=False`` drops it), plus an optional PatchGAN hinge loss
    with VQGAN's adaptive weight after ``gan_start_step`` batches (or from epoch ``gan_start_epoch``). Adam and
    ``ReduceLROnPlateau(0.5)`` on ``val/loss`` for every network (the reference attached the discriminator's
    scheduler to the generator's optimiser).

    Args:
        image_encoder: The network to train.
        discriminator: PatchGAN; ``None`` switches the GAN off.
        learning_rate: Adam learning rate.
        betas: Adam betas.
        l1_weight: Weight of the pixel L1 term.
        perceptual: Perceptual loss name, ``"vgg19" | "ssim" | "none"`` (``"i3d"`` needs clips, not images).
        perceptual_weight: Its weight.
        perceptual_weights_path: Weights file for ``vgg19`` (default: the caches).
        learned_variance: Learn the scalar log-variance ``s``.
        gan_weight: Multiplier of the adaptive GAN weight.
        gan_start_step: Training batches before the GAN starts.
        gan_start_epoch: Start the GAN with this epoch instead (counted from 0; the reference's ``pretrain: 2``),
            whatever an epoch's length: a fixed batch count suits one dataset size only (4000 batches, 2 reference
            epochs, were never reached in 20 epochs of the synthetic dataset). Overrides ``gan_start_step``.
        r1_weight: R1 penalty weight on real images.
        lr_patience: ``ReduceLROnPlateau`` patience in validation runs.
        compile: ``torch.compile`` the networks (GPU).
    """

    def __init__(self, image_encoder: ImageEncoder, discriminator: PatchDiscriminator2d | None = None,
                 learning_rate: float = 2e-4, betas: tuple[float, float] = (0.5, 0.9), l1_weight: float = 1.0,
                 perceptual: str = "ssim", perceptual_weight: float = 1.0, perceptual_weights_path: str | None = None,
                 learned_variance: bool = True, gan_weight: float = 1.0, gan_start_step: int = 4000,
                 gan_start_epoch: int | None = None, r1_weight: float = 1.0, lr_patience: int = 0,
                 compile: bool = False) -> None:
        super().__init__()
        if perceptual == "i3d":
            raise ValueError('the image encoder works on single images; choose perceptual "vgg19", "ssim" or "none"')
        self.save_hyperparameters(ignore=["image_encoder", "discriminator"])
        self.automatic_optimization = False
        self.image_encoder = image_encoder
        self.discriminator = discriminator
        self.log_variance = nn.Parameter(torch.zeros(()), requires_grad=learned_variance)
        self.perceptual_loss = build_perceptual_loss(perceptual, perceptual_weights_path)
        self.train_batches = 0

    def reconstruction_loss(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Variance-weighted L1 + perceptual loss (scalar) of ``(B, 3, S, S)`` images."""
        hp = self.hparams
        per_pixel = hp.l1_weight * (reconstruction - image).abs()
        per_pixel = per_pixel + hp.perceptual_weight * self.perceptual_loss(reconstruction, image)
        return (per_pixel / torch.exp(self.log_variance) + self.log_variance).mean()

    def setup(self, stage: str) -> None:
        check_clips_fit(self, size=self.image_encoder.spatial_size, networks="the image encoder")
        if self.discriminator is not None:
            detect_unused_parameters_under_ddp(self)

    def configure_model(self) -> None:
        if self.hparams.compile:
            if self.discriminator is not None:
                # The GAN's adaptive weight takes two gradients with retain_graph=True through the compiled
                # networks; a compiled backward that donates its buffers (PyTorch's default) refuses that once a
                # second batch shape was compiled, so training crashed when the GAN started (found by review).
                # Process-wide; costs some memory in compiled backward passes.
                import torch._functorch.config as functorch_config

                if hasattr(functorch_config, "donated_buffer"):  # older torch has no such buffers (nor flag)
                    functorch_config.donated_buffer = False
            self.image_encoder.compile()
            if self.discriminator is not None:
                self.discriminator.compile()

    def configure_optimizers(self):
        hp = self.hparams
        generator_params = list(self.image_encoder.parameters()) + [self.log_variance]
        optimizers = [torch.optim.Adam(generator_params, lr=hp.learning_rate, betas=tuple(hp.betas))]
        if self.discriminator is not None:
            optimizers.append(torch.optim.Adam(self.discriminator.parameters(), lr=hp.learning_rate,
                                               betas=tuple(hp.betas)))
        schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=hp.lr_patience)
                      for o in optimizers]
        return optimizers, schedulers

    def _optimizers(self) -> list:
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        image = _pick_frames(batch["video"])
        optimizers = self._optimizers()
        started = (self.current_epoch >= hp.gan_start_epoch if hp.get("gan_start_epoch") is not None
                   else self.train_batches >= hp.gan_start_step)
        gan = self.discriminator is not None and started

        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
        reconstruction = self.image_encoder(image)
        rec_loss = self.reconstruction_loss(image, reconstruction)
        loss = rec_loss
        logs = {"reconstruction": rec_loss, "log_variance": self.log_variance.detach()}
        if gan:
            g_loss = hinge_generator_loss(self.discriminator(reconstruction))
            weight = hp.gan_weight * adaptive_weight(rec_loss, g_loss, self.image_encoder.decoder.last_layer_weight)
            loss = loss + weight * g_loss
            logs.update(g_loss=g_loss, gan_weight=weight)
        optimizers[0].zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizers[0].step()
        if self.discriminator is not None:
            self.discriminator.requires_grad_(True)

        if gan:
            real = image.detach().requires_grad_(hp.r1_weight > 0)
            real_logits = self.discriminator.forward(real)
            d_loss = hinge_discriminator_loss(real_logits, self.discriminator(reconstruction.detach()))
            if hp.r1_weight > 0:
                r1 = r1_penalty(real_logits, real)
                d_loss = d_loss + hp.r1_weight * r1
                logs["r1"] = r1
            optimizers[1].zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            optimizers[1].step()
            logs["d_loss"] = d_loss

        self.train_batches += 1
        logs["loss"] = loss
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, batch_size=image.shape[0])
        return loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image = batch["video"][:, 0]
        reconstruction = self.image_encoder(image)
        l1 = l1_loss(reconstruction, image)
        perceptual = self.perceptual_loss(reconstruction, image)
        self.log_dict(for_evaluated_split(self, {
            "val/l1": l1, "val/perceptual": perceptual, "val/psnr": psnr(reconstruction, image),
            "val/ssim": ssim(reconstruction, image),
            "val/loss": self.hparams.l1_weight * l1 + self.hparams.perceptual_weight * perceptual,
        }), prog_bar=True, batch_size=image.shape[0], sync_dist=True)

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        _step_plateau_schedulers(self)

    @torch.no_grad()
    def log_videos(self, batch: dict, max_videos: int = 4) -> dict[str, torch.Tensor]:
        """``{"image_and_reconstruction": (N, 2, 3, S, S)}`` in [-1, 1]: the first frame, then its reconstruction."""
        image = batch["video"][:max_videos, 0]
        return {"image_and_reconstruction": torch.stack([image, self.image_encoder(image)], dim=1)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ipoke_train_batches"] = self.train_batches

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.train_batches = int(checkpoint.get("ipoke_train_batches", 0))


def _step_plateau_schedulers(module: NetworkCheckpointMixin) -> None:
    """Step the module's ``ReduceLROnPlateau`` schedulers on this validation's ``val/loss``: once per validation run,
    as their patience counts. Only while fitting: ``ipoke validate`` / ``trainer.validate`` has no schedulers."""
    if (module.trainer.sanity_checking or module.trainer.state.fn != TrainerFn.FITTING
            or "val/loss" not in module.trainer.callback_metrics):
        return
    schedulers = module.lr_schedulers()
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        scheduler.step(module.trainer.callback_metrics["val/loss"])


class PokeEncoderModule(NetworkCheckpointMixin):
    """Trains the poke encoder to regress the clip's dense endpoint flow ``batch["flow"]`` from ``batch["poke"]``.

    Loss ``(l1_weight * w * |f - f̂| + perceptual_weight * P) / exp(s) + s`` with a learned scalar log-variance ``s``
    and ``w = 1 + motion_weight`` on pixels that move (1 elsewhere).
    The reference's perceptual term was an image LPIPS on ``[flow, 0]``; here ``perceptual`` (default ``"none"``)
    applies to ``[f / flow_scale, 0]`` clamped to [-1, 1]. Adam and
    ``ReduceLROnPlateau(0.5)`` on ``val/loss`` (which is logged; the reference monitored a key it never logged).

    Args:
        poke_encoder: The network to train.
        learning_rate: Adam learning rate (1e-3 as the reference).
        l1_weight: Weight of the flow L1 term.
        perceptual: ``"vgg19" | "ssim" | "none"`` applied to the flow scaled to [-1, 1].
        perceptual_weight: Its weight.
        perceptual_weights_path: Weights file for ``vgg19``.
        flow_scale: Pixels mapped to 1 for the perceptual term.
        learned_variance: Learn the scalar log-variance ``s``.
        lr_patience: ``ReduceLROnPlateau`` patience in validation runs.
        compile: ``torch.compile`` the network (GPU).
        motion_weight: Extra L1 weight of pixels that move more than ``motion_threshold`` pixels (0: the reference,
            a plain L1). Most pixels of a clip do not move, so a plain L1 is minimised by predicting no flow at all:
            in a 90-second CPU run the poke encoder did exactly that (its prediction was as far from the true flow
            of the moving pixels as zero flow), and its embedding barely depended on the poke.
        motion_threshold: Pixels of motion above which ``motion_weight`` applies.
    """

    def __init__(self, poke_encoder: PokeEncoder, learning_rate: float = 1e-3, l1_weight: float = 1.0,
                 perceptual: str = "none", perceptual_weight: float = 1.0, perceptual_weights_path: str | None = None,
                 flow_scale: float = 10.0, learned_variance: bool = True, lr_patience: int = 0,
                 compile: bool = False, motion_weight: float = 0.0, motion_threshold: float = 0.5) -> None:
        super().__init__()
        if perceptual == "i3d":
            raise ValueError('the poke encoder predicts a single flow field; choose "vgg19", "ssim" or "none"')
        self.save_hyperparameters(ignore=["poke_encoder"])
        self.poke_encoder = poke_encoder
        self.log_variance = nn.Parameter(torch.zeros(()), requires_grad=learned_variance)
        self.perceptual_loss = build_perceptual_loss(perceptual, perceptual_weights_path)

    def setup(self, stage: str) -> None:
        check_clips_fit(self, size=self.poke_encoder.spatial_size, networks="the poke encoder")

    def _as_image(self, flow: torch.Tensor) -> torch.Tensor:
        scaled = (flow / self.hparams.flow_scale).clamp(-1, 1)
        return torch.cat([scaled, torch.zeros_like(scaled[:, :1])], dim=1)

    def flow_loss(self, flow: torch.Tensor, prediction: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Variance-weighted loss (scalar) and logs for flow ``(B, 2, S, S)`` and its prediction."""
        hp = self.hparams
        per_pixel = hp.l1_weight * (prediction - flow).abs()
        if hp.motion_weight:
            moving = flow.float().pow(2).sum(dim=1, keepdim=True).sqrt() > hp.motion_threshold
            per_pixel = per_pixel * (1.0 + hp.motion_weight * moving)
        logs = {"l1": (prediction - flow).abs().mean()}
        if hp.perceptual != "none":
            perceptual = self.perceptual_loss(self._as_image(prediction), self._as_image(flow))
            per_pixel = per_pixel + hp.perceptual_weight * perceptual
            logs["perceptual"] = perceptual
        loss = (per_pixel / torch.exp(self.log_variance) + self.log_variance).mean()
        logs["loss"] = loss
        return loss, logs

    def configure_model(self) -> None:
        if self.hparams.compile:
            self.poke_encoder.compile()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=self.hparams.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "strict": False}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Lightning's own step comes at the end of every training epoch with whatever ``val/loss`` was logged
        last: with ``check_val_every_n_epoch: 2`` it halved the rate after every epoch without validation, while
        ``val/loss`` improved at each one. The scheduler is stepped in :meth:`on_validation_epoch_end` instead."""

    def on_validation_epoch_end(self) -> None:
        _step_plateau_schedulers(self)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.flow_loss(batch["flow"], self.poke_encoder(batch["poke"]))
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, batch_size=batch["flow"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        flow = batch["flow"]
        prediction = self.poke_encoder(batch["poke"])
        l1 = l1_loss(prediction, flow)
        endpoint_error = (prediction - flow).pow(2).sum(dim=1).sqrt().mean()
        self.log_dict(for_evaluated_split(self, {"val/l1": l1, "val/endpoint_error": endpoint_error, "val/loss": l1}),
                      prog_bar=True, batch_size=flow.shape[0], sync_dist=True)

    test_step = validation_step

    @torch.no_grad()
    def log_videos(self, batch: dict, max_videos: int = 4) -> dict[str, torch.Tensor]:
        """``{"poke_flow_prediction": (N, 4, 3, S, S)}`` in [-1, 1]: x0, poke, true flow, predicted flow (colour)."""
        poke, flow = batch["poke"][:max_videos], batch["flow"][:max_videos]
        prediction = self.poke_encoder(poke)
        scale = float(torch.sqrt((flow ** 2).sum(1)).max().clamp_min(1e-6))
        frames = [batch["video"][:max_videos, 0], flow_to_rgb(poke, scale), flow_to_rgb(flow, scale),
                  flow_to_rgb(prediction, scale)]
        return {"poke_flow_prediction": torch.stack(frames, dim=1)}
