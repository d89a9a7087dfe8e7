"""Behaviour shared by every ipoke training module."""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from ipoke.models.base import NETWORKS_KEY, instantiate, network_specs

# Steps apart, the seeds of two resumes (see NetworkCheckpointMixin.on_train_start): a large odd number, so that the
# streams of nearby seeds and steps do not coincide.
RESUME_SEED_STRIDE = 1_000_003
# Ranks apart, the seeds of the processes of one multi-process run: beyond any step's offset (2**48 / 1_000_003 is
# 2.8e8 steps), so that a rank's streams never coincide with another rank's after a resume.
RANK_SEED_STRIDE = 2**48 + 21


# What a resume takes from this run's configure_optimizers rather than from the checkpoint (see
# NetworkCheckpointMixin.on_train_start): optimiser settings besides the rate (AMSGrad is left as restored: its state
# has no maximum to switch to), schedulers' decay settings, and the hyperparameters reported when they changed.
RESUMED_GROUP_SETTINGS = ("betas", "weight_decay", "eps")
RESUMED_SCHEDULER_SETTINGS = ("gamma", "factor", "patience", "cooldown", "threshold", "min_lrs")
RESUMED_HYPERPARAMETERS = ("learning_rate", "lr_decay", "lr_patience", "betas", "weight_decay")


def resume_seed(trainer: Any) -> int | None:
    """The seed of a resumed run's random streams (None when the run starts at step 0): the current seed (the config's
    ``seed_everything``) moved on by the restored step, so that each resumed job draws new, reproducible numbers."""
    step = int(getattr(trainer, "global_step", 0) or 0) if trainer is not None else 0
    return (torch.initial_seed() + RESUME_SEED_STRIDE * step) % 2**63 if step > 0 else None


def run_seed(trainer: Any) -> int:
    """The seed every process of a run shares when training starts: :func:`resume_seed` on a resumed run, else the
    current seed (the config's ``seed_everything``)."""
    seed = resume_seed(trainer)
    return torch.initial_seed() if seed is None else seed


def process_seed(trainer: Any) -> int | None:
    """The seed of this process's random streams when training starts: :func:`resume_seed`, moved on by the global
    rank under multi-process training; None for rank 0 of a fresh run (the streams stay as ``seed_everything`` left
    them).

    Every DDP process starts from the same ``seed_everything`` seed, so before session 20 all ranks drew the same
    numbers: the same posterior noise, discriminator frames and, with ``num_workers: 0``, poke and augmentation draws
    for the clips at the same position of their shards, which made the ranks' batches less independent than their
    clips suggested.
    """
    rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
    if rank == 0:
        return resume_seed(trainer)
    return (run_seed(trainer) + RANK_SEED_STRIDE * rank) % 2**63


def _optimizers_and_schedulers(configured: Any) -> tuple[list[Any], list[Any]]:
    """The optimisers and schedulers of any return value of ``configure_optimizers`` Lightning accepts here: an
    optimiser, ``(optimisers, schedulers)``, a dict with ``optimizer`` and ``lr_scheduler``, or a list of either."""
    optimizers: list[Any] = []
    schedulers: list[Any] = []

    def add_scheduler(entry: Any) -> None:
        schedulers.append(entry["scheduler"] if isinstance(entry, dict) else entry)

    if isinstance(configured, torch.optim.Optimizer):
        optimizers.append(configured)
    elif isinstance(configured, dict):
        optimizers.append(configured["optimizer"])
        if configured.get("lr_scheduler") is not None:
            add_scheduler(configured["lr_scheduler"])
    elif isinstance(configured, tuple) and len(configured) == 2 and isinstance(configured[0], list):
        optimizers.extend(configured[0])
        for entry in configured[1]:
            add_scheduler(entry)
    elif isinstance(configured, (list, tuple)):
        for entry in configured:
            more_optimizers, more_schedulers = _optimizers_and_schedulers(entry)
            optimizers.extend(more_optimizers)
            schedulers.extend(more_schedulers)
    return optimizers, schedulers


class TrainingSetupError(MisconfigurationException, ValueError):
    """A trainer option that a module cannot train with (found in its ``setup``, before the first step); the
    ``ipoke`` command prints it as one line, like Lightning's own refusals of a configuration."""


def _read_checkpoint(path: str | os.PathLike) -> Any:
    """A Lightning checkpoint from a file (memory-mapped where it can be: its specs are read without loading every
    tensor) or a URL / fsspec path (``s3://``, ``https://``, ...: read with Lightning's own loader)."""
    if not os.path.isfile(path):
        from lightning.fabric.utilities.cloud_io import _load

        return _load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # a checkpoint in the legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=False)


RUN_ID_KEY = "ipoke_run_id"


class NetworkCheckpointMixin(L.LightningModule):
    """Writes the build spec of every :class:`~ipoke.models.base.SavableModule` attribute into checkpoints.

    With it, ``VideoAutoencoder.from_checkpoint("last.ckpt")`` (or any network class) rebuilds the network from
    the checkpoint alone, without the YAML it was trained from.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NETWORKS_KEY] = network_specs(self)
        # Which training run wrote the file (kept across resumes): `--ckpt_path best` compares only the top-k files
        # of the run that wrote the newest last.ckpt, not those a finished earlier run left in the same folder.
        if getattr(self, "_run_id", None) is None:
            import uuid

            self._run_id = uuid.uuid4().hex
        checkpoint[RUN_ID_KEY] = self._run_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._run_id = checkpoint.get(RUN_ID_KEY)  # a resume goes on as the same run
        # The settings the checkpoint was trained with: a resume compares its optimiser settings with them.
        self._checkpoint_hyperparameters = dict(checkpoint.get("hyper_parameters") or {})

    def on_train_start(self) -> None:
        """On a resumed run, apply this run's optimiser settings and move the random streams on by the restored step.

        Lightning restores the optimisers' and schedulers' states, and with them the settings of the run that wrote
        the checkpoint: a resume with another ``learning_rate``, ``lr_decay``, ``lr_patience``, ``betas`` or
        ``weight_decay`` trained with the old values while the new ones were recorded as used. They are applied now:
        the learning rate is scaled by new / old wherever the schedule has reached (base rates included), the
        schedulers' decay settings and the optimisers' other settings are taken from this run's
        ``configure_optimizers``.
        """
        self._apply_resumed_optimizer_settings()
        self._advance_random_streams()

    def _apply_resumed_optimizer_settings(self) -> None:
        old = getattr(self, "_checkpoint_hyperparameters", None)
        if not old or self._trainer is None or self.trainer.global_step == 0:
            return
        new_rate, old_rate = self.hparams.get("learning_rate"), old.get("learning_rate")
        ratio = new_rate / old_rate if new_rate and old_rate and new_rate != old_rate else 1.0
        fresh_optimizers, fresh_schedulers = _optimizers_and_schedulers(self.configure_optimizers())
        restored_schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        for restored, fresh in zip(self.trainer.optimizers, fresh_optimizers, strict=False):
            for group, fresh_group in zip(restored.param_groups, fresh.param_groups, strict=False):
                for key in RESUMED_GROUP_SETTINGS:
                    if key in fresh_group:
                        group[key] = fresh_group[key]
                for key in ("lr", "initial_lr"):
                    if key in group:
                        group[key] *= ratio
        for restored, fresh in zip(restored_schedulers, fresh_schedulers, strict=False):
            if hasattr(restored, "base_lrs"):
                restored.base_lrs = [rate * ratio for rate in restored.base_lrs]
            if hasattr(restored, "_last_lr"):
                restored._last_lr = [group["lr"] for group in restored.optimizer.param_groups]
            for key in RESUMED_SCHEDULER_SETTINGS:
                if type(restored) is type(fresh) and hasattr(fresh, key):
                    setattr(restored, key, getattr(fresh, key))
        changed = {key: (old[key], self.hparams[key]) for key in RESUMED_HYPERPARAMETERS
                   if key in old and key in self.hparams and old[key] != self.hparams[key]}
        if changed:
            rank_zero_info("Resumed with other optimiser settings than the checkpoint's, applied: " + ", ".join(
                f"{key} {before!r} -> {after!r}" for key, (before, after) in changed.items()))

    def _advance_random_streams(self) -> None:
        """On a resumed run, move the random streams on by the restored step; on ranks above 0, by the rank too.

        The configs' ``seed_everything`` seeds every start alike, and checkpoints hold no random state, so each
        resumed job replayed the first job's draws: the same clip order, pokes, augmentation and posterior noise
        every time (and, with ``limit_train_batches``, never the other clips). Seeding from the seed and the restored
        step keeps resumes reproducible and their streams new. (A resumed run still differs from an uninterrupted
        one: its draws are not those the uninterrupted run would have made.) The training loader is built before this
        hook and seeds its workers and shuffling from its own generator, which :class:`PokeDataModule` seeds the
        same way (:func:`resume_seed`). Under multi-process training each rank moves on by its rank as well
        (:func:`process_seed`), so that the ranks draw different noise.
        """
        seed = process_seed(self.trainer if self._trainer is not None else None)
        if seed is not None:
            torch.manual_seed(seed)  # also every CUDA device's generator
            np.random.seed(seed % 2**32)
            random.seed(seed)

    @classmethod
    def _networks_to_rebuild(cls, hyper_parameters: dict[str, Any]) -> set[str]:
        """Constructor arguments that :meth:`load_from_checkpoint` rebuilds from the checkpoint's network specs:
        the networks, which are arguments but not hyperparameters."""
        return set(inspect.signature(cls.__init__).parameters) - set(hyper_parameters)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, which also rebuilds the networks passed to the constructor.

        The networks are constructor arguments that ``save_hyperparameters`` leaves out (they are modules, not
        settings), so Lightning alone could not call the constructor (``missing 1 required positional argument:
        'autoencoder'``) or built a default network instead of the trained one. The checkpoint carries their specs
        (:func:`~ipoke.models.base.network_specs`); networks given in ``kwargs`` win. To load one network without
        its training module, use ``<NetworkClass>.from_checkpoint(path)``.
        """
        specs: dict[str, Any] = {}
        if isinstance(checkpoint_path, (str, os.PathLike)):  # a file-like object: Lightning alone reads it
            checkpoint = _read_checkpoint(checkpoint_path)
            specs = (checkpoint.get(NETWORKS_KEY) or {}) if isinstance(checkpoint, dict) else {}
            wanted = cls._networks_to_rebuild(checkpoint.get("hyper_parameters") or {}) if specs else set()
            for name in wanted & set(specs) - set(kwargs):
                kwargs[name] = instantiate(specs[name])
            del checkpoint
        with cls._building_from(specs):
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location,
                                                hparams_file=hparams_file, strict=strict, **kwargs)

    @classmethod
    @contextmanager
    def _building_from(cls, specs: dict[str, Any]) -> Iterator[None]:
        """Context of the constructor call in :meth:`load_from_checkpoint`, given the checkpoint's network specs: a
        stage whose constructor builds networks from other arguments (the cINN's stage-1 paths) builds them from the
        specs here instead. Nothing by default."""
        yield


def detect_unused_parameters_under_ddp(module: L.LightningModule) -> None:
    """Switch on DDP's unused-parameter detection for a module that alternates generator and discriminator steps.

    A GAN step runs one backward pass for the generator and one for the discriminator inside a single
    ``training_step`` (one DDP forward), so each pass leaves the other network's parameters without gradients. Plain
    DDP then stops with "parameters that were not used in producing the loss" (and does so as well before
    ``gan_start_step``, while the discriminator is not used at all). Call this from the module's ``setup`` hook,
    which Lightning runs before the strategy wraps the module in ``DistributedDataParallel``; it does nothing
    without DDP or when the user already chose ``strategy: ddp_find_unused_parameters_true``.
    """
    strategy = module.trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return
    ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
    if not isinstance(ddp_kwargs, dict):  # a Lightning version that stores the options elsewhere
        raise RuntimeError(f"{type(module).__name__} trains a generator and discriminators in turn and needs DDP's "
                           "unused-parameter detection: run with --trainer.strategy "
                           "ddp_find_unused_parameters_true")
    if not ddp_kwargs.get("find_unused_parameters"):
        ddp_kwargs["find_unused_parameters"] = True
        rank_zero_info(f"{type(module).__name__}: DDP runs with find_unused_parameters=True (generator and "
                       "discriminator steps alternate)")


def for_evaluated_split(module: L.LightningModule, metrics: dict[str, Any]) -> dict[str, Any]:
    """Rename ``val/<name>`` metrics ``test/<name>`` while the module runs under ``trainer.test`` (``ipoke test``).

    The modules share one ``validation_step`` for validation and test; without this, ``ipoke test`` reported its
    test-split figures as ``val/...``.
    """
    trainer = module._trainer
    if trainer is None or not trainer.testing:
        return metrics
    return {(f"test/{key[4:]}" if key.startswith("val/") else key): value for key, value in metrics.items()}


def recorded_clip_settings(path: str | os.PathLike) -> dict[str, int]:
    """``{"frame_step", "poke_size"}`` of the clips a stage-1 Lightning checkpoint was trained on, as its data module
    recorded them, and ``"flow_lag"`` (``n_frames * frame_step``: the lag of the flow its clips end on, which the
    poke encoder regresses) where it recorded ``n_frames``; empty for a ``save_pretrained`` folder or a checkpoint
    without them (nothing to check against)."""
    from ipoke.models.base import clip_settings

    if not os.path.isfile(path):
        return {}
    try:
        checkpoint = _read_checkpoint(path)
    except Exception:  # noqa: BLE001 - unreadable here: the network loader has already said why, or will
        return {}
    if not isinstance(checkpoint, dict) or not checkpoint.get("datamodule_hyper_parameters"):
        return {}
    settings = clip_settings(checkpoint)
    n_frames = checkpoint["datamodule_hyper_parameters"].get("n_frames")
    if n_frames is not None:
        settings["flow_lag"] = int(n_frames) * settings["frame_step"]
    return settings


def check_clips_fit(module: L.LightningModule, *, n_frames: int | None = None, size: int | None = None,
                    frame_step: int | None = None, poke_size: int | None = None, flow_lag: int | None = None,
                    networks: str = "the networks") -> None:
    """Refuse data whose clips the networks were not built for, before the first batch.

    A mismatch otherwise crashed deep in a loss, or trained silently on clips the autoencoder was not built for (and
    the checkpoint then claimed a clip length it never saw). ``frame_step`` and ``poke_size`` are those of the clips
    the networks were trained on, where known (:func:`recorded_clip_settings`), and so is ``flow_lag`` (the poke
    encoder's: ``n_frames * frame_step`` of its clips). Call from ``setup``: the data module
    is set up first.

    Raises:
        DatasetFormatError: Naming both values and the config keys to change (printed as one line by ``ipoke``).
    """
    from ipoke.data.format import DatasetFormatError

    datamodule = getattr(module._trainer, "datamodule", None) if module._trainer is not None else None
    dataset = next((data for data in (getattr(datamodule, name, None) for name in ("train_set", "val_set", "test_set"))
                    if data is not None), None)
    if dataset is None:
        return
    problems = []
    if n_frames is not None and getattr(dataset, "n_frames", n_frames) != n_frames:
        problems.append(f"clips of {dataset.n_frames} frames after x0 in the data (data.init_args.n_frames) against "
                        f"{n_frames} in {networks}")
    if size is not None and getattr(dataset, "size", size) != size:
        problems.append(f"{dataset.size} px frames in the data (data.init_args.size) against {size} px in {networks}")
    if frame_step is not None and getattr(dataset, "frame_step", frame_step) != frame_step:
        problems.append(f"frame_step {dataset.frame_step} in the data (data.init_args.frame_step) against "
                        f"{frame_step} in the clips {networks} were trained on")
    if poke_size is not None and getattr(dataset, "poke_size", poke_size) != poke_size:
        problems.append(f"poke_size {dataset.poke_size} in the data (data.init_args.poke_size) against {poke_size} "
                        f"in the clips {networks} were trained on")
    data_lag = getattr(dataset, "n_frames", None), getattr(dataset, "frame_step", None)
    if flow_lag is not None and None not in data_lag and data_lag[0] * data_lag[1] != flow_lag:
        # A poke encoder trained at another lag reads pokes of other magnitudes than the data gives it: its clips
        # ended elsewhere (data.init_args.n_frames or frame_step differed when it was trained).
        problems.append(f"clips ending {data_lag[0] * data_lag[1]} frames after x0 in the data (n_frames {data_lag[0]} "
                        f"x frame_step {data_lag[1]}) against {flow_lag} in the clips the poke encoder was trained on "
                        "(it regresses the flow at that lag)")
    if problems:
        raise DatasetFormatError("; ".join(problems) + ": make the data's settings and the networks' the same")
