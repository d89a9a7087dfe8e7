"""Latency of a trained model answering a poke, as the interactive app serves it.

Times one ``POST /api/poke`` of ``ipoke app`` without the HTTP layer (``PokeApp.poke``): the sampling the app reports
(building the poke map, ``Poker.sample``, copying the videos to the CPU, which synchronises CUDA) and the whole answer
with the GIFs the page plays. Median and 90th percentile over ``--repeats`` requests after ``--warmup`` ones, each
request with a new seed.

    python benchmarks/bench_poker.py --model quickstart/model                   # CUDA when there is one
    python benchmarks/bench_poker.py --model quickstart/model --device cpu --samples 1 3
    python benchmarks/bench_poker.py --model quickstart/model --json poker.json

The start frame is random noise at the model's size: the networks cost the same whatever the pixels show.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure(app, *, samples: int, repeats: int, warmup: int) -> dict[str, float]:  # noqa: ANN001
    """Milliseconds per ``/api/poke`` request for ``samples`` videos: sampling alone (the figure the app reports) and
    the whole answer with its GIFs (median and p90)."""
    size = app.size
    sampling, total = [], []
    for request in range(warmup + repeats):
        body = {"image": 0, "pokes": [[size / 2, size / 2, size / 8, 0.0]], "seed": request, "samples": samples}
        start = time.perf_counter()
        answer = app.poke(body)  # sampling ends with .cpu(): synchronised
        done = time.perf_counter()
        if request >= warmup:
            sampling.append(answer["milliseconds"])
            total.append((done - start) * 1000)
    return {"samples": samples, "sample_ms": statistics.median(sampling), "sample_p90_ms": _percentile(sampling, 0.9),
            "with_gifs_ms": statistics.median(total), "with_gifs_p90_ms": _percentile(total, 0.9)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an exported model folder (or a registered name)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 3, 16], help="videos per poke (default 1 3 16)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or any(not 1 <= k <= 16 for k in args.samples):
        parser.error("--repeats must be >= 1, --warmup >= 0 and --samples in [1, 16] (the app's range)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    from ipoke.app import PokeApp
    from ipoke.sampling import Poker

    poker = Poker.from_checkpoint(args.model, map_location=device)
    image = np.random.default_rng(0).integers(0, 256, (poker.size, poker.size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as out:
        app = PokeApp(poker, [image], out=out)
        rows = [measure(app, samples=k, repeats=args.repeats, warmup=args.warmup) for k in args.samples]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.model}: {poker.size} px, {poker.n_frames} frames, {device} ({name}), torch {torch.__version__}, "
          f"median (p90) of {args.repeats} requests")
    print("| videos per poke | sampling ms | sampling + GIFs ms |")
    print("|---:|---:|---:|")
    for row in rows:
        print(f"| {row['samples']} | {row['sample_ms']:.1f} ({row['sample_p90_ms']:.1f}) | "
              f"{row['with_gifs_ms']:.1f} ({row['with_gifs_p90_ms']:.1f}) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
