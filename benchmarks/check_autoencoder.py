"""Train the quickstart's video autoencoder alone for a fixed time and report its held-out reconstructions.

A quick check of stage 1 (e.g. of a preset on a lent GPU) without the rest of the quickstart: the reconstructions
(posterior mean) are the ceiling any iPOKE sample can reach, compared with copying x0 and the re-simulated truth.

    python benchmarks/check_autoencoder.py --out /tmp/ae_check --seconds 150 --videos 2000 --preset gpu

``--perceptual`` swaps the perceptual term (``ssim``, the quickstart's; ``i3d``; ``vgg19`` when its weights are
cached; ``none``) to compare the options on held-out reconstructions for the same training time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# Runs from a checkout without installing ipoke (the device machine has none installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--perceptual", choices=("ssim", "i3d", "vgg19", "none"), default="ssim")
    args = parser.parse_args()
    if args.perceptual in ("vgg19", "i3d"):  # missing weights fail now, not after generating the dataset
        from ipoke.losses.perceptual import build_perceptual_loss

        try:
            build_perceptual_loss(args.perceptual)
        except (FileNotFoundError, OSError, ValueError) as error:
            parser.error(f"--perceptual {args.perceptual}: {error}")

    import lightning as L

    from ipoke import quickstart
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset
    from ipoke.evaluation import autoencoder_sampler, evaluate, format_table

    out = Path(args.out)
    settings = quickstart.GPU_SETTINGS if args.preset == "gpu" else quickstart.CPU_SETTINGS
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    L.seed_everything(0, verbose=False)
    generation_workers, num_workers = quickstart._worker_counts(accelerator == "gpu")
    data_dir = generate_dataset(out / "data", SyntheticSettings(
        videos=args.videos, frames=settings.n_frames * settings.frame_step, size=settings.size, seed=0),
        workers=generation_workers)
    network, module = quickstart._build_stage("autoencoder", settings, out / "runs",
                                                perceptual=args.perceptual)
    trainer = quickstart._trainer(root=out / "runs" / "autoencoder", seconds=args.seconds, accelerator=accelerator)
    start = time.perf_counter()
    trainer.fit(module, datamodule=quickstart._datamodule(data_dir, settings, num_workers, "autoencoder"))
    seconds = time.perf_counter() - start  # measured: the trainer's time limit is at least 5 s whatever was asked
    print(f"trained {trainer.global_step} steps of batch {settings.batch_size} in {seconds:.0f} s (asked for "
          f"{args.seconds:g} s)")
    network = network.eval().to("cuda" if accelerator == "gpu" else "cpu")

    report = evaluate({"autoencoder_reconstruction": autoencoder_sampler(network)}, data_dir, split="test",
                      metrics=("ssim", "psnr", "control"), n_clips=args.clips, samples=1, batch_size=16,
                      n_frames=settings.n_frames, frame_step=settings.frame_step, size=settings.size, progress=False)
    print(format_table(report))
    (out / "report.json").write_text(json.dumps({"steps": trainer.global_step, "training_seconds": seconds,
                                                 "settings": vars(args),
                                                 "report": report}, indent=1))


if __name__ == "__main__":
    main()
