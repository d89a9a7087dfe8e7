"""``ipoke evaluate``: sample from a model with the papers' protocol and compute every available metric.

Protocol (the papers' evaluation; see ``docs/metrics.md``): clips of the chosen split in a fixed order, exactly one
simulated poke per clip (deterministic, seeded), ``samples`` videos per clip drawn with a fixed seed.

* ``ssim``, ``psnr``, ``lpips``: mean over all samples and all generated frames (x0 excluded) against the ground
  truth, as printed by the reference (not best-of-N).
* ``fvd``: one sample per clip, x0 included (T + 1 frames), against the ground-truth clips; reported with
  ``n_clips``. The fake set is never padded with duplicates.
* ``diversity/mse``, ``diversity/lpips``: mean pairwise distance between the samples of a clip (x0 excluded).
* ``control/*``: synthetic data only (needs object masks and exact flow): see :mod:`ipoke.metrics.control`;
  the mean over every sample of every clip.
* ``control/keypoint_error`` (metric ``keypoints``): any data with keypoints, real or synthetic. A second pass over
  the same clips with *keypoint pokes* instead (a moving joint poked with its own displacement; see
  :mod:`ipoke.data.datasets`): how far from its true end the generated video takes the joint, in pixels; clips
  without a moving joint are left out (``n_keypoint_clips`` in the settings). On real data the motion is followed
  through the generated frames (``keypoint_flow``), since real joints move beyond the direct estimate's range.

Baselines on the same clips: ``copy_x0`` (a static video) and, on synthetic data, ``ground_truth_resimulated``
(the same scene and poke simulated again with other physics: an upper bound of what a model can reach).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ipoke.data.datasets import PokeDataset, check_clip_lag, evaluation_clips, frames_to_tensor, resize_frames
from ipoke.data.format import PreparedDataset
from ipoke.metrics import (
    CONTROL_BACKGROUND_MOTION,
    CONTROL_BACKGROUND_POKE_MOTION,
    CONTROL_KEYPOINT_ERROR,
    CONTROL_OBJECT_EPE,
    CONTROL_POKE_ANGLE_DEG,
    CONTROL_POKE_EPE,
    DIVERSITY_LPIPS,
    DIVERSITY_MSE,
    FVD,
    LPIPS,
    N_CLIPS,
    N_SAMPLES,
    PSNR,
    SSIM,
    ControlAccuracy,
    FrechetVideoDistance,
    LearnedPerceptualSimilarity,
    MetricUnavailable,
    keypoint_errors,
    pairwise_lpips,
    pairwise_mse,
    psnr_per_frame,
    ssim_per_frame,
)
from ipoke.metrics.control import KEYPOINT_FLOWS
from ipoke.metrics.i3d import I3D_MIN_FRAMES
from ipoke.metrics.perceptual import LPIPS_MIN_SIZE

logger = logging.getLogger(__name__)

ALL_METRICS = ("fvd", "lpips", "ssim", "psnr", "diversity", "control", "keypoints")
BASELINE_NAMES = ("copy_x0", "ground_truth_resimulated")
CONTROL_KEYS = (CONTROL_POKE_EPE, CONTROL_POKE_ANGLE_DEG, CONTROL_OBJECT_EPE, CONTROL_BACKGROUND_MOTION,
                CONTROL_BACKGROUND_POKE_MOTION)

#: ``sampler(batch, n_samples, generators) -> (B, K, T + 1, 3, S, S)`` in [-1, 1], x0 first. ``generators`` holds one
#: seeded generator per clip of the batch (a clip's samples come from its own, so the numbers do not depend on the
#: batch size); the model samplers pass them on (:func:`ipoke.models.noise.standard_normal`).
Sampler = Callable[[dict[str, Any], int, Sequence[torch.Generator]], torch.Tensor]


def poker_sampler(poker, temperature: float = 1.0) -> Sampler:  # noqa: ANN001 - ipoke.sampling.Poker, lazy
    """A :data:`Sampler` for a trained :class:`~ipoke.sampling.Poker` (``r ~ N(0, temperature^2 I)``; 1 is the
    protocol)."""

    def sample(batch: dict[str, Any], n_samples: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return poker.sample(batch["video"][:, 0], batch["poke"], n_samples=n_samples, generator=generators,
                            temperature=temperature, n_frames=batch["video"].shape[1] - 1).cpu()

    return sample


def autoencoder_sampler(autoencoder) -> Sampler:  # noqa: ANN001 - ipoke.models.autoencoder.VideoAutoencoder
    """A :data:`Sampler` that returns the video autoencoder's reconstruction of the real clip (posterior mean), the
    same for every sample: the ceiling of any model built on this autoencoder (a diagnostic, not a baseline)."""
    device = next(autoencoder.parameters()).device

    @torch.no_grad()
    def sample(batch: dict[str, Any], n_samples: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        video = batch["video"].to(device)
        frames = autoencoder(video, sample_posterior=False).sample
        clip = torch.cat([video[:, :1], frames.to(video.dtype)], dim=1).cpu()
        return clip.unsqueeze(1).expand(-1, n_samples, -1, -1, -1, -1)

    return sample


def cvae_sampler(vae, temperature: float = 1.0) -> Sampler:  # noqa: ANN001 - ipoke.models.cvae.PokeConditionedVAE
    """A :data:`Sampler` for the cVAE baseline (prior samples ``z ~ N(0, temperature^2 I)``; 1 is the protocol)."""
    device = next(vae.parameters()).device

    def sample(batch: dict[str, Any], n_samples: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return vae.sample(batch["video"][:, 0].to(device), batch["poke"].to(device), n_samples=n_samples,
                          generator=generators, n_frames=batch["video"].shape[1] - 1,
                          temperature=temperature).cpu()

    return sample


@dataclass
class LoadedModel:
    """A trained model of any ipoke type, ready for evaluation."""

    sampler: Sampler
    size: int
    n_frames: int
    poke_size: int
    kind: str
    frame_step: int = 1


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
               temperature: float = 1.0) -> LoadedModel:
    """Load an iPOKE model (exported folder, cINN checkpoint, zoo name) or a cVAE baseline (its Lightning checkpoint
    or a ``save_pretrained`` folder) as a :class:`LoadedModel` whose sampler draws at ``temperature`` (the standard
    deviation of the cINN's residuals or of the cVAE's prior samples; 1 is the protocol)."""
    from pathlib import Path

    from ipoke.models.base import CONFIG_FILE, clip_settings, load_network, networks_of_class
    from ipoke.models.cvae import PokeConditionedVAE
    from ipoke.sampling import ModelLoadError, Poker, _check_device

    path_obj = Path(path)
    _check_device(device)  # for a cVAE too (its .to(device) raised torch's driver error)
    vae = poker = None
    clips = clip_settings({})  # a save_pretrained folder records no data settings: the data module's defaults
    if path_obj.is_dir() and (path_obj / CONFIG_FILE).exists():
        try:
            vae = load_network(path_obj, expected_class=PokeConditionedVAE, map_location="cpu")
        except TypeError as error:  # one network of an iPOKE model (e.g. <export>/cinn), not a model
            from ipoke import zoo

            try:
                registered = zoo.is_registered(str(path))
            except zoo.ZooError:
                registered = False
            if not registered:  # a folder that is no model does not hide a zoo name (Poker.from_checkpoint below)
                raise ModelLoadError(f"{error}: that folder is one network, not a model; pass the exported "
                                     "model's folder (the one holding poker.yaml), a cINN or cVAE .ckpt, or a zoo "
                                     "name") from error
    elif path_obj.is_file():
        try:
            checkpoint = torch.load(path_obj, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any file: unpickling raises ImportError, KeyError, ... as well
            checkpoint = None  # not a checkpoint: Poker.from_checkpoint below says so
        names = networks_of_class(checkpoint, PokeConditionedVAE) if isinstance(checkpoint, dict) else []
        if names:
            vae = load_network(path_obj, name=names[0], map_location="cpu", checkpoint=checkpoint)
            clips = clip_settings(checkpoint)
        elif checkpoint is not None:  # an iPOKE checkpoint: build the model from what was read, not read it again
            poker = Poker._from_loaded_checkpoint(path_obj, checkpoint, map_location=device).to(device)
    if vae is not None:
        vae = vae.to(device)
        return LoadedModel(cvae_sampler(vae, temperature), vae.spatial_size, vae.n_frames, clips["poke_size"], "cvae",
                           clips["frame_step"])
    if poker is None:
        poker = Poker.from_checkpoint(path, map_location=device)
    return LoadedModel(poker_sampler(poker, temperature), poker.size, poker.n_frames, poker.poke_size, "ipoke",
                       poker.frame_step)


def clip_generators(seed: int, first_clip: int, count: int, *, stream: int = 0) -> list[torch.Generator]:
    """One CPU generator per clip ``first_clip .. first_clip + count - 1``, seeded from ``seed``, the clip's index
    and a ``stream`` (0: the simulated-poke pass, 1: the keypoint pass), whatever the batch size."""
    # Modulo 2**64, what a generator takes: seeds above about 2.6e12 (the CLI accepts up to 2**63) overflowed.
    return [torch.Generator().manual_seed(((seed * 1_000_003 + clip) * 7 + stream) % 2**64)
            for clip in range(first_clip, first_clip + count)]


def _finite(name: str, videos: torch.Tensor, first_clip: int) -> torch.Tensor:
    """``videos`` ``(B, K, T + 1, 3, S, S)``, refused when a sample holds NaN or inf: such frames scored "n/a" (SSIM,
    PSNR), were dropped from the means, or read as black by the flow of the control metrics, whose errors then looked
    like a good model's."""
    bad = ~torch.isfinite(videos).flatten(2).all(dim=2).all(dim=1)
    if bad.any():
        clips = (torch.nonzero(bad).flatten() + first_clip).tolist()
        raise ValueError(f"the samples of {name!r} hold NaN or inf values (clips {clips[:5]}"
                         f"{' ...' if len(clips) > 5 else ''}): its metrics would be meaningless; check the model "
                         "(a diverged training run?)")
    return videos


def copy_first_frame_sampler(batch: dict[str, Any], n_samples: int,
                             generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Baseline: the start frame repeated (no motion at all)."""
    video = batch["video"]
    return video[:, :1].expand(-1, video.shape[1], -1, -1, -1).unsqueeze(1).expand(-1, n_samples, -1, -1, -1, -1)


def _resimulated_clip(scene: dict[str, Any], data_size: int, physics_seed: int, start: int, n_frames: int, step: int,
                      size: int) -> np.ndarray:
    """One re-simulated clip, uint8 ``(n_frames + 1, size, size, 3)`` (runs in a worker process)."""
    from ipoke.data.synthetic import resimulate

    frames = resimulate(scene, size=data_size, physics_seed=physics_seed, frames_only=True)["frames"]
    return resize_frames(frames[start:start + n_frames * step + 1:step], size)


class ResimulationSampler:
    """Baseline on synthetic data: each sample re-simulates the clip's scene and poke with other physics (a
    :data:`Sampler`).

    The simulations run in worker processes when there are cores for them (:func:`ipoke.utils.cpu_threads`): the
    drawing is Python-bound, so threads did not help, and one simulation at a time was most of an evaluation on a
    GPU machine. The physics seeds are drawn in the calling process first, so the videos do not depend on the
    workers. :meth:`close` (or ``with``) ends the workers; :func:`evaluate` does it.
    """

    def __init__(self, dataset: PokeDataset) -> None:
        self.dataset = dataset
        self._pool = None

    def __call__(self, batch: dict[str, Any], n_samples: int,
                 generators: Sequence[torch.Generator] | torch.Generator) -> torch.Tensor:
        from ipoke.utils import cpu_threads

        dataset = self.dataset
        if isinstance(generators, torch.Generator):  # one generator for the whole batch, drawn clip after clip
            generators = [generators] * len(batch["video_id"])
        jobs = []
        for video_id, start, generator in zip(batch["video_id"], batch["start"].tolist(), generators):
            scene = dataset.data.scene(video_id)
            if scene is None:  # a damaged synthetic dataset: resimulate failed on None with a TypeError
                from ipoke.data.format import DatasetFormatError

                raise DatasetFormatError(f"video {video_id} of {dataset.data.root} has no scene.json, which the "
                                         "re-simulated baseline needs: the dataset is damaged; delete that video's "
                                         "folder and run the same `ipoke data synth` again, which writes what is "
                                         "missing")
            jobs += [(scene, dataset.data.size, int(torch.randint(0, 2**31, (1,), generator=generator)), start,
                      dataset.n_frames, dataset.frame_step, dataset.size) for _ in range(n_samples)]
        workers = cpu_threads()
        if workers > 1 and len(jobs) > 1:
            if self._pool is None:
                from concurrent.futures import ProcessPoolExecutor

                import ipoke.data.synthetic  # noqa: F401 - imported before the fork, not by each worker
                from ipoke.utils import ignore_interrupts_in_worker

                # No cv2.setNumThreads(1) in the workers: after the parent has used OpenCV's thread pool (DIS of
                # the control metrics), that call blocks forever in a forked child.
                self._pool = ProcessPoolExecutor(max_workers=workers, initializer=ignore_interrupts_in_worker)
            clips = list(self._pool.map(_resimulated_clip, *zip(*jobs)))
        else:
            clips = [_resimulated_clip(*job) for job in jobs]
        return torch.stack([frames_to_tensor(clip) for clip in clips]).unflatten(0, (len(batch["video_id"]),
                                                                                     n_samples))

    def close(self) -> None:
        """End the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ResimulationSampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def resimulation_sampler(dataset: PokeDataset) -> ResimulationSampler | None:
    """The re-simulated ground truth of a synthetic dataset (:class:`ResimulationSampler`), or None for other data."""
    if dataset.data.index.get("source") != "synthetic":
        return None
    return ResimulationSampler(dataset)


@dataclass
class _Accumulator:
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, values: torch.Tensor | np.ndarray | float) -> None:
        if isinstance(values, torch.Tensor):  # the frame metrics come from the metric device (a GPU)
            values = values.detach().cpu()
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        array = array[np.isfinite(array)]
        self.sums[key] = self.sums.get(key, 0.0) + float(array.sum())
        self.counts[key] = self.counts.get(key, 0) + int(array.size)

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] if self.counts[key] else math.nan for key in self.sums}


def evaluate(samplers: dict[str, Sampler], data_dir: str | os.PathLike, *, split: str = "test",
             metrics: Sequence[str] = ALL_METRICS, n_clips: int = 1008, samples: int = 5, batch_size: int = 16,
             seed: int = 42, n_frames: int = 10, frame_step: int = 1, size: int | None = None, poke_size: int = 5,
             include_baselines: bool = True, device: str | torch.device | None = None,
             fvd_weights: str | None = None, lpips_backbone: str | None = None, strict: bool = False,
             keypoint_flow: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Evaluate samplers (models) and the baselines on the same clips and pokes.

    Args:
        samplers: ``{name: sampler}``; see :func:`poker_sampler`.
        data_dir: Prepared dataset.
        split: Split to evaluate on (synthetic ``test`` = novel objects).
        metrics: Subset of ``fvd, lpips, ssim, psnr, diversity, control, keypoints``.
        n_clips: Clips to use (the first ``n_clips`` in a fixed, evenly spaced order).
        samples: Samples per clip, an integer >= 1 (diversity needs >= 2).
        batch_size: Clips per batch.
        seed: Seed of the pokes and of the samples.
        n_frames, frame_step, size, poke_size: Clip settings (must match the model's training).
        include_baselines: Also evaluate ``copy_x0`` and (synthetic) ``ground_truth_resimulated``.
        device: Device for the metric networks (default: CUDA if available).
        fvd_weights, lpips_backbone: Optional weight files for I3D and LPIPS' AlexNet.
        strict: Raise when a requested metric cannot be computed at all instead of reporting it (``diversity``
            without LPIPS weights still gives ``diversity/mse``).
        keypoint_flow: How ``control/keypoint_error`` estimates the generated motion (:func:`keypoint_errors`):
            ``direct`` (DIS x0 -> last frame, as the other control metrics; motion up to about a tenth of the frame),
            ``chained`` (through the frames in between; real joints move farther) or ``auto``: ``direct`` on
            synthetic data (small motion, figures comparable across versions), ``chained`` on prepared real data.
            Recorded as ``settings.keypoint_flow``.
        progress: Show a progress bar.

    Returns:
        ``{"settings": {...}, "results": {name: {metric key: value, "n_clips", "n_samples"}},
        "unavailable": {metric: reason}}``, and with control or keypoint metrics ``"per_clip": {name: {control key:
        [value per clip, averaged over its samples (NaN where it does not apply)]}}`` and ``"per_clip_videos"``
        (the video of each clip) for paired comparisons (:func:`compare_with_baseline`).
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
    if keypoint_flow not in ("auto", *KEYPOINT_FLOWS):
        raise ValueError(f"keypoint_flow must be auto, {' or '.join(KEYPOINT_FLOWS)}, got {keypoint_flow!r}")
    # 0 failed deep in the sampling loop ("stack expects a non-empty TensorList"), 2.5 in a tensor expand.
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"samples (samples per clip) must be an integer >= 1, got {samples!r}")
    samples = int(samples)  # a numpy integer would not go into the report's JSON
    if samplers:  # the models' clip length is given: only the data can change (the message says so)
        check_clip_lag(PreparedDataset(data_dir), n_frames, frame_step, model=True)
    dataset = evaluation_clips(data_dir, split=split, size=size, n_frames=n_frames, frame_step=frame_step,
                               poke_size=poke_size, seed=seed, max_clips=n_clips)
    samplers = dict(samplers)
    if include_baselines:
        taken = sorted(set(samplers) & set(BASELINE_NAMES))
        if taken:
            raise ValueError(f"a model may not be named {taken[0]!r}: that name is a baseline's; name it otherwise "
                             "(`ipoke evaluate --name`) or leave the baselines out")
        samplers["copy_x0"] = copy_first_frame_sampler
        resim = resimulation_sampler(dataset)
        if resim is not None:
            samplers["ground_truth_resimulated"] = resim
    try:
        return _evaluate(samplers, dataset, split=split, metrics=metrics, samples=samples, batch_size=batch_size,
                         seed=seed, n_frames=n_frames, frame_step=frame_step, poke_size=poke_size, device=device,
                         fvd_weights=fvd_weights, lpips_backbone=lpips_backbone, strict=strict, progress=progress,
                         data_dir=data_dir, keypoint_flow=keypoint_flow)
    finally:
        for sampler in samplers.values():
            if isinstance(sampler, ResimulationSampler):
                sampler.close()


def _evaluate(samplers: dict[str, Sampler], dataset: PokeDataset, *, split: str, metrics: Sequence[str], samples: int,
              batch_size: int, seed: int, n_frames: int, frame_step: int, poke_size: int,
              device: str | torch.device | None, fvd_weights: str | None, lpips_backbone: str | None, strict: bool,
              progress: bool, data_dir: str | os.PathLike, keypoint_flow: str) -> dict[str, Any]:
    """:func:`evaluate` once its clips and samplers are set up."""
    from tqdm.auto import tqdm

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)

    unavailable: dict[str, str] = {}
    lpips_model = None
    if "lpips" in metrics or "diversity" in metrics:
        lpips_missing = None
        if dataset.size < LPIPS_MIN_SIZE:
            lpips_missing = (f"LPIPS (AlexNet) needs frames of at least {LPIPS_MIN_SIZE} px, these have {dataset.size} "
                             "px (the model's size, or without --ckpt the dataset's frame size)")
        else:
            try:
                lpips_model = LearnedPerceptualSimilarity.from_pretrained(backbone_path=lpips_backbone, device=device)
            except MetricUnavailable as error:
                lpips_missing = str(error)
        if lpips_missing is not None:
            # diversity/mse needs no network: a missing LPIPS costs only lpips and diversity/lpips (both are listed
            # when both were asked for).
            for key, wanted in (("lpips", "lpips"), (DIVERSITY_LPIPS, "diversity")):
                if wanted in metrics:
                    unavailable[key] = lpips_missing
    if "diversity" in metrics and samples < 2:
        unavailable["diversity"] = f"diversity compares the samples of a clip: needs --samples 2 or more, got {samples}"
    fvd_metrics: dict[str, FrechetVideoDistance] = {}
    if "fvd" in metrics and n_frames + 1 < I3D_MIN_FRAMES:
        unavailable["fvd"] = (f"FVD's I3D needs clips of at least {I3D_MIN_FRAMES} frames; these have {n_frames + 1} "
                              f"(x0 + {n_frames})")
    elif "fvd" in metrics and len(dataset) < 2:
        unavailable["fvd"] = (f"FVD compares feature covariances and needs at least 2 clips; split {split!r} gives "
                              f"{len(dataset)}")
    elif "fvd" in metrics:
        try:
            first = FrechetVideoDistance(weights_path=fvd_weights, device=device)
            fvd_metrics = {name: first if i == 0 else FrechetVideoDistance(network=first.network)
                           for i, name in enumerate(samplers)}
        except MetricUnavailable as error:
            unavailable["fvd"] = str(error)
    has_control = dataset.data.index.get("source") == "synthetic"
    generator_version = (dataset.data.index.get("settings") or {}).get("generator_version", 1) if has_control else None
    if "control" in metrics and not has_control:
        unavailable["control"] = "control accuracy needs exact ground-truth motion (synthetic datasets only)"
    elif "control" in metrics and generator_version < 6:
        logger.warning("%s was made by version %s of the synthetic generator, whose part masks do not match the plants "
                       "its frames show (up to version 4 they are about 1.2x them): control/object_epe and "
                       "control/background_motion are not comparable with figures on datasets of version 6 or later "
                       "(regenerate it with `ipoke data synth`)", data_dir, generator_version)
    split_videos = [meta for meta in dataset.data.videos if meta["split"] == split]
    if "keypoints" in metrics and not any(meta.get("has_keypoints") for meta in split_videos):
        unavailable["keypoints"] = (f"targeted keypoint accuracy needs keypoints, and no video of split {split!r} has "
                                    "any (import them with `ipoke data prepare --keypoints DIR`)")
    if strict and any(key in metrics for key in unavailable):  # a requested metric that cannot be computed at all
        raise MetricUnavailable("; ".join(f"{key}: {reason}" for key, reason in unavailable.items()))
    controls = {name: ControlAccuracy() for name in samplers} if "control" in metrics and has_control else {}
    per_clip: dict[str, dict[str, list[float]]] = {name: {key: [] for key in CONTROL_KEYS} for name in controls}
    accumulators = {name: _Accumulator() for name in samplers}

    # The simulated-poke pass serves every metric but keypoints (which samples with its own pokes below).
    main_pass = bool(set(metrics) - {"keypoints"})
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0) if main_pass else []
    real_features = None
    bar = tqdm(total=len(dataset), desc="evaluating", unit="clip", disable=not progress or not main_pass)
    for batch_index, batch in enumerate(loader):
        real = batch["video"]
        first_clip = batch_index * batch_size
        if fvd_metrics:
            real_features = next(iter(fvd_metrics.values())).features(real)
        # The frame metrics run on the metric device: on a GPU machine, SSIM on the CPU was most of an evaluation.
        real_on_device = real.to(device)
        for name, sampler in samplers.items():
            videos = _finite(name, sampler(batch, samples, clip_generators(seed, first_clip, len(real))).float(),
                             first_clip)
            accumulator = accumulators[name]
            flat_pred = videos[:, :, 1:].to(device).flatten(0, 1)
            flat_true = real_on_device[:, 1:].unsqueeze(1).expand(-1, samples, -1, -1, -1, -1).flatten(0, 1)
            if "ssim" in metrics:
                accumulator.add(SSIM, ssim_per_frame(flat_pred, flat_true))
            if "psnr" in metrics:
                accumulator.add(PSNR, psnr_per_frame(flat_pred, flat_true))  # capped at MAX_PSNR_DB
            if "lpips" in metrics and lpips_model is not None:
                accumulator.add(LPIPS, lpips_model.video_distance(flat_pred, flat_true))
            if "diversity" in metrics and samples >= 2:
                for clip in flat_pred.unflatten(0, (len(real), samples)):  # x0 is not in flat_pred
                    accumulator.add(DIVERSITY_MSE, pairwise_mse(clip))
                    if lpips_model is not None:
                        accumulator.add(DIVERSITY_LPIPS, pairwise_lpips(clip, model=lpips_model))
            if name in fvd_metrics:
                fvd_metrics[name].real.update(real_features)
                fvd_metrics[name].update(fake=videos[:, 0])
            if name in controls:
                # Every sample is scored against its clip's truth: one draw per clip is too noisy at the
                # margins that separate a model from copy_x0 (a few hundredths of a pixel).
                object_mask = batch["mask"].bool() & batch["has_mask"][:, None, None]
                per_sample = [batch["flow"], object_mask, batch["poke_coords"][:, 0], batch["background_poke"]]
                errors = controls[name].update(videos.flatten(0, 1),
                                               *(part.repeat_interleave(samples, dim=0) for part in per_sample))
                for key, values in errors.items():
                    per_clip[name][key] += _mean_over_samples(values.reshape(-1, samples)).tolist()
        bar.update(len(real))
    bar.close()
    n_keypoint_clips = None
    if keypoint_flow == "auto":
        keypoint_flow = "direct" if has_control else "chained"
    if "keypoints" in metrics and "keypoints" not in unavailable:
        n_keypoint_clips = _keypoint_pass(samplers, dataset, accumulators, per_clip, samples=samples,
                                          batch_size=batch_size, seed=seed, flow=keypoint_flow, progress=progress)
        if n_keypoint_clips == 0:  # known only now: keypoints exist, but no joint of these clips moves enough
            unavailable["keypoints"] = (
                f"no clip of split {split!r} has a joint inside the frame that moves at least "
                f"{dataset.min_keypoint_motion:g} px (at {dataset.size} px) from x0 to the last frame, so no "
                "keypoint poke could be made")
            if strict and set(metrics) == {"keypoints"}:
                raise MetricUnavailable(f"keypoints: {unavailable['keypoints']}")

    results: dict[str, dict[str, float | int]] = {}
    for name in samplers:
        row: dict[str, float | int] = dict(accumulators[name].means())
        if name in fvd_metrics:
            try:
                row[FVD] = fvd_metrics[name].compute()[FVD]
            except ValueError as error:
                unavailable["fvd"] = str(error)
        if name in controls:
            control = controls[name].compute()
            row.update({key: control[key] for key in CONTROL_KEYS})
        row[N_CLIPS] = len(dataset)
        row[N_SAMPLES] = samples
        results[name] = row
    settings = {"data_dir": str(data_dir), "split": split, "metrics": list(metrics), "n_clips": len(dataset),
                "samples": samples, "seed": seed, "n_frames": n_frames, "frame_step": frame_step,
                "size": dataset.size, "poke_size": poke_size, "n_pokes_per_clip": 1,
                **({"synthetic_generator_version": generator_version} if has_control else {}),
                "ssim_psnr_data_range": "frames in [-1, 1], data range 2 (SSIM in this convention differs from the "
                                        "[0, 1] one; see docs/metrics.md)"}
    if n_keypoint_clips is not None:
        settings["n_keypoint_clips"] = n_keypoint_clips
        settings["keypoint_flow"] = keypoint_flow
    report = {"settings": settings, "results": results, "unavailable": unavailable}
    if per_clip:
        report["per_clip"] = per_clip
        report["per_clip_videos"] = [video_id for video_id, _ in dataset.clips]
    return report


def _keypoint_pass(samplers: dict[str, Sampler], dataset: PokeDataset, accumulators: dict[str, _Accumulator],
                   per_clip: dict[str, dict[str, list[float]]], *, samples: int, batch_size: int, seed: int,
                   flow: str, progress: bool) -> int:
    """Targeted keypoint accuracy: sample the clips of ``dataset`` again with keypoint pokes; returns the clips scored.

    The clips are the same as the main pass's (same split, order and ``max_clips``); their pokes are replaced by
    keypoint pokes, and the samples are drawn from a separate seed stream.
    """
    from tqdm.auto import tqdm

    keypoint_dataset = evaluation_clips(
        dataset.data.root, split=dataset.split, size=dataset.size, n_frames=dataset.n_frames,
        frame_step=dataset.frame_step, poke_size=dataset.poke_size, seed=seed, max_clips=len(dataset),
        poke_source="keypoints")
    scored = 0
    loader = DataLoader(keypoint_dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch_index, batch in enumerate(tqdm(loader, desc="keypoint pokes", unit="batch", disable=not progress)):
        first_clip = batch_index * batch_size
        has_keypoint = batch["keypoint_poke"].numpy()
        scored += int(has_keypoint.sum())
        pokes = batch["poke_coords"][:, 0].double()
        pokes[~batch["keypoint_poke"]] = math.nan  # flow-simulated fallback pokes are not scored
        for name, sampler in samplers.items():
            videos = _finite(name, sampler(batch, samples, clip_generators(seed, first_clip, len(pokes), stream=1)
                                           ).float(), first_clip)
            errors = keypoint_errors(videos.flatten(0, 1), pokes.repeat_interleave(samples, dim=0), flow=flow)
            errors = errors.reshape(-1, samples)
            accumulators[name].add(CONTROL_KEYPOINT_ERROR, errors)
            per_clip.setdefault(name, {}).setdefault(CONTROL_KEYPOINT_ERROR, []).extend(
                _mean_over_samples(errors).tolist())
    return scored


def _mean_over_samples(values: np.ndarray) -> np.ndarray:
    """Row means of ``(clips, samples)`` ignoring NaN; NaN where a row has no value (no warning)."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    sums = np.where(finite, values, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def paired_difference(report: dict[str, Any], model: str, baseline: str, key: str) -> dict[str, float] | None:
    """Mean per-clip difference ``model - baseline`` of a control metric, with its standard error.

    Both were measured on the same clips and pokes, so the difference is paired: its standard error is much smaller
    than that of either mean. Clips cut from the same video are not independent (on real data a video gives many
    overlapping clips), so the standard error is clustered by video (``report["per_clip_videos"]``):
    ``sqrt(G / (G - 1) * sum_g (sum_{i in g} (d_i - mean d))^2) / n`` over ``n`` clips in ``G`` videos, which is
    ``std(d) / sqrt(n)`` when every clip has its own video (the synthetic data). ``None`` when the report has no
    per-clip values for them, or fewer than two videos (clips without video ids: clips) apply.

    Returns:
        ``{"difference", "standard_error", "n_clips", "n_videos"}``.
    """
    per_clip = report.get("per_clip", {})
    if key not in per_clip.get(model, {}) or key not in per_clip.get(baseline, {}):
        return None
    a = np.asarray(per_clip[model][key], dtype=np.float64)
    b = np.asarray(per_clip[baseline][key], dtype=np.float64)
    videos = report.get("per_clip_videos")
    groups = np.asarray(videos if videos is not None and len(videos) == len(a) else np.arange(len(a)))
    both = np.isfinite(a) & np.isfinite(b)
    difference, groups = a[both] - b[both], groups[both]
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1 if len(group_index) else 0
    if n_groups < 2:
        return None
    sums = np.bincount(group_index, weights=difference - difference.mean(), minlength=n_groups)
    standard_error = math.sqrt(n_groups / (n_groups - 1) * float(np.sum(sums ** 2))) / len(difference)
    return {"difference": float(difference.mean()), "standard_error": standard_error,
            "n_clips": int(len(difference)), "n_videos": n_groups}


def compare_with_baseline(report: dict[str, Any], model: str, baseline: str = "copy_x0",
                          keys: Sequence[str] = (CONTROL_POKE_EPE, CONTROL_OBJECT_EPE, CONTROL_KEYPOINT_ERROR)
                          ) -> dict[str, dict[str, Any]]:
    """Verdicts of a model against a baseline on errors where lower is better, one per key that applies.

    ``"better"`` or ``"worse"`` when the paired difference (:func:`paired_difference`) lies outside the two-sided
    95 % interval around 0, ``margin = t_{0.975, G - 1} * standard_error`` with ``G`` the independent units (videos,
    or clips), otherwise ``"no clear difference"``: at the margins that separate a short training run from a static
    video, which samples were drawn can decide the sign of the mean. (Until session 20 the margin was two standard
    errors whatever ``G``: with 3 videos, equal models were called better or worse 17 % of the time, not 5 %;
    the Student t quantile is 2.01 for 50 units, 2.26 for 10, 4.30 for 3.)

    Returns:
        ``{key: {"model", "baseline", "difference", "standard_error", "n_clips", "n_videos", "margin",
        "verdict"}}``.
    """
    from scipy import stats

    comparisons = {}
    for key in keys:
        paired = paired_difference(report, model, baseline, key)
        if paired is None:
            continue
        margin = float(stats.t.ppf(0.975, paired["n_videos"] - 1)) * paired["standard_error"]
        verdict = ("better" if paired["difference"] < -margin else "worse" if paired["difference"] > margin
                   else "no clear difference")
        comparisons[key] = {"model": report["results"][model][key], "baseline": report["results"][baseline][key],
                            **paired, "margin": margin, "verdict": verdict}
    return comparisons


def format_comparisons(report: dict[str, Any], baseline: str = "copy_x0") -> str:
    """One line per model and control error: its paired difference from ``baseline`` and the verdict."""
    lines = []
    for name in report["results"]:
        if name == baseline or name not in report.get("per_clip", {}):
            continue
        for key, c in compare_with_baseline(report, name, baseline).items():
            lines.append(f"{name} vs {baseline}, {key}: {c['difference']:+.4f} +- {c['standard_error']:.4f} px "
                         f"(paired, {clip_count_text(c)}; 95 % margin {c['margin']:.4f}): {c['verdict']}")
    return "\n".join(lines)


def clip_count_text(comparison: dict[str, Any]) -> str:
    """``"60 clips"``, or ``"40 clips of 5 videos"`` when clips share videos."""
    clips, videos = comparison["n_clips"], comparison["n_videos"]
    return f"{clips} clips" if videos == clips else f"{clips} clips of {videos} videos"


def report_to_json(report: dict[str, Any]) -> str:
    """The report as standard JSON text: a value that does not apply (NaN) is written as ``null``.

    Python's ``json`` would write a bare ``NaN`` (a poke angle of a static video, a mean over no applicable clip),
    which ``jq``, JavaScript and most other JSON readers refuse. ``json.loads`` gives ``None`` back for it, which
    :func:`paired_difference` and the tables read as "not applicable" again. Infinities are written as ``null`` too.
    """
    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(report), indent=1, allow_nan=False)


def _metric_keys(results: dict[str, dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in results.values():
        keys += [key for key in row if key not in keys and key not in (N_CLIPS, N_SAMPLES)]
    return keys


def _cell(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of ``report["results"]`` (rows: models and baselines; columns: metrics)."""
    results = report["results"]
    keys = _metric_keys(results)
    header = ["model", *keys, N_CLIPS]
    lines = [header]
    for name, row in results.items():
        cells = [name, *(_cell(row.get(key, math.nan)) for key in keys)]
        cells.append(str(row.get(N_CLIPS, "")))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines)
    if report.get("unavailable"):
        text += "\n" + "\n".join(f"unavailable: {key}: {reason}" for key, reason in report["unavailable"].items())
    return text


def markdown_table(report: dict[str, Any]) -> str:
    """The same table in Markdown."""
    results = report["results"]
    keys = _metric_keys(results)
    lines = ["| model | " + " | ".join(keys) + f" | {N_CLIPS} |", "|---" * (len(keys) + 2) + "|"]
    for name, row in results.items():
        values = [_cell(row.get(key, math.nan)) for key in keys]
        lines.append(f"| {name} | " + " | ".join(values) + f" | {row.get(N_CLIPS, '')} |")
    return "\n".join(lines)
