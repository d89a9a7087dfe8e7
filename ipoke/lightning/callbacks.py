"""Callbacks shared by the training modules."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ipoke.data.layouts import LOGGED_VIDEOS_MARKER
from ipoke.data.video_io import write_gif as write_gif_file


def videos_to_uint8(videos: torch.Tensor) -> np.ndarray:
    """``(N, T, C, H, W)`` in [-1, 1] -> uint8 numpy ``(N, T, C, H, W)``."""
    return ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def tile_videos(videos: np.ndarray) -> np.ndarray:
    """Put ``N`` clips side by side: uint8 ``(N, T, C, H, W)`` -> ``(T, C, H, N * W)``."""
    return np.concatenate(list(videos), axis=-1)


def _tensorboard_video_available() -> bool:
    """Whether ``SummaryWriter.add_video`` can encode (it imports ``moviepy.editor``, gone in moviepy 2)."""
    try:
        return importlib.util.find_spec("moviepy") is not None and (
            importlib.util.find_spec("moviepy.editor") is not None)
    except (ImportError, ValueError):
        return False


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 4) -> Path:
    """Write uint8 frames ``(T, C, H, W)`` as a looping GIF; returns the path
    (:func:`ipoke.data.video_io.write_gif`, whose frame delays are whole centiseconds)."""
    return write_gif_file(path, frames, fps=fps)


class VideoLoggingCallback(L.Callback):
    """Logs ``pl_module.log_videos(batch)`` every ``every_n_steps`` training batches (and once per validation/test).

    The module returns ``{name: (N, T, C, H, W) in [-1, 1]}``. Clips of one name are tiled side by side and sent to
    every configured logger: GIF files ``<log_dir>/videos/<split>_<name>_<step>.gif`` (always written; with W&B, whose
    log folder is shared by its runs, ``<log_dir>/videos/<W&B run id>/``; ``<log_dir>`` is the first logger's
    folder, the W&B ``save_dir`` when it is the only logger; ``<step>`` counts training batches and
    goes on after a resume), the same
    files as ``wandb.Video`` for W&B (offline mode works; no ``moviepy`` needed), and for TensorBoard ``add_video``
    when ``moviepy.editor`` can be imported, otherwise the frames side by side as one image.

    Args:
        every_n_steps: Training batches between two logs; 0 disables training-time logging.
        max_videos: Clips per name.
        fps: Frames per second of the written videos, in (0, 50].
        log_validation: Also log the first batch of each validation run and of ``ipoke test``.
    """

    def __init__(self, every_n_steps: int = 500, max_videos: int = 4, fps: int = 4,
                 log_validation: bool = True) -> None:
        super().__init__()
        # Checked here, when the config is built: a bad value used to stop training with a traceback at the first
        # log (after `every_n_steps` batches, before any checkpoint).
        from ipoke.utils import is_whole_number

        if not is_whole_number(every_n_steps, minimum=0):
            raise ValueError(f"every_n_steps must be a whole number >= 0 (0: no training-time videos), "
                             f"got {every_n_steps!r}")
        if not is_whole_number(max_videos, minimum=1):
            raise ValueError(f"max_videos must be a whole number >= 1, got {max_videos!r}")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 50:
            raise ValueError(f"fps must be a number in (0, 50] (frames per second of the GIFs), got {fps!r}")
        self.every_n_steps, self.max_videos, self.fps = every_n_steps, max_videos, fps
        self.log_validation = log_validation
        self.batches_seen = 0
        self.written: list[Path] = []
        self.log_dir: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # ``trainer.log_dir`` is a collective call under DDP (rank 0 broadcasts it), so it must be read here, where
        # every rank runs, and never inside the rank-zero-only ``_log``: there it waits forever for the other ranks.
        self.log_dir = trainer.log_dir or trainer.default_root_dir

    def state_dict(self) -> dict[str, Any]:
        # Saved in checkpoints, so that a resumed run numbers its files (and TensorBoard steps) from where it stopped.
        return {"batches_seen": self.batches_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_seen = int(state_dict.get("batches_seen", 0))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches_seen += 1
        if self.every_n_steps and self.batches_seen % self.every_n_steps == 0:
            self._log(trainer, pl_module, batch, "train")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.log_validation and batch_idx == 0 and not trainer.sanity_checking:
            self._log(trainer, pl_module, batch, "val")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.log_validation and batch_idx == 0:  # `ipoke test` shows the test split's reconstructions too
            self._log(trainer, pl_module, batch, "test")

    @rank_zero_only
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, split: str) -> None:
        if not hasattr(pl_module, "log_videos"):
            return
        was_training = pl_module.training
        pl_module.eval()
        # Sampling draws from the global random state: without the fork, logging changed every later posterior
        # sample and poke of the training (and, on rank 0 only, made the ranks' streams diverge).
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                videos = pl_module.log_videos(batch, max_videos=self.max_videos)
        finally:
            pl_module.train(was_training)
        step = self.batches_seen  # numbers the files
        # Lightning logs the scalars at the count of batches that stepped, before this batch's end: one less than
        # batches_seen here (TensorBoard showed a batch's videos one step after its loss).
        scalar_step = trainer.fit_loop.epoch_loop._batches_that_stepped
        loggers = trainer.loggers
        for name, clip in videos.items():
            frames = tile_videos(videos_to_uint8(clip))
            key = f"{split}/{name}"
            written: Path | None = None
            for logger in loggers:
                if isinstance(logger, WandbLogger):
                    import wandb

                    # wandb.Video encodes raw frames with moviepy, which plain `pip install wandb` lacks (it raised
                    # in the middle of training); from a GIF file it needs nothing. The file stays in <log_dir>/videos.
                    written = written or self._write_file(trainer, key, frames, step)
                    # On the scalars' step axis: Lightning logs them at the count of batches that stepped, while
                    # trainer.global_step counts optimizer steps (three per batch for the video autoencoder's GAN
                    # step), which put the videos far past the end of the loss curves.
                    logger.experiment.log({key: wandb.Video(str(written), format="gif"),
                                           "trainer/global_step": scalar_step})
                elif isinstance(logger, TensorBoardLogger):
                    # torch's add_video needs moviepy.editor (moviepy < 2) and otherwise only prints a line and logs
                    # nothing, so check first: without it, log the frames side by side as one image.
                    if _tensorboard_video_available():
                        logger.experiment.add_video(key, torch.from_numpy(frames)[None], scalar_step, fps=self.fps)
                    else:
                        logger.experiment.add_image(key, np.concatenate(list(frames), axis=-1), scalar_step)
                    written = written or self._write_file(trainer, key, frames, step)
                elif written is None:
                    written = self._write_file(trainer, key, frames, step)
            if not loggers:
                self._write_file(trainer, key, frames, step)

    def _write_file(self, trainer: L.Trainer, key: str, frames: np.ndarray, step: int) -> Path:
        folder = Path(self.log_dir or trainer.default_root_dir) / "videos"
        wandb_logger = next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)
        if wandb_logger is not None:  # its log folder is shared by every W&B run: one sub-folder per run
            folder = folder / str(wandb_logger.experiment.id)
        path = write_gif(folder / f"{key.replace('/', '_')}_{step:07d}.gif", frames, self.fps)
        self.written.append(path)
        # Marks the folder as ipoke's output, so that `ipoke data prepare` never reads these gifs as raw videos
        # (a run's log folder may well lie inside the folder of the videos it trains on).
        marker = folder / LOGGED_VIDEOS_MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"written_by": "ipoke VideoLoggingCallback"}) + "\n")
        return path


class LastCheckpoint(ModelCheckpoint):
    """Keeps ``last.ckpt``: the training state at the end of every training epoch, to resume from or export.

    Lightning's own ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it also writes a top-k
    checkpoint (since Lightning 2.6): whenever the monitored metric did not improve, ``last.ckpt`` stayed at an older
    epoch, and resuming from it silently trained that epoch again. This callback writes the latest state every epoch
    (whether or not validation ran in it), one file, replaced each time, also across runs into the same folder;
    ``--ckpt_path last`` finds it. Pair it with a monitored ``ModelCheckpoint`` for the best checkpoints, with that
    one's ``save_last`` off (both would write ``last.ckpt``).

    Args:
        dirpath: Folder of ``last.ckpt`` (the configs use the stage's ``runs/<stage>/<name>/checkpoints``); None: the
            run's logger folder, as ``ModelCheckpoint``.
        every_n_epochs: Epochs between two writes.
    """

    def __init__(self, *, dirpath: str | None = None, every_n_epochs: int = 1) -> None:
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                         save_last=False, every_n_epochs=every_n_epochs, save_on_train_epoch_end=True,
                         enable_version_counter=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the final state when the last write was earlier: with ``every_n_epochs`` > 1, a run whose epochs are
        no multiple of it (or that stopped on ``max_steps``) ended with ``last.ckpt`` epochs behind."""
        super().on_train_end(trainer, pl_module)
        if not trainer.fast_dev_run and not trainer.sanity_checking and (
                self._last_global_step_saved != trainer.global_step):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


__all__ = ["LastCheckpoint", "VideoLoggingCallback", "tile_videos", "videos_to_uint8", "write_gif"]
