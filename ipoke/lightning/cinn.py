"""Training of stage 2: the conditional INN on top of the three frozen stage-1 networks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ipoke.lightning.base import (
    NetworkCheckpointMixin,
    TrainingSetupError,
    check_clips_fit,
    for_evaluated_split,
    recorded_clip_settings,
)
from ipoke.losses.flow import bits_per_dim, gaussian_nll, reference_nll
from ipoke.losses.reconstruction import l1_loss, psnr, ssim
from ipoke.models.autoencoder import VideoAutoencoder
from ipoke.models.base import instantiate
from ipoke.models.cinn.condition import stage2_condition
from ipoke.models.cinn.graphed import GraphedNLLStep
from ipoke.models.cinn.network import ConditionalINN, broadcast_actnorm
from ipoke.models.cinn.optim import WarmupLinearDecay, build_flow_optimizer
from ipoke.models.encoders import ImageEncoder, PokeEncoder

FROZEN = ("autoencoder", "image_encoder", "poke_encoder")


def _check_flow_args(flow_args: dict[str, Any]) -> None:
    """Check ``flow_args`` against :class:`ConditionalINN`'s arguments: as a plain dict the config parser cannot, and a
    wrong name or a string for a number failed deep inside the network with a message naming neither."""
    import typing

    hints = typing.get_type_hints(ConditionalINN.__init__)
    derived = ("z_dim", "condition_channels", "spatial_size")  # taken from the stage-1 networks
    for key, value in flow_args.items():
        if key in derived or key not in hints:
            allowed = sorted(set(hints) - set(derived) - {"return"})
            raise ValueError(f"model.init_args.flow_args.{key}: not an argument to set here; choose from {allowed}")
        hint = hints[key]
        plain = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}.get(hint)
        if plain and (not isinstance(value, plain) or (hint is not bool and isinstance(value, bool))):
            raise ValueError(f"model.init_args.flow_args.{key} must be {hint.__name__}, got {value!r}")


# The frozen stage-1 networks PokeINNModule.load_from_checkpoint has built, for the constructor it calls (only
# within that call; per thread, so that two threads loading different checkpoints do not swap networks).
_LOADING = threading.local()


def _preloaded_stage1() -> dict[str, nn.Module]:
    if not hasattr(_LOADING, "networks"):
        _LOADING.networks = {}
    return _LOADING.networks


class PokeINNModule(NetworkCheckpointMixin):
    """Trains ``r = flow(z | h)`` by maximum likelihood; only the flow learns.

    ``z`` is a posterior *sample* of the frozen video autoencoder on the clip (as the reference), ``h`` the
    concatenation of the frozen image embedding of ``x0`` and poke embedding. Loss: :func:`gaussian_nll`. Adam with
    AMSGrad, linear warm-up and linear decay to 0 (per step). ActNorm layers are initialised from the first training
    batch (and broadcast from rank 0 under DDP, so all replicas start equal).

    Validation logs ``val/nll`` (also as ``val/loss``), ``val/bits_per_dim``, ``val/reference_nll`` and, on the first
    ``val_sample_batches`` batches, one sampled video per clip compared with the real one: ``val/psnr``,
    ``val/ssim``, ``val/l1`` (frames 1..T).

    Args:
        autoencoder_checkpoint: A :class:`VideoAutoencoder` (``save_pretrained`` folder or Lightning checkpoint).
        image_encoder_checkpoint: An :class:`ImageEncoder`.
        poke_encoder_checkpoint: A :class:`PokeEncoder`.
        flow: The cINN. ``None`` builds one from ``flow_args`` with ``z_dim``, ``condition_channels`` and
            ``spatial_size`` taken from the stage-1 networks.
        flow_args: Extra :class:`ConditionalINN` arguments when ``flow`` is ``None`` (e.g. ``architecture``).
        learning_rate: Peak learning rate (1e-3).
        weight_decay: Adam L2 weight decay (1e-5).
        amsgrad: Use AMSGrad (reference: yes).
        warmup_steps: Linear warm-up steps (500).
        total_steps: Step at which the learning rate reaches 0; ``None``: the trainer's estimated total steps.
        val_sample_batches: Validation batches on which a video is sampled per clip (the MaCow inverse is slow).
        cuda_graph: Replay the flow's forward + backward as a CUDA graph (:class:`GraphedNLLStep`; manual
            optimisation, ``precision`` ``32-true`` or ``bf16-mixed``, a constant batch size: use ``drop_last``).
            4.1x the fp32 eager training throughput of the reference flow on an H100; eager on CPU. One device
            only: the graph bypasses DDP's gradient averaging, so a multi-process run is refused.
    """

    def __init__(self, autoencoder_checkpoint: str, image_encoder_checkpoint: str, poke_encoder_checkpoint: str,
                 flow: ConditionalINN | None = None, flow_args: dict[str, Any] | None = None,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-5, amsgrad: bool = True,
                 warmup_steps: int = 500, total_steps: int | None = None, val_sample_batches: int = 25,
                 cuda_graph: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["flow"])
        # load_from_checkpoint builds the frozen networks from the specs its checkpoint carries (their weights then
        # come from its state dict), so that it works wherever the stage-1 files are.
        preloaded = _preloaded_stage1()
        self.autoencoder = preloaded.get("autoencoder") or VideoAutoencoder.from_checkpoint(autoencoder_checkpoint)
        self.image_encoder = preloaded.get("image_encoder") or ImageEncoder.from_checkpoint(image_encoder_checkpoint)
        self.poke_encoder = preloaded.get("poke_encoder") or PokeEncoder.from_checkpoint(poke_encoder_checkpoint)
        for name in FROZEN:
            getattr(self, name).requires_grad_(False).eval()
        if flow is None:
            flow_args = dict(flow_args or {})
            _check_flow_args(flow_args)
            flow = ConditionalINN(z_dim=self.autoencoder.z_dim,
                                  condition_channels=self._condition_channels(flow_args.get("static_reference", False)),
                                  spatial_size=self.autoencoder.latent_size, **flow_args)
        elif flow_args:
            raise ValueError("pass either flow or flow_args, not both")
        self.flow = flow
        self._check_compatible(self._condition_channels(flow.static_reference))
        self.automatic_optimization = not cuda_graph
        self._graphed_step: GraphedNLLStep | None = None

    @classmethod
    @contextmanager
    def _building_from(cls, specs: dict[str, Any]) -> Iterator[None]:
        # In load_from_checkpoint the frozen stage-1 networks are built from the specs the checkpoint carries (their
        # weights then come from its state dict) instead of read from the stage-1 paths it was trained with: those
        # are often relative to the training folder (runs/autoencoder/...), and failed from anywhere else.
        _preloaded_stage1().update({name: instantiate(specs[name]) for name in FROZEN if name in specs})
        try:
            yield
        finally:
            _preloaded_stage1().clear()

    @classmethod
    def _networks_to_rebuild(cls, hyper_parameters: dict[str, Any]) -> set[str]:
        # The flow was either passed (rebuilt from its spec) or built from flow_args (built again the same way); the
        # stage-1 networks are not constructor arguments (see _building_from).
        return set() if hyper_parameters.get("flow_args") else {"flow"}

    def setup(self, stage: str) -> None:
        # frame_step and poke_size as the stage-1 checkpoints recorded them: training on other clips went through
        # silently, and the exported model then sampled clips its autoencoder had not been trained on.
        autoencoder_clips = recorded_clip_settings(self.hparams.autoencoder_checkpoint)
        poke_encoder_clips = recorded_clip_settings(self.hparams.poke_encoder_checkpoint)
        check_clips_fit(self, n_frames=self.autoencoder.n_frames, size=self.autoencoder.spatial_size,
                        frame_step=autoencoder_clips.get("frame_step"), poke_size=poke_encoder_clips.get("poke_size"),
                        flow_lag=poke_encoder_clips.get("flow_lag"), networks="the stage-1 networks")
        if self.hparams.cuda_graph and self.trainer.world_size > 1:
            raise TrainingSetupError(
                f"cuda_graph trains on one device, but this run has {self.trainer.world_size} processes (the graphed "
                "step would skip DDP's gradient averaging and the replicas would drift apart): set "
                "model.init_args.cuda_graph false, or train on one device")
        if str(self.trainer.precision) in ("bf16-true", "16-true"):
            raise TrainingSetupError(
                f"precision {self.trainer.precision} casts the flow's weights to half precision, but the flow keeps "
                "its state and log-determinants in fp32 (a half-precision log-det is too coarse for the likelihood): "
                "use --trainer.precision bf16-mixed (the fast mode on GPUs) or 32-true")

    def _condition_channels(self, static_reference: bool) -> int:
        """Channels of :meth:`condition`: both embeddings, plus z_dim for a flow with ``static_reference``."""
        embeddings = self.image_encoder.embedding_channels + self.poke_encoder.embedding_channels
        return embeddings + (self.autoencoder.z_dim if static_reference else 0)

    def _check_compatible(self, condition_channels: int) -> None:
        latent = self.autoencoder.latent_size
        problems = []
        if self.flow.z_dim != self.autoencoder.z_dim:
            problems.append(f"flow z_dim {self.flow.z_dim} != autoencoder z_dim {self.autoencoder.z_dim}")
        if self.flow.condition_channels != condition_channels:
            reference = " + z_dim (static_reference)" if self.flow.static_reference else ""
            problems.append(f"flow condition_channels {self.flow.condition_channels} != image + poke embedding "
                            f"channels{reference} {condition_channels}")
        sizes = {"flow": self.flow.spatial_size, "image encoder": self.image_encoder.latent_size,
                 "poke encoder": self.poke_encoder.latent_size}
        problems += [f"{name} latent size {size} != autoencoder latent size {latent}"
                     for name, size in sizes.items() if size != latent]
        resolutions = {self.autoencoder.spatial_size, self.image_encoder.spatial_size, self.poke_encoder.spatial_size}
        if len(resolutions) != 1:
            problems.append(f"stage-1 networks were trained at different resolutions {sorted(resolutions)}")
        if problems:
            raise ValueError("incompatible stage-2 setup: " + "; ".join(problems))

    def train(self, mode: bool = True) -> PokeINNModule:
        """Switch the flow's mode; the frozen networks always stay in eval mode (dropout/norm statistics fixed)."""
        super().train(mode)
        for name in FROZEN:
            getattr(self, name).eval()
        return self

    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def condition(self, first_frame: torch.Tensor, poke: torch.Tensor) -> torch.Tensor:
        """``h = [phi_x0(x0), phi_c(poke)]``, ``(B, C_img + C_poke, 8, 8)``, from ``(B, 3, S, S)``, ``(B, 2, S, S)``;
        followed by the static latent ``(B, z_dim, 8, 8)`` when the flow has ``static_reference``."""
        return stage2_condition(image_encoder=self.image_encoder, poke_encoder=self.poke_encoder,
                                first_frame=first_frame, poke=poke,
                                autoencoder=self.autoencoder if self.flow.static_reference else None)

    @torch.no_grad()
    def encode_latent(self, video: torch.Tensor) -> torch.Tensor:
        """Posterior sample ``z`` ``(B, z_dim, 8, 8)`` of the frozen autoencoder for clips ``(B, T+1, 3, S, S)``."""
        return self.autoencoder.encode(video).sample()

    @torch.no_grad()
    def sample_video(self, x0: torch.Tensor, poke: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """One sampled continuation per start frame.

        Args:
            x0: ``(B, 3, S, S)`` in [-1, 1].
            poke: ``(B, 2, S, S)`` poke maps.
            generator: Source of ``r`` (reproducible samples).

        Returns:
            Frames ``x1 .. xT``: ``(B, T, 3, S, S)`` in [-1, 1].
        """
        z = self.flow.sample(self.condition(x0, poke), generator=generator)
        return self.autoencoder.decode(z.to(x0.dtype), x0)

    def _flow_inputs(self, batch: dict, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # The frozen networks run in their own precision (fp32 unless the trainer's precision is "64-true" or
        # "bf16-true") even under bf16-mixed: the latent is the flow's target (a bf16 rounding of it is coarser than
        # the posterior's spread) and the condition may hold the static latent it is measured from. They cost little
        # next to the flow.
        dtype = next(self.autoencoder.parameters()).dtype
        video, poke = batch["video"].to(dtype), batch["poke"].to(dtype)
        with torch.autocast(device_type=video.device.type, enabled=False):
            # Training fits posterior samples; validation scores the posterior mean, so that val/nll (which selects
            # checkpoints) is the same for a checkpoint however often it is validated.
            z = self.encode_latent(video) if training else self.autoencoder.encode(video).mean
            h = self.condition(video[:, 0], poke)
        # Only a training batch initialises ActNorm (not the sanity-check validation that runs before it).
        if training and not self.flow.actnorm_initialized:
            self.flow.initialize_actnorm(z, h)
            broadcast_actnorm(self.flow)
        return z, h

    def _with_summaries(self, terms: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        dims = self.flow.num_dimensions
        terms["bits_per_dim"] = bits_per_dim(terms["nll"].detach(), dims)
        terms["reference_nll"] = torch.tensor(reference_nll(dims), device=device)
        return terms

    def _nll_terms(self, batch: dict, training: bool) -> dict[str, torch.Tensor]:
        z, h = self._flow_inputs(batch, training)
        r, log_det = self.flow(z, h)
        terms = {"nll": gaussian_nll(r, log_det), "log_det": log_det.detach().float().mean(),
                 "half_squared_norm": 0.5 * r.detach().float().pow(2).flatten(1).sum(1).mean()}
        return self._with_summaries(terms, r.device)

    def _graphed_training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        if "16-mixed" == str(self.trainer.precision):
            raise TrainingSetupError("cuda_graph supports precision 32-true and bf16-mixed (fp16 needs loss scaling)")
        z, h = self._flow_inputs(batch, training=True)
        if self._graphed_step is None:
            self._graphed_step = GraphedNLLStep(self.flow)
        terms = self._graphed_step(z, h)
        optimizer = self.optimizers()
        optimizer.step()
        self.lr_schedulers().step()
        return self._with_summaries(terms, z.device)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            terms = self._nll_terms(batch, training=True)
        else:
            terms = self._graphed_training_step(batch)
        self.log_dict({f"train/{key}": value.detach() for key, value in terms.items()}, prog_bar=False,
                      batch_size=batch["video"].shape[0])
        self.log("train/nll_bar", terms["nll"].detach(), prog_bar=True, logger=False,
                 batch_size=batch["video"].shape[0])
        return terms["nll"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        video = batch["video"]
        batch_size = video.shape[0]
        terms = self._nll_terms(batch, training=False)
        logs = {f"val/{key}": value for key, value in terms.items()}
        logs["val/loss"] = terms["nll"]
        self.log_dict(for_evaluated_split(self, logs), prog_bar=False, batch_size=batch_size, sync_dist=True)
        self.log_dict(for_evaluated_split(self, {"val/nll_bar": terms["nll"]}), prog_bar=True, logger=False,
                      batch_size=batch_size, sync_dist=True)
        if batch_idx < self.hparams.val_sample_batches:
            target = video[:, 1:]
            generator = torch.Generator().manual_seed(batch_idx)  # the same residuals at every validation
            sample = self.sample_video(video[:, 0], batch["poke"], generator=generator)[:, :target.shape[1]].float()
            self.log_dict(for_evaluated_split(self, {"val/psnr": psnr(sample, target), "val/ssim": ssim(sample, target),
                                                     "val/l1": l1_loss(sample, target)}),
                          batch_size=batch_size, sync_dist=True)

    test_step = validation_step

    def configure_optimizers(self) -> dict:
        total_steps = self.hparams.total_steps
        if total_steps is None:
            estimated = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
            total_steps = int(estimated) if estimated != float("inf") else None
        warmup = self.hparams.warmup_steps
        if total_steps is not None and total_steps <= warmup:
            # Very short runs (tests, smoke runs): keep the warm-up shape but let the decay still reach the end.
            warmup = total_steps // 2
        optimizer, scheduler = build_flow_optimizer(
            self.flow.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay,
            amsgrad=self.hparams.amsgrad, warmup_steps=warmup, total_steps=total_steps)
        self._schedule = (warmup, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        super().on_train_start()  # a resumed run's random streams move on (NetworkCheckpointMixin)
        # Resuming restores the scheduler's state, and with it the length of the run that wrote the checkpoint: a
        # resume with a larger max_epochs decayed to lr 0 at the old end and silently trained nothing. Keep this
        # run's schedule (its own end from max_epochs/max_steps, unless total_steps is set) from the restored step on.
        schedule = getattr(self, "_schedule", None)
        if schedule is None or self._trainer is None:
            return
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for index, factor in enumerate(getattr(scheduler, "lr_lambdas", [])):
                if isinstance(factor, WarmupLinearDecay) and (factor.warmup_steps, factor.total_steps) != schedule:
                    factor.warmup_steps, factor.total_steps = schedule
                    group = scheduler.optimizer.param_groups[index]
                    group["lr"] = scheduler.base_lrs[index] * factor(scheduler.last_epoch)

    @torch.no_grad()
    def log_videos(self, batch: dict, max_videos: int = 4) -> dict[str, torch.Tensor]:
        """``{"real_vs_sample": (N, T+1, 3, S, 2S)}``: the real clip and one sample side by side, x0 first."""
        video = batch["video"][:max_videos]
        sample = self.sample_video(video[:, 0], batch["poke"][:max_videos])
        sample = torch.cat([video[:, :1], sample.to(video.dtype)], dim=1)[:, :video.shape[1]]
        return {"real_vs_sample": torch.cat([video, sample], dim=-1)}
