"""The ``ipoke`` command.

``ipoke fit|validate|test|predict`` are Lightning's CLI (``--config configs/<stage>/<name>.yaml``, dotted overrides
such as ``--trainer.max_epochs 3``); every other subcommand is listed by ``ipoke --help`` and documents its options in
``ipoke <command> --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

LIGHTNING_COMMANDS = {
    "fit": "train a model from a YAML config (Lightning CLI; see `ipoke fit --help`)",
    "validate": "run validation of a config/checkpoint (Lightning CLI)",
    "test": "run the test loop of a config/checkpoint (Lightning CLI)",
    "predict": "run the predict loop (Lightning CLI)",
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def run_lightning(argv: Sequence[str]) -> int:
    """Run LightningCLI on ``argv`` (``["fit", "--config", ...]``)."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
             args=list(argv), save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "ipoke"})
    return 0


# ------------------------------------------------------------------------------------------------------------------
# ipoke data ...


def _add_data_commands(subparsers: argparse._SubParsersAction) -> None:
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
    synth.add_argument("--videos", type=int, default=4000, help="total number of videos over all splits (default "
                                                                "4000)")
    synth.add_argument("--frames", type=int, default=10, help="future frames T per video; a video has T+1 frames "
                                                              "(default 10)")
    synth.add_argument("--size", type=int, default=64, help="frame side in pixels, e.g. 64 or 128 (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="parallel processes (default: all CPU cores); the result does not depend on it")
    synth.add_argument("--val-fraction", type=float, default=0.05,
                       help="fraction of videos in the 'val' split (same distribution as train; default 0.05)")
    synth.add_argument("--test-fraction", type=float, default=0.1,
                       help="fraction of videos in the held-out 'test' split, which uses plant species and "
                            "backgrounds never seen in training (default 0.1)")
    synth.add_argument("--background-poke-fraction", type=float, default=1 / 12,
                       help="fraction of videos whose poke hits the background (nothing moves; default 1/12)")
    synth.set_defaults(handler=_run_synth)

    try:
        from ipoke.data.prepare import add_prepare_arguments, run_prepare
    except ImportError:  # pragma: no cover - only while the module is missing
        pass
    else:
        prepare = data_commands.add_parser(
            "prepare", help="turn your own videos into a prepared dataset (frames, optical flow, masks, splits)",
            description="Read every video file (mp4/mkv/avi/webm) and folder of frames under --videos, extract "
                        "frames, compute optical flow at the given lags, optional foreground masks, and write the "
                        "prepared format with a train/test split. Parallel, resumable.")
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

    settings = SyntheticSettings(videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
                                 val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                 background_poke_fraction=args.background_poke_fraction)
    root = generate_dataset(args.out, settings, workers=max(1, args.workers))
    _run_info(argparse.Namespace(root=str(root)))
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from ipoke.data.format import PreparedDataset

    data = PreparedDataset(args.root)
    splits = ", ".join(f"{name}: {count}" for name, count in sorted(data.splits().items()))
    print(f"{data.root}: {len(data)} videos ({splits}), {data.size}x{data.size} px, flow lags {data.flow_lags}, "
          f"source {data.index.get('source')}")
    return 0


def _run_index(args: argparse.Namespace) -> int:
    from ipoke.data.format import write_index

    index = write_index(args.root)
    print(f"{args.root}: index rebuilt with {len(index['videos'])} videos")
    return 0


# ------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (Lightning subcommands are listed here but parsed by LightningCLI)."""
    parser = argparse.ArgumentParser(
        prog="ipoke", description="Poke a still image, get plausible diverse videos of how the object moves.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in LIGHTNING_COMMANDS.items():
        subparsers.add_parser(name, help=text, add_help=False)
    _add_data_commands(subparsers)
    for register in EXTRA_COMMANDS:
        register(subparsers)
    return parser


# Other modules add their subcommands here: each entry takes the subparsers object and registers a parser with
# ``set_defaults(handler=...)``.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ipoke`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_lightning(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from ipoke.data.format import DatasetFormatError

    try:
        return int(args.handler(args) or 0)
    except (UserError, DatasetFormatError, FileNotFoundError) as error:
        print(f"ipoke: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
