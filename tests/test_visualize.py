"""Overview grids: panel layout, the reference clip's border, and the arrows."""

import numpy as np
import pytest

from ipoke.visualize import REFERENCE_BORDER, draw_pokes, overview_frames


def _clips(rng, *shape):
    return rng.integers(0, 200, shape, dtype=np.uint8)  # below 255, so white gaps and red arrows stand out


def test_overview_panels_in_order_with_a_framed_reference():
    rng = np.random.default_rng(0)
    first, videos, reference = _clips(rng, 8, 8, 3), _clips(rng, 2, 3, 8, 8, 3), _clips(rng, 3, 8, 8, 3)
    pokes = np.array([[2.0, 3.0, 3.0, 0.0]])
    out = overview_frames(first, pokes, videos, reference=reference, factor=2, gap=1)
    side = 16
    assert out.shape == (3, side, 4 * (side + 1) - 1, 3)
    assert np.array_equal(out[:, :, :side], np.broadcast_to(draw_pokes(first, pokes, factor=2), (3, side, side, 3)))
    assert (out[:, :, side] == 255).all()  # the gap
    framed = out[:, :, side + 1:2 * side + 1]
    border = np.asarray(REFERENCE_BORDER, np.uint8)
    assert (framed[:, 0] == border).all() and (framed[:, :, -1] == border).all()
    upscaled = reference.repeat(2, axis=1).repeat(2, axis=2)
    assert np.array_equal(framed[:, 1:-1, 1:-1], upscaled[:, 1:-1, 1:-1])  # inside the border: the clip itself
    for k in range(2):
        left = (k + 2) * (side + 1)
        assert np.array_equal(out[:, :, left:left + side], videos[k].repeat(2, axis=1).repeat(2, axis=2))
    without = overview_frames(first, pokes, videos, factor=2, gap=1)
    assert without.shape == (3, side, 3 * (side + 1) - 1, 3)
    assert np.array_equal(without[:, :, side + 1:], out[:, :, 2 * (side + 1):])


def test_overview_refuses_a_reference_of_another_length():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="reference clip has shape"):
        overview_frames(_clips(rng, 8, 8, 3), np.zeros((1, 4)), _clips(rng, 2, 3, 8, 8, 3),
                        reference=_clips(rng, 4, 8, 8, 3))
