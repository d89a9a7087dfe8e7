"""Poke simulation from flow: where pokes land, what they carry, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from ipoke.data.pokes import (
    background_poke,
    pad_coords,
    poke_from_flow_at,
    poke_map_from_coords,
    sample_pokes,
)


def _blob_flow(size=32, centre=(20, 12), vector=(3.0, -2.0)):
    flow = np.zeros((2, size, size), np.float32)
    x0, y0 = centre
    flow[0, y0 - 3:y0 + 3, x0 - 3:x0 + 3] = vector[0]
    flow[1, y0 - 3:y0 + 3, x0 - 3:x0 + 3] = vector[1]
    return flow


def test_poke_map_fills_square_with_vector():
    poke = poke_map_from_coords(np.array([[10.5, 7.5, 2.0, -1.0]]), 16, poke_size=5)
    assert poke.shape == (2, 16, 16)
    assert (poke[0, 5:10, 8:13] == 2.0).all() and (poke[1, 5:10, 8:13] == -1.0).all()
    assert (poke[:, :5] == 0).all() and (poke[:, 10:] == 0).all() and (poke[:, :, 13:] == 0).all()
    assert np.count_nonzero(poke[0]) == 25
    # Squares at the border are clipped, not wrapped.
    edge = poke_map_from_coords(np.array([[0.0, 0.0, 1.0, 1.0]]), 16, poke_size=5)
    assert np.count_nonzero(edge[0]) == 9 and edge[0, 15, 15] == 0


def test_pokes_land_on_moving_pixels_and_carry_their_flow():
    flow = _blob_flow()
    for seed in range(20):
        poke, coords = sample_pokes(flow, np.random.default_rng(seed), n_pokes=5, poke_size=3)
        assert 1 <= len(coords) <= 5
        for x, y, dx, dy in coords:
            assert 17 <= x < 23 and 9 <= y < 15
            assert (dx, dy) == (3.0, -2.0)
        assert np.abs(poke).sum() > 0


def test_sampling_is_deterministic_for_a_seed_and_varies_across_seeds():
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(2, 32, 32)).astype(np.float32)
    a = sample_pokes(flow, np.random.default_rng(7))[1]
    b = sample_pokes(flow, np.random.default_rng(7))[1]
    np.testing.assert_array_equal(a, b)
    others = [sample_pokes(flow, np.random.default_rng(s))[1] for s in range(8, 14)]
    assert any(o.shape != a.shape or not np.array_equal(o, a) for o in others)


def test_fixed_count_and_mask():
    flow = np.zeros((2, 32, 32), np.float32)
    flow[:, 8:14, 8:14] = 5.0  # strongest motion, outside the mask
    flow[:, 20:26, 20:26] = 1.0
    mask = np.zeros((32, 32), bool)
    mask[18:28, 18:28] = True
    _, coords = sample_pokes(flow, np.random.default_rng(0), n_pokes=3, mask=mask, fixed_count=True)
    assert len(coords) == 3
    assert all(20 <= x < 26 and 20 <= y < 26 for x, y, _, _ in coords)


def test_static_flow_gives_background_poke():
    _, coords = sample_pokes(np.zeros((2, 32, 32), np.float32), np.random.default_rng(0))
    assert coords.shape == (1, 4) and np.hypot(coords[0, 2], coords[0, 3]) == pytest.approx(2.0)


def test_background_poke_sits_still_and_carries_real_motion():
    flow = _blob_flow()
    for seed in range(10):
        _, coords = background_poke(flow, np.random.default_rng(seed), poke_size=3)
        x, y, dx, dy = coords[0]
        assert flow[:, int(y), int(x)].tolist() == [0.0, 0.0]
        assert (dx, dy) == (3.0, -2.0)


def test_uniform_motion_is_poked_with_its_own_vector():
    # A clip whose flow is the same everywhere (a pan) moves: it got a background poke with a random vector.
    flow = np.zeros((2, 32, 32), np.float32)
    flow[0] = 3.0
    for seed in range(5):
        _, coords = sample_pokes(flow, np.random.default_rng(seed), n_pokes=3)
        assert len(coords) >= 1
        np.testing.assert_array_equal(coords[:, 2:], np.tile([3.0, 0.0], (len(coords), 1)))


def test_motion_only_at_the_border_is_poked_where_it_moves():
    # Only the 4 right-most columns move (someone entering the frame), inside the poke_size margin. The poke went
    # to a static pixel with a random vector and was served as an object poke of a moving clip.
    flow = np.zeros((2, 64, 64), np.float32)
    flow[0, :, 60:] = 3.0
    for seed in range(5):
        poke, coords = sample_pokes(flow, np.random.default_rng(seed), n_pokes=3, poke_size=5)
        assert len(coords) >= 1 and (coords[:, 0] >= 60).all()
        np.testing.assert_array_equal(coords[:, 2:], np.tile([3.0, 0.0], (len(coords), 1)))
        assert poke.shape == (2, 64, 64) and poke[0].max() == 3.0


def test_poke_from_flow_at_moves_onto_the_nearest_object_pixel():
    flow = np.zeros((2, 8, 8), np.float32)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 5] = True
    flow[:, 2:6, 5] = np.array([1.0, -2.0])[:, None]
    np.testing.assert_array_equal(poke_from_flow_at(3.2, 4.7, flow, mask), [5.5, 4.5, 1.0, -2.0])
    np.testing.assert_allclose(poke_from_flow_at(5.2, 2.9, flow, mask), [5.2, 2.9, 1.0, -2.0])  # on it: kept
    np.testing.assert_allclose(poke_from_flow_at(3.2, 4.7, flow), [3.2, 4.7, 0.0, 0.0])  # no mask: as given


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        sample_pokes(np.zeros((32, 32)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_pokes"):
        sample_pokes(np.zeros((2, 8, 8)), np.random.default_rng(0), n_pokes=0)


def test_pad_coords():
    padded, count = pad_coords(np.ones((2, 4), np.float32), 5)
    assert count == 2 and padded.shape == (5, 4) and padded[2:].sum() == 0 and padded[:2].sum() == 8
