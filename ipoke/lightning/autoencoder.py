"""Training of the :class:`~ipoke.models.autoencoder.VideoAutoencoder` (stage 1a) with manual GAN optimisation."""

from __future__ import annotations

import torch
from torch import nn

from ipoke.lightning.base import (
    NetworkCheckpointMixin,
    check_clips_fit,
    detect_unused_parameters_under_ddp,
    for_evaluated_split,
)
from ipoke.losses.adversarial import feature_matching_loss, hinge_discriminator_loss, hinge_generator_loss, r1_penalty
from ipoke.losses.perceptual import build_perceptual_loss
from ipoke.losses.reconstruction import kl_loss, l1_loss, motion_weighted_l1_loss, psnr, ssim
from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.discriminators import PatchDiscriminator2d, TemporalDiscriminator
from ipoke.utils import is_whole_number

TRAIN_BATCHES_KEY = "ipoke_train_batches"


class VideoAutoencoderModule(NetworkCheckpointMixin):
    """Trains a video autoencoder with L1 + perceptual + KL and two optional hinge GANs.

    Generator loss: ``l1_weight * L1 + perceptual_weight * P + kl_weight * KL`` and, once ``gan_start_step`` batches
    have been seen, ``spatial_gan_weight * G_s + temporal_gan_weight * G_t + feature_matching_weight * FM_t``.
    Discriminators: hinge losses averaged over real and fake (``(hinge_real + hinge_fake) / 2``, as the reference);
    the temporal one adds ``r1_weight * R1`` on real clips. Each of the three
    networks has its own Adam and ``ExponentialLR(lr_decay)`` stepped every ``lr_decay_every`` batches (the
    reference stepped it per 2000-batch epoch).

    The temporal discriminator sees the whole clip ``x0, x1 .. xT`` against ``x0, x̂1 .. x̂T``. (The reference fed it
    ``x0, x̂1 .. x̂(T-1)`` and so never judged the last generated frame.)

    Args:
        autoencoder: The network to train.
        spatial_discriminator: Frame PatchGAN; ``None`` switches the spatial GAN off.
        temporal_discriminator: Clip discriminator; ``None`` switches the temporal GAN off.
        learning_rate: Adam learning rate of all three networks.
        betas: Adam betas.
        weight_decay: Adam weight decay.
        lr_decay: ExponentialLR factor.
        lr_decay_every: Training batches between scheduler steps.
        l1_weight: Weight of the pixel L1 term.
        perceptual: Perceptual loss name, ``"vgg19" | "i3d" | "ssim" | "none"`` (see :mod:`ipoke.losses.perceptual`).
        perceptual_weight: Its weight.
        perceptual_weights_path: Weights file for ``vgg19`` / ``i3d`` (default: the caches).
        kl_weight: Weight of the KL term.
        spatial_gan_weight: Weight of the spatial generator term.
        temporal_gan_weight: Weight of the temporal generator term.
        feature_matching_weight: Weight of the temporal feature-matching term.
        r1_weight: Weight of the R1 penalty on real clips (temporal discriminator).
        gan_start_step: Training batches before the GAN terms and discriminator updates start.
        spatial_frames: Frames drawn at random (from all real / all generated frames of the batch) for the PatchGAN.
        compile: ``torch.compile`` the networks (GPU; eager by default). R1 runs eagerly (double backward).
        motion_weight: Up-weight pixels that change from x0 in the L1 term (see
            :func:`~ipoke.losses.reconstruction.motion_weighted_l1_loss`); 0 (the reference) is a plain L1.
    """

    def __init__(self, autoencoder: VideoAutoencoder, spatial_discriminator: PatchDiscriminator2d | None = None,
                 temporal_discriminator: TemporalDiscriminator | None = None, learning_rate: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.9), weight_decay: float = 1e-5, lr_decay: float = 0.98,
                 lr_decay_every: int = 2000, l1_weight: float = 10.0, perceptual: str = "ssim",
                 perceptual_weight: float = 10.0, perceptual_weights_path: str | None = None,
                 kl_weight: float = 1e-7, spatial_gan_weight: float = 1.0, temporal_gan_weight: float = 1.0,
                 feature_matching_weight: float = 1.0, r1_weight: float = 1.0, gan_start_step: int = 0,
                 spatial_frames: int = 16, compile: bool = False, motion_weight: float = 0.0) -> None:
        super().__init__()
        # Checked when the config is built: 0 crashed after the first batch (modulo by zero; an empty frame draw).
        for name, value in (("lr_decay_every", lr_decay_every), ("spatial_frames", spatial_frames)):
            if not is_whole_number(value, 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        self.save_hyperparameters(ignore=["autoencoder", "spatial_discriminator", "temporal_discriminator"])
        self.automatic_optimization = False
        self.autoencoder = autoencoder
        self.spatial_discriminator = spatial_discriminator
        self.temporal_discriminator = temporal_discriminator
        # Built here so that missing perceptual weights fail when the config is instantiated, before any training.
        self.perceptual_loss = build_perceptual_loss(perceptual, perceptual_weights_path)
        self.train_batches = 0
        self._compiled = False

    # ----------------------------------------------------------------------------------------------------------------
    # losses, usable outside Lightning (benchmarks)

    @property
    def has_discriminator(self) -> bool:
        """Whether at least one GAN is configured."""
        return self.spatial_discriminator is not None or self.temporal_discriminator is not None

    @property
    def gan_active(self) -> bool:
        """Whether the GAN terms are on at the current training batch."""
        return self.has_discriminator and self.train_batches >= self.hparams.gan_start_step

    def _random_frames(self, frames: torch.Tensor) -> torch.Tensor:
        flat = frames.flatten(0, 1)
        count = min(self.hparams.spatial_frames, flat.shape[0])
        index = torch.randperm(flat.shape[0], device=flat.device)[:count]
        return flat[index]

    def generator_loss(self, video: torch.Tensor, gan: bool | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Autoencoder loss on a batch.

        Args:
            video: ``(B, T + 1, 3, S, S)`` in [-1, 1].
            gan: Include the GAN terms (default: :attr:`gan_active`).

        Returns:
            ``(loss, logs, reconstruction)`` with the reconstruction ``(B, T, 3, S, S)``.
        """
        hp = self.hparams
        gan = self.gan_active if gan is None else gan
        output = self.autoencoder(video)
        reconstruction, target = output.sample, video[:, 1:]
        l1 = motion_weighted_l1_loss(reconstruction, target, video[:, 0], hp.motion_weight)
        perceptual = self.perceptual_loss(reconstruction, target)
        kl = kl_loss(output.posterior)
        loss = hp.l1_weight * l1 + hp.perceptual_weight * perceptual + hp.kl_weight * kl
        logs = {"l1": l1, "perceptual": perceptual, "kl": kl}
        if gan and self.spatial_discriminator is not None:
            g_spatial = hinge_generator_loss(self.spatial_discriminator(self._random_frames(reconstruction)))
            loss = loss + hp.spatial_gan_weight * g_spatial
            logs["g_spatial"] = g_spatial
        if gan and self.temporal_discriminator is not None:
            fake_clip = torch.cat([video[:, :1], reconstruction], dim=1)
            fake_logits, fake_features = self.temporal_discriminator(fake_clip)
            with torch.no_grad():
                _, real_features = self.temporal_discriminator(video)
            g_temporal = hinge_generator_loss(fake_logits)
            matching = feature_matching_loss(real_features, fake_features)
            loss = loss + hp.temporal_gan_weight * g_temporal + hp.feature_matching_weight * matching
            logs.update(g_temporal=g_temporal, feature_matching=matching)
        logs["loss"] = loss
        return loss, logs, reconstruction

    def discriminator_loss(self, video: torch.Tensor, reconstruction: torch.Tensor
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of both discriminators on real ``video (B, T+1, 3, S, S)`` and ``reconstruction (B, T, 3, S, S)``."""
        hp = self.hparams
        reconstruction = reconstruction.detach()
        loss = video.new_zeros((), dtype=torch.float32)
        logs: dict[str, torch.Tensor] = {}
        if self.spatial_discriminator is not None:
            real_logits = self.spatial_discriminator(self._random_frames(video))
            fake_logits = self.spatial_discriminator(self._random_frames(reconstruction))
            # Halved, as the reference's (real + fake) / 2: with Adam the scale of this term alone is moot, but the
            # temporal one is weighed against R1, so its half keeps `r1_weight: 1` the reference's gp_weight 1.
            d_spatial = 0.5 * hinge_discriminator_loss(real_logits, fake_logits)
            loss = loss + d_spatial
            logs["d_spatial"] = d_spatial
        if self.temporal_discriminator is not None:
            fake_clip = torch.cat([video[:, :1], reconstruction], dim=1)
            real = video.detach().requires_grad_(hp.r1_weight > 0)
            # R1 needs a double backward, which compiled graphs do not support: call the eager forward directly.
            real_logits, _ = self.temporal_discriminator.forward(real)
            fake_logits, _ = self.temporal_discriminator(fake_clip)
            # The reference averages real and fake, (real + fake) / 2, then adds gp_weight * R1: without the half,
            # R1 weighed half as much against the hinge as the configs' `r1_weight: 1` claims.
            d_temporal = 0.5 * hinge_discriminator_loss(real_logits, fake_logits)
            loss = loss + d_temporal
            logs["d_temporal"] = d_temporal
            if hp.r1_weight > 0:
                r1 = r1_penalty(real_logits, real)
                loss = loss + hp.r1_weight * r1
                logs["r1"] = r1
        logs["d_loss"] = loss
        return loss, logs

    # ----------------------------------------------------------------------------------------------------------------
    # Lightning hooks

    def setup(self, stage: str) -> None:
        check_clips_fit(self, n_frames=self.autoencoder.n_frames, size=self.autoencoder.spatial_size,
                        networks="the video autoencoder")
        if self.has_discriminator:
            detect_unused_parameters_under_ddp(self)

    def configure_model(self) -> None:
        if self.hparams.compile and not self._compiled:
            for network in (self.autoencoder, self.spatial_discriminator, self.temporal_discriminator):
                if network is not None:
                    network.compile()
            self._compiled = True

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LRScheduler]]:
        hp = self.hparams
        networks: list[nn.Module] = [self.autoencoder]
        networks += [d for d in (self.spatial_discriminator, self.temporal_discriminator) if d is not None]
        optimizers = [torch.optim.Adam(n.parameters(), lr=hp.learning_rate, betas=tuple(hp.betas),
                                       weight_decay=hp.weight_decay) for n in networks]
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=hp.lr_decay) for o in optimizers]
        return optimizers, schedulers

    def _optimizers(self) -> list:
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        optimizers = self._optimizers()
        generator_optimizer, discriminator_optimizers = optimizers[0], optimizers[1:]
        gan = self.gan_active

        discriminators = [d for d in (self.spatial_discriminator, self.temporal_discriminator) if d is not None]

        # Discriminator weights need no gradient from the generator loss (and Lightning's toggle_optimizer cannot
        # toggle two optimizers at once), so switch requires_grad by hand.
        for network in discriminators:
            network.requires_grad_(False)
        loss, logs, reconstruction = self.generator_loss(video, gan=gan)
        generator_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        generator_optimizer.step()
        for network in discriminators:
            network.requires_grad_(True)

        if gan and discriminator_optimizers:
            d_loss, d_logs = self.discriminator_loss(video, reconstruction)
            for optimizer in discriminator_optimizers:
                optimizer.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            for optimizer in discriminator_optimizers:
                optimizer.step()
            logs.update(d_logs)

        self.train_batches += 1
        if self.train_batches % self.hparams.lr_decay_every == 0:
            schedulers = self.lr_schedulers()
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, prog_bar=False,
                      batch_size=video.shape[0])
        self.log("train/loss_step", logs["loss"].detach(), prog_bar=True, logger=False, batch_size=video.shape[0])
        return loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        video = batch["video"]
        target = video[:, 1:]
        reconstruction = self.autoencoder(video, sample_posterior=False).sample
        l1 = l1_loss(reconstruction, target)
        perceptual = self.perceptual_loss(reconstruction, target)
        metrics = {
            "val/l1": l1,
            "val/perceptual": perceptual,
            "val/psnr": psnr(reconstruction, target),
            "val/ssim": ssim(reconstruction, target),
            "val/loss": self.hparams.l1_weight * l1 + self.hparams.perceptual_weight * perceptual,
        }
        self.log_dict(for_evaluated_split(self, metrics), prog_bar=True, batch_size=video.shape[0], sync_dist=True)

    test_step = validation_step

    @torch.no_grad()
    def log_videos(self, batch: dict, max_videos: int = 4) -> dict[str, torch.Tensor]:
        """Clips for the video logger: ground truth and the posterior-mean reconstruction, with ``x0`` prepended.

        Returns:
            ``{"inputs": (N, T+1, 3, S, S), "reconstructions": (N, T+1, 3, S, S)}`` in [-1, 1].
        """
        video = batch["video"][:max_videos]
        reconstruction = self.autoencoder(video, sample_posterior=False).sample
        return {"inputs": video, "reconstructions": torch.cat([video[:, :1], reconstruction], dim=1)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TRAIN_BATCHES_KEY] = self.train_batches

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.train_batches = int(checkpoint.get(TRAIN_BATCHES_KEY, 0))
