"""Seeded Gaussian noise for sampling, drawn per batch or per item of a batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: One generator for a whole draw, or one per item (clip) of the batch: see :func:`standard_normal`.
Generators = torch.Generator | Sequence[torch.Generator] | None


def standard_normal(shape: Sequence[int], generator: Generators, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``N(0, I)`` noise of ``shape``, drawn on the generator's device and moved to ``device``.

    ``generator`` may be a sequence of generators, one per item of a batch whose rows are grouped by item
    (``repeat_interleave``: item 0's samples first): each item's rows then come from its own generator, so an item's
    draw does not depend on which other items share its batch (evaluation seeds every clip, and gets the same
    numbers at any batch size).

    The numbers are always drawn in float32 and then cast to ``dtype``: torch draws another stream in float64, so a
    float64 model gave other samples than the same model in float32 for the same seed.
    """
    shape = tuple(int(n) for n in shape)
    if generator is None or isinstance(generator, torch.Generator):
        source = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=source, dtype=torch.float32)
    else:
        generators = list(generator)
        if not generators or shape[0] % len(generators):
            raise ValueError(f"{len(generators)} generators cannot split a draw of {shape[0]} rows evenly")
        rows = shape[0] // len(generators)
        noise = torch.cat([torch.randn((rows, *shape[1:]), generator=g, device=g.device, dtype=torch.float32)
                           for g in generators])
    return noise.to(device=device, dtype=dtype)


def check_generators(generator: Generators, batch: int, *, seed_hint: str = "") -> None:
    """Refuse a ``generator`` argument of a sampler that is not None, one ``torch.Generator`` or one per pair of a
    batch of ``batch`` (x0, poke) pairs: a list of another length silently shared generators between pairs, so a
    pair's draw depended on which pairs shared its batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
        raise ValueError(f"generator must be a torch.Generator, a sequence of them (one per (x0, poke) pair) or None, "
                         f"got {type(generator).__name__}{seed_hint}")
    if len(generator) != batch:
        raise ValueError(f"give one generator, or one per (x0, poke) pair: {len(generator)} generators for {batch} "
                         "pairs")


def check_temperature(temperature: float, *, of: str = "residuals") -> None:
    """Refuse a sampling temperature (the standard deviation of the drawn noise) that is negative or not finite.

    Args:
        temperature: The value to check.
        of: What the noise is, for the message ("residuals" of the cINN, "prior samples" of the cVAE).
    """
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature (the {of}' standard deviation) must be >= 0, got {temperature!r}")

