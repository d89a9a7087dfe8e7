"""Training of the cVAE baseline (:class:`~ipoke.models.cvae.PokeConditionedVAE`)."""

from __future__ import annotations

import torch

from ipoke.lightning.base import NetworkCheckpointMixin, check_clips_fit, for_evaluated_split
from ipoke.losses.perceptual import build_perceptual_loss
from ipoke.losses.reconstruction import l1_loss, psnr, ssim
from ipoke.models.cvae import PokeConditionedVAE


class PokeVAEModule(NetworkCheckpointMixin):
    """L1 + perceptual reconstruction of ``x1..xT`` plus ``kl_weight`` times the KL to ``N(0, I)`` (per dimension).

    Unlike the autoencoder's near-zero KL (1e-7), the baseline needs a real KL so that prior samples decode to
    plausible videos; ``kl_weight`` trades reconstruction against sample quality.

    Args:
        vae: The network to train.
        learning_rate: Adam learning rate.
        kl_weight: Weight of the mean-per-dimension KL.
        l1_weight: Weight of the pixel L1.
        perceptual: ``"ssim" | "vgg19" | "i3d" | "none"`` (see :mod:`ipoke.losses.perceptual`).
        perceptual_weight: Its weight.
        perceptual_weights_path: Weights of the perceptual network when it needs them.
    """

    def __init__(self, vae: PokeConditionedVAE, learning_rate: float = 2e-4, kl_weight: float = 1e-3,
                 l1_weight: float = 10.0, perceptual: str = "ssim", perceptual_weight: float = 1.0,
                 perceptual_weights_path: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["vae"])
        self.vae = vae
        self.perceptual_loss = build_perceptual_loss(perceptual, perceptual_weights_path)

    def setup(self, stage: str) -> None:
        check_clips_fit(self, n_frames=self.vae.n_frames, size=self.vae.spatial_size, networks="the cVAE")

    def _losses(self, batch: dict, *, sample_posterior: bool = True) -> dict[str, torch.Tensor]:
        video = batch["video"]
        frames, posterior = self.vae(video, batch["poke"], sample_posterior=sample_posterior)
        target = video[:, 1:]
        l1 = l1_loss(frames, target)
        perceptual = self.perceptual_loss(frames, target)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = self.hparams.l1_weight * l1 + self.hparams.perceptual_weight * perceptual + self.hparams.kl_weight * kl
        return {"loss": loss, "l1": l1, "perceptual": perceptual, "kl": kl, "frames": frames, "target": target}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        self.log_dict({f"train/{key}": losses[key] for key in ("loss", "l1", "kl")}, prog_bar=True,
                      batch_size=batch["video"].shape[0])
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # The posterior mean, not a sample: val/loss selects checkpoints and must be the same for a checkpoint
        # however often (and with whatever seed) it is validated, as the autoencoder's and the cINN's.
        losses = self._losses(batch, sample_posterior=False)
        frames, target = losses["frames"], losses["target"]
        metrics = {"val/loss": losses["loss"], "val/l1": losses["l1"], "val/kl": losses["kl"],
                   "val/psnr": psnr(frames, target), "val/ssim": ssim(frames, target)}
        self.log_dict(for_evaluated_split(self, metrics), prog_bar=True, batch_size=target.shape[0], sync_dist=True)

    test_step = validation_step

    @torch.no_grad()
    def log_videos(self, batch: dict, max_videos: int = 4) -> dict[str, torch.Tensor]:
        """Ground truth and one prior sample per clip, ``(N, T+1, 3, S, S)`` in [-1, 1]."""
        video, poke = batch["video"][:max_videos], batch["poke"][:max_videos]
        return {"inputs": video, "samples": self.vae.sample(video[:, 0], poke, n_frames=video.shape[1] - 1)[:, 0]}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.vae.parameters(), lr=self.hparams.learning_rate, betas=(0.5, 0.9))
