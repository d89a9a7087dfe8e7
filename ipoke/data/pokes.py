"""Pokes: sparse motion cues simulated from optical flow (pure, seeded functions).

A poke is a drag at pixel ``(x, y)`` by ``(dx, dy)`` pixels. Networks see it as a *poke map* ``(2, S, S)``: a
``poke_size x poke_size`` square centred on the pixel, filled with ``(dx, dy)``, zero elsewhere. At training and test
time pokes are simulated from the flow of the clip (x0 -> last frame), following the original iPOKE code's protocol:

1. amplitude ``A = |flow|`` inside the valid region ``[poke_size, S - poke_size)^2`` (the whole frame when nothing
   moves inside it but something moves at the border), min-max normalised; zeroed outside the foreground mask when
   one exists;
2. candidates ``A > mean + 2 std`` (fallbacks ``> mean + std``, ``> mean``);
3. ``n ~ U{1, ..., min(n_pokes, #candidates)}`` pixels drawn uniformly with replacement (``n = n_pokes`` when
   ``fixed_count``);
4. each square carries the flow vector at its centre (later pokes overwrite overlaps).

*Background pokes* (the reference's "zero pokes") teach the model that poking the background does nothing: the
poke sits on a low-motion (or masked-out) pixel and carries a vector copied from a high-motion pixel, and the clip
is made static by the caller.

Coordinates returned are rows ``(x, y, dx, dy)`` in pixels at the map's size.
"""

from __future__ import annotations

import numpy as np


def poke_map_from_coords(coords: np.ndarray, size: int, poke_size: int = 5) -> np.ndarray:
    """Render pokes as a map.

    Args:
        coords: ``(P, 4)`` rows ``(x, y, dx, dy)``; ``x, y`` are pixel coordinates (column, row) and are rounded
            down to the pixel that contains them.
        size: Map side length S.
        poke_size: Side of the square each poke fills.

    Returns:
        float32 ``(2, S, S)`` with channel 0 = dx, 1 = dy.
    """
    poke = np.zeros((2, size, size), np.float32)
    half = poke_size // 2
    for x, y, dx, dy in np.asarray(coords, np.float32).reshape(-1, 4):
        col = int(np.clip(np.floor(x), 0, size - 1))
        row = int(np.clip(np.floor(y), 0, size - 1))
        top, left = max(row - half, 0), max(col - half, 0)
        bottom, right = min(row - half + poke_size, size), min(col - half + poke_size, size)
        poke[0, top:bottom, left:right] = dx
        poke[1, top:bottom, left:right] = dy
    return poke


def _valid_region(size: int, poke_size: int) -> np.ndarray:
    valid = np.zeros((size, size), bool)
    margin = min(poke_size, size // 4)
    valid[margin:size - margin, margin:size - margin] = True
    return valid


def motion_amplitude(flow: np.ndarray, *, poke_size: int = 5, mask: np.ndarray | None = None,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Normalised motion amplitude ``(S, S)`` in [0, 1]; zero outside the valid region (``valid``, by default
    ``poke_size`` pixels in from the border) and the mask."""
    size = flow.shape[-1]
    amplitude = np.sqrt(flow[0].astype(np.float32) ** 2 + flow[1].astype(np.float32) ** 2)
    amplitude = np.where(_valid_region(size, poke_size) if valid is None else valid, amplitude, 0.0)
    low, high = amplitude.min(), amplitude.max()
    amplitude = (amplitude - low) / (high - low) if high > low else np.zeros_like(amplitude)
    if mask is not None:
        amplitude = np.where(mask.astype(bool), amplitude, 0.0)
    return amplitude


def _candidates(amplitude: np.ndarray, valid: np.ndarray) -> np.ndarray:
    values = amplitude[valid]
    mean, std = values.mean(), values.std()
    for threshold in (mean + 2 * std, mean + std, mean):
        picked = np.argwhere((amplitude > threshold) & valid)
        if len(picked):
            return picked
    # Every valid pixel moves as much as the mean: uniform motion (e.g. a camera pan), not a static clip. Without
    # this step such a clip got a background poke with a random vector.
    return np.argwhere((amplitude >= mean) & (amplitude > 0) & valid)


def sample_pokes(flow: np.ndarray, rng: np.random.Generator, *, n_pokes: int = 5, poke_size: int = 5,
                 mask: np.ndarray | None = None, fixed_count: bool = False,
                 min_amplitude: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Simulate 1..``n_pokes`` pokes at high-motion pixels of a flow field (see the module docstring).

    Args:
        flow: ``(2, S, S)`` flow from the first to the last frame, pixels at size S.
        rng: Random generator (the only source of randomness).
        n_pokes: Maximum number of pokes.
        poke_size: Side of each poke square.
        mask: Optional ``(S, S)`` foreground mask; pokes stay inside it when it has any motion.
        fixed_count: Always draw exactly ``n_pokes`` pokes.
        min_amplitude: Below this largest flow magnitude (pixels) the clip counts as static and a background
            poke is returned instead.

    Returns:
        ``(poke_map (2, S, S) float32, coords (n, 4) float32)``.
    """
    size = flow.shape[-1]
    if flow.shape != (2, size, size):
        raise ValueError(f"flow must have shape (2, S, S), got {flow.shape}")
    if n_pokes < 1:
        raise ValueError(f"n_pokes must be >= 1, got {n_pokes}")
    speed = np.sqrt((flow.astype(np.float32) ** 2).sum(0))
    if speed.max() < min_amplitude:
        return background_poke(flow, rng, poke_size=poke_size, mask=mask)
    valid = _valid_region(size, poke_size)
    if speed[valid].max() < min_amplitude:
        # Everything that moves lies within poke_size of the border (someone entering the frame): poke it there, the
        # square clipped at the border. Keeping to the valid region gave a random-direction poke on a static pixel,
        # served as an object poke of a moving clip.
        valid = np.ones_like(valid)
    amplitude = motion_amplitude(flow, poke_size=poke_size, mask=mask, valid=valid)
    if mask is not None and not (amplitude > 0).any():
        # The mask missed all the motion (e.g. a bad GrabCut): fall back to the whole valid region.
        amplitude = motion_amplitude(flow, poke_size=poke_size, valid=valid)
    picked = _candidates(amplitude, valid)
    if len(picked) == 0:
        return background_poke(flow, rng, poke_size=poke_size, mask=mask)
    count = n_pokes if fixed_count else int(rng.integers(1, min(n_pokes, len(picked)) + 1))
    rows_cols = picked[rng.integers(0, len(picked), size=count)]
    coords = np.array([[col + 0.5, row + 0.5, flow[0, row, col], flow[1, row, col]] for row, col in rows_cols],
                      np.float32)
    return poke_map_from_coords(coords, size, poke_size), coords


def background_poke(flow: np.ndarray, rng: np.random.Generator, *, poke_size: int = 5,
                    mask: np.ndarray | None = None,
                    default_magnitude: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One poke on the background carrying a realistic vector (the reference's zero-poke sample).

    The location is a pixel with amplitude below the 5th percentile, or, when there is a mask, a pixel outside it
    whose amplitude is at most the median (the reference took any pixel outside its GrabCut mask; the median bound
    keeps a background poke off parts that move but that GrabCut left out of the mask). The vector is copied
    from a pixel with amplitude above mean + std. When the flow is all zero, the vector gets a random direction and
    ``default_magnitude`` (default ``S / 16``) pixels.

    Returns:
        ``(poke_map (2, S, S) float32, coords (1, 4) float32)``.
    """
    size = flow.shape[-1]
    valid = _valid_region(size, poke_size)
    amplitude = motion_amplitude(flow, poke_size=poke_size)
    if mask is not None and (~mask.astype(bool) & valid).any():
        places = np.argwhere(~mask.astype(bool) & valid & (amplitude <= np.percentile(amplitude[valid], 50)))
    else:
        places = np.argwhere(valid & (amplitude <= np.percentile(amplitude[valid], 5)))
    if len(places) == 0:
        places = np.argwhere(valid)
    row, col = places[int(rng.integers(len(places)))]
    movers = np.argwhere(valid & (amplitude > amplitude[valid].mean() + amplitude[valid].std()))
    if len(movers):
        source_row, source_col = movers[int(rng.integers(len(movers)))]
        vector = flow[:, source_row, source_col].astype(np.float32)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        magnitude = default_magnitude if default_magnitude is not None else size / 16
        vector = np.array([np.cos(angle), np.sin(angle)], np.float32) * magnitude
    coords = np.array([[col + 0.5, row + 0.5, vector[0], vector[1]]], np.float32)
    return poke_map_from_coords(coords, size, poke_size), coords


def poke_from_flow_at(x: float, y: float, flow: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The poke ``(x, y, dx, dy)`` at position ``(x, y)`` (pixel ``i`` covers ``[i, i + 1)``) carrying the flow there.

    When ``mask`` has object pixels and the pixel at ``(x, y)`` is not one of them, the poke moves to the centre of
    the nearest object pixel first: a position recorded at another resolution (the synthetic generator places its
    pokes on a 64 px raster) can fall beside a stem one or two pixels wide, where the flow is zero.

    Args:
        x, y: Position in pixels at size S.
        flow: ``(2, S, S)`` flow of the clip.
        mask: Optional ``(S, S)`` object mask of x0.

    Returns:
        float32 ``(4,)``.
    """
    size = flow.shape[-1]
    col, row = min(max(int(np.floor(x)), 0), size - 1), min(max(int(np.floor(y)), 0), size - 1)
    if mask is not None and mask.any() and not mask[row, col]:
        rows, cols = np.nonzero(mask)
        nearest = int(np.argmin((rows - row) ** 2 + (cols - col) ** 2))
        row, col = int(rows[nearest]), int(cols[nearest])
        x, y = col + 0.5, row + 0.5
    return np.array([x, y, flow[0, row, col], flow[1, row, col]], np.float32)


def pad_coords(coords: np.ndarray, n_max: int) -> tuple[np.ndarray, int]:
    """Zero-pad ``(n, 4)`` coords to ``(n_max, 4)`` for batching; returns ``(padded, n)``."""
    padded = np.zeros((n_max, 4), np.float32)
    count = min(len(coords), n_max)
    padded[:count] = coords[:count]
    return padded, count
