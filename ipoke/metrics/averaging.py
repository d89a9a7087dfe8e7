"""Batch-by-batch averaging of per-item metric values (ignoring NaN, counting what was averaged)."""

from __future__ import annotations

import math

import numpy as np
import torch


class MeanAccumulator:
    """Running means of named per-item values, e.g. per-frame PSNR or per-clip control errors.

    NaN entries (a metric that does not apply to an item) are skipped, and each key keeps its own count, so
    :meth:`compute` can report how many items stand behind every mean.

        averages = MeanAccumulator()
        averages.update({"psnr": psnr_per_frame(fake, real), "ssim": ssim_per_frame(fake, real)})
        averages.compute()        # {"psnr": 27.1, "ssim": 0.83}
        averages.counts           # {"psnr": 5000, "ssim": 5000}
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def update(self, values: dict[str, torch.Tensor | np.ndarray | float]) -> None:
        """Add the finite-or-inf (non-NaN) entries of each value array (any shape) to its key's running sum."""
        for key, value in values.items():
            array = value.detach().double().cpu().numpy() if isinstance(value, torch.Tensor) \
                else np.asarray(value, dtype=np.float64)
            array = array[~np.isnan(array)]
            self.sums[key] = self.sums.get(key, 0.0) + float(array.sum())
            self.counts[key] = self.counts.get(key, 0) + int(array.size)

    def compute(self) -> dict[str, float]:
        """Mean per key (NaN for keys that never received a value)."""
        return {key: self.sums[key] / self.counts[key] if self.counts[key] else math.nan for key in self.sums}
