"""``PokeDataModule``: train/val/test loaders of clips with pokes from a prepared dataset folder."""

from __future__ import annotations

import math
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from ipoke.data.datasets import MIN_MODEL_SIZE, PokeDataset
from ipoke.lightning.base import process_seed, run_seed
from ipoke.utils import is_whole_number


class PokeDataModule(L.LightningDataModule):
    """Loaders over a prepared dataset (``ipoke data synth`` or ``ipoke data prepare`` output).

    Training clips are augmented and get random pokes every epoch; validation and test clips are not augmented and
    get the same pokes every time (seeded per clip), so metrics are comparable across epochs and runs.

    Args:
        data_dir: Prepared dataset folder.
        size: Model resolution S (frames and flow are resized on the fly). Default: the dataset's size.
        n_frames: Future frames T per clip.
        frame_step: Stored frames between clip frames.
        batch_size: Clips per batch (per device).
        num_workers: Loader processes.
        n_pokes: Maximum pokes per training clip.
        poke_size: Poke square side in pixels at size S.
        zero_poke_fraction: Fraction of training clips turned into static clips with a background poke.
        augment: Augment training clips.
        object_weighting: Draw training clips with probability ``1 / (clips of their object)`` (with replacement,
            as many draws per epoch as clips), so that every object (plant, actor: the videos' ``object_id``) is seen
            equally often however many or long its videos are. The original does this for Poking Plants.
        poke_source: ``"flow"`` (simulate from flow, the papers' protocol) or ``"recorded"`` (synthetic data's
            stored pokes where possible; needs ``augment=False``).
        train_split, val_split, test_split: Split names.
        eval_n_pokes: Pokes per validation/test clip (the papers' test protocol uses exactly 1).
        max_val_clips: Bound on validation clips (evenly spaced); ``None`` = all.
        seed: Seed of the deterministic validation/test pokes.
    """

    def __init__(self, *, data_dir: str, size: int | None = None, n_frames: int = 10, frame_step: int = 1,
                 batch_size: int = 20, num_workers: int = 2, n_pokes: int = 5, poke_size: int = 5,
                 zero_poke_fraction: float = 1 / 12, augment: bool = True, object_weighting: bool = False,
                 poke_source: str = "flow", train_split: str = "train", val_split: str = "val",
                 test_split: str = "test", eval_n_pokes: int = 1, max_val_clips: int | None = 1000,
                 seed: int = 0) -> None:
        super().__init__()
        # Checked when the config is built: these failed later, at setup or in the loader, with a traceback.
        for name, value, minimum in (("n_frames", n_frames, 1), ("frame_step", frame_step, 1),
                                     ("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                     ("poke_size", poke_size, 1), ("n_pokes", n_pokes, 1),
                                     ("eval_n_pokes", eval_n_pokes, 1), ("seed", seed, 0)):
            if not is_whole_number(value, minimum):
                raise ValueError(f"data.init_args.{name} must be a whole number >= {minimum}, got {value!r}")
        for name, value, minimum in (("size", size, MIN_MODEL_SIZE), ("max_val_clips", max_val_clips, 1)):
            if value is not None and not is_whole_number(value, minimum):
                raise ValueError(f"data.init_args.{name} must be a whole number >= {minimum} or null, got {value!r}")
        if not 0 <= zero_poke_fraction < 1:  # (1 would leave no clip that moves; PokeDataset refuses it too)
            raise ValueError(f"data.init_args.zero_poke_fraction must be in [0, 1), got {zero_poke_fraction!r}")
        if poke_source == "recorded" and augment:
            # Checked here, not only when the training set is built at fit time: the default augment=True would
            # otherwise fail minutes into a run (and until session 12 it silently served flow pokes instead).
            raise ValueError("poke_source='recorded' needs augment=False (recorded pokes sit where the simulation "
                             "poked the unaugmented first frame); set data.init_args.augment: false, or use "
                             "poke_source='flow'")
        self.save_hyperparameters()
        self.train_set: PokeDataset | None = None
        self.val_set: PokeDataset | None = None
        self.test_set: PokeDataset | None = None

    def _dataset(self, split: str, *, train: bool, max_clips: int | None = None) -> PokeDataset:
        hp = self.hparams
        return PokeDataset(
            hp.data_dir, split=split, size=hp.size, n_frames=hp.n_frames, frame_step=hp.frame_step,
            n_pokes=hp.n_pokes if train else hp.eval_n_pokes, poke_size=hp.poke_size,
            zero_poke_fraction=hp.zero_poke_fraction if train else 0.0, augment=hp.augment and train,
            poke_source=hp.poke_source, fixed_poke_count=not train, deterministic=not train, seed=hp.seed,
            max_clips=max_clips)

    def _val_split(self) -> str:
        """The validation split; prepared real data has only train/test, so the default 'val' falls back to 'test'."""
        split = self.hparams.val_split
        if split == "val":
            from ipoke.data.format import PreparedDataset

            splits = PreparedDataset(self.hparams.data_dir).splits()
            if "val" not in splits and self.hparams.test_split in splits:
                warnings.warn(f"{self.hparams.data_dir} has no 'val' split; validating on "
                              f"'{self.hparams.test_split}' (set data.init_args.val_split to silence this)",
                              stacklevel=2)
                return self.hparams.test_split
        return split

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(self.hparams.train_split, train=True)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset(self._val_split(), train=False, max_clips=self.hparams.max_val_clips)
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._dataset(self.hparams.test_split, train=False)

    def _loader(self, dataset: PokeDataset, *, shuffle: bool, sampler: WeightedRandomSampler | None = None,
                generator: torch.Generator | None = None) -> DataLoader:
        workers = self.hparams.num_workers
        # Training drops the last partial batch, unless that would drop every batch: under DDP each process sees
        # only its share of the clips (rounded up, as the distributed sampler pads), and until session 12 a set
        # larger than one batch but smaller than world_size batches trained nothing at all.
        world_size = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
        share = math.ceil(len(dataset) / max(int(world_size), 1))
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=workers, drop_last=shuffle and share >= self.hparams.batch_size,
                          persistent_workers=workers > 0, pin_memory=False, generator=generator)

    def train_dataloader(self) -> DataLoader:
        # A resumed run (Lightning restores the step before building this loader) seeds the shuffling and the
        # workers' pokes and augmentation from the step: seeded from the config's seed alone, every resumed job
        # replayed the first job's clip order, pokes and augmentation (the workers' seeds are drawn when the
        # loader's iterator is made, before any training hook could reseed).
        # Under multi-process training each rank's loader is seeded by its rank as well (process_seed), so that the
        # ranks' workers do not draw the same pokes and augmentation.
        seed = process_seed(self.trainer)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        sampler = None
        if self.hparams.object_weighting:
            # Under DDP Lightning wraps this sampler and gives each rank every world_size-th of its draws: the
            # draws must be the same on every rank, so its generator is seeded without the rank.
            weights = self.train_set.object_balancing_weights()
            sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                            generator=torch.Generator().manual_seed(run_seed(self.trainer)))
        return self._loader(self.train_set, shuffle=True, sampler=sampler, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
