"""Data throughput: synthetic generation (videos/s) and the training loader (clips/s per core) at 64 and 128 px.

    python benchmarks/bench_data.py [--videos 64] [--clips 300]

The loader is measured in one process (one core): read from the memory-mapped prepared format, resize, augment,
simulate pokes, build tensors. Target: >= 100 clips/s per core at 64x64 with pokes and augmentation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

# Runs from a checkout without installing ipoke (the device machine has none installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipoke.data.datasets import PokeDataset  # noqa: E402
from ipoke.data.synthetic import SyntheticSettings, generate_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=64, help="videos generated per resolution")
    parser.add_argument("--clips", type=int, default=300, help="clips loaded per measurement")
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (64, 128):
            root = Path(tmp) / f"syn{size}"
            start = time.perf_counter()
            generate_dataset(root, SyntheticSettings(videos=args.videos, size=size, seed=0), workers=args.workers,
                             progress=False)
            generate_rate = args.videos / (time.perf_counter() - start)
            for augment in (False, True):
                dataset = PokeDataset(root, split="train", augment=augment)
                dataset[0]
                start = time.perf_counter()
                for index in range(args.clips):
                    dataset[index % len(dataset)]
                rate = args.clips / (time.perf_counter() - start)
                rows.append((size, augment, generate_rate, rate))
    print(f"{'size':>5} {'augment':>8} {'synth videos/s':>15} {'loader clips/s/core':>20}")
    for size, augment, generate_rate, rate in rows:
        print(f"{size:>5} {str(augment):>8} {generate_rate:>15.1f} {rate:>20.1f}")


if __name__ == "__main__":
    main()
