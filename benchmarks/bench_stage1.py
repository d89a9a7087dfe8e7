"""Stage-1 training throughput: clips/s and peak memory of the video-autoencoder step.

Times the full GAN step (generator with L1 + perceptual + KL + both GAN terms + feature matching, then both
discriminators with R1) and the generator step alone (no GAN), with the reference architecture at batch 20, for each
precision/compilation mode:

    fp32           fp32 eager, TF32 off (the baseline the original code was timed with)
    tf32           fp32 eager, TF32 matmuls/convolutions on
    bf16           bf16 autocast, eager (TF32 on for the operations autocast leaves in fp32)
    bf16+compile   bf16 autocast, torch.compile of the networks (R1's double backward stays eager)

The compiled rows run after all eager ones (a long compilation cannot cost the eager rows of a time-limited call), and
the "first step s" column is the first warm-up step, which holds the compilation.

Usage:
    python benchmarks/bench_stage1.py                                  # GPU, sizes 64 and 128, all modes
    python benchmarks/bench_stage1.py --device cpu --steps 2 --batch 2 --sizes 64 --modes fp32   # smoke check

``--perceptual vgg19`` (default) uses the real VGG19 weights when cached and random ones otherwise: timing only.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

# Runs from a checkout without installing ipoke (the device machine has none installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipoke.lightning.autoencoder import VideoAutoencoderModule  # noqa: E402
from ipoke.losses.perceptual import VGG19PerceptualLoss, build_perceptual_loss  # noqa: E402
from ipoke.models.autoencoder import VideoAutoencoder  # noqa: E402
from ipoke.models.discriminators import PatchDiscriminator2d, TemporalDiscriminator  # noqa: E402
from ipoke.weights import WeightsNotFoundError  # noqa: E402

MODES = ("fp32", "tf32", "bf16", "bf16+compile")


def build_module(size: int, perceptual: str, device: torch.device) -> VideoAutoencoderModule:
    module = VideoAutoencoderModule(VideoAutoencoder(spatial_size=size, n_frames=10, z_dim=32),
                                    PatchDiscriminator2d(), TemporalDiscriminator(), perceptual="none")
    if perceptual == "vgg19":
        try:
            module.perceptual_loss = build_perceptual_loss("vgg19")
        except WeightsNotFoundError:
            from torchvision.models import vgg19

            module.perceptual_loss = VGG19PerceptualLoss(state_dict=vgg19(weights=None).state_dict())
    else:
        module.perceptual_loss = build_perceptual_loss(perceptual)
    return module.to(device)


def run(size: int, mode: str, gan: bool, args: argparse.Namespace) -> tuple[float, float, float]:
    """Return (milliseconds per step, peak GiB, seconds of the first warm-up step) for one configuration."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"
    torch.backends.cudnn.allow_tf32 = mode != "fp32"
    torch.manual_seed(0)
    # Each configuration compiles fresh networks; on the H100 run, compiling after an earlier compiled configuration
    # in the same process failed inside Dynamo ("RuntimeError when making fake tensor call"), so start clean.
    torch._dynamo.reset()
    module = build_module(size, args.perceptual, device)
    if mode.endswith("compile"):
        for network in (module.autoencoder, module.spatial_discriminator, module.temporal_discriminator,
                        module.perceptual_loss):
            network.compile()
    optimizers = [torch.optim.Adam(n.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-5)
                  for n in (module.autoencoder, module.spatial_discriminator, module.temporal_discriminator)]
    video = torch.rand(args.batch, 11, 3, size, size, device=device) * 2 - 1
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if mode.startswith("bf16")
                else contextlib.nullcontext())
    discriminators = [module.spatial_discriminator, module.temporal_discriminator]

    def step() -> None:
        for network in discriminators:
            network.requires_grad_(False)
        with autocast:
            loss, _, reconstruction = module.generator_loss(video, gan=gan)
        optimizers[0].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[0].step()
        for network in discriminators:
            network.requires_grad_(True)
        if gan:
            with autocast:
                d_loss, _ = module.discriminator_loss(video, reconstruction)
            for optimizer in optimizers[1:]:
                optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            for optimizer in optimizers[1:]:
                optimizer.step()

    first = time.perf_counter()
    for index in range(args.warmup):
        step()
        if index == 0:
            if cuda:
                torch.cuda.synchronize()
            first = time.perf_counter() - first
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    milliseconds = (time.perf_counter() - start) / args.steps * 1000
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    return milliseconds, peak, first if args.warmup else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--perceptual", default="vgg19", choices=["vgg19", "ssim", "none"])
    parser.add_argument("--steps-kind", nargs="+", default=["gan", "generator"], choices=["gan", "generator"])
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:  # found now, not after every configuration's warm-up
        parser.error("--steps and --batch must be >= 1 and --warmup >= 0")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# stage-1 video autoencoder step, batch {args.batch}, 11-frame clips, perceptual {args.perceptual}, "
          f"device {name}, torch {torch.__version__}")
    print("| size | step | mode | ms/step | clips/s | peak GiB | speed-up vs fp32 | first step s |")
    print("|---|---|---|---|---|---|---|---|")
    configurations = [(kind, size, mode) for kind in args.steps_kind for size in args.sizes for mode in args.modes]
    configurations.sort(key=lambda configuration: configuration[2].endswith("compile"))  # stable: eager rows first
    baselines: dict[tuple[str, int], float] = {}
    for kind, size, mode in configurations:
        if mode == "tf32" and not args.device.startswith("cuda"):
            # TF32 is a CUDA setting: on a CPU this row would time the fp32 step again and call the noise between the
            # two a speed-up.
            print(f"| {size} | {kind} | tf32 | skipped: TF32 exists on CUDA GPUs only | | | | |", flush=True)
            continue
        try:
            ms, peak, first = run(size, mode, kind == "gan", args)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()  # the networks of run() are gone once it returns
        except Exception as error:  # a failing mode is reported, the others still run
            print(f"| {size} | {kind} | {mode} | failed: {type(error).__name__}: {str(error)[:80]} | | | | |",
                  flush=True)
            continue
        if mode == "fp32":
            baselines[kind, size] = ms
        baseline = baselines.get((kind, size))
        speedup = f"{baseline / ms:.2f}x" if baseline else "-"
        print(f"| {size} | {kind} | {mode} | {ms:.1f} | {args.batch / ms * 1000:.1f} | {peak:.2f} | {speedup} | "
              f"{first:.1f} |", flush=True)

if __name__ == "__main__":
    main()
