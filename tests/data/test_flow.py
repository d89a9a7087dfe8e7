"""Flow estimation: DIS/Farneback recover a known shift, resize_flow rescales vectors, RAFT loads weights only from
disk (clear error when missing) and runs with a random-weight state dict the test saves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ipoke.data.flow import (
    RAFT_WEIGHT_FILES,
    endpoint_error,
    estimate_flow,
    make_flow_estimator,
    resize_flow,
)
from ipoke.weights import WeightsNotFoundError


def textured_pair(dx: int, dy: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two crops of a smooth random texture; the content moves by (dx, dy) from the first to the second."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (size + 40, size + 40, 3)).astype(np.float32), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    frame_a = texture[20:20 + size, 20:20 + size]
    frame_b = texture[20 - dy:20 - dy + size, 20 - dx:20 - dx + size]
    reference = np.zeros((2, size, size), np.float32)
    reference[0], reference[1] = dx, dy
    return frame_a, frame_b, reference


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_classical_flow_recovers_a_known_shift(method):
    frame_a, frame_b, reference = textured_pair(3, -2)
    flow = estimate_flow(frame_a, frame_b, method)
    assert flow.shape == (2, 64, 64) and flow.dtype == np.float32
    assert endpoint_error(flow, reference, border=8) < 0.3
    zero = estimate_flow(frame_a, frame_a, method)
    assert np.abs(zero).mean() < 0.02  # identical frames: (almost) no motion


def test_dis_finds_an_object_moving_a_third_of_the_frame_and_keeps_pans():
    # Unpadded, DIS's automatic pyramid finds motion up to about a tenth of the frame: a square moving 12 or 20 px in
    # a 64 px frame came out near zero or reversed, so poke vectors of real clips pointed against the motion.
    rng = np.random.default_rng(1)
    background = cv2.GaussianBlur((rng.random((64, 64, 3)) * 255).astype(np.uint8), (0, 0), 1.5)
    square = cv2.GaussianBlur((rng.random((20, 20, 3)) * 255).astype(np.uint8), (0, 0), 1.0) // 2 + 128
    for shift in (4, 12, 20):
        frame_a, frame_b = background.copy(), background.copy()
        frame_a[20:40, 10:30] = square
        frame_b[20:40, 10 + shift:30 + shift] = square
        inside = (slice(None), slice(25, 35), slice(15, 25))
        flow = make_flow_estimator("dis")(frame_a, frame_b)
        np.testing.assert_allclose(flow[inside].mean(axis=(1, 2)), [shift, 0], atol=0.5)
        assert np.abs(flow[:, 45:60, 40:60]).mean() < 0.1  # the background stays still
        unpadded = make_flow_estimator("dis", pad_factor=1)(frame_a, frame_b)
        assert (abs(unpadded[inside].mean(axis=(1, 2))[0] - shift) > 3) == (shift > 4)
    # A pan of the whole frame (the repeated border of the padded frames does not move) is still found.
    frame_a, frame_b, reference = textured_pair(6, 0, size=32)
    assert endpoint_error(make_flow_estimator("dis")(frame_a, frame_b), reference, border=6) < 0.3
    with pytest.raises(ValueError, match="pad_factor must be a power of two"):
        make_flow_estimator("dis", pad_factor=3)


@pytest.mark.parametrize(("seed", "speed", "lags"), [(0, 1.5, (10, 20)), (1, 2.0, (4, 10)), (2, 0.5, (3, 7))])
def test_dis_follows_a_textured_object_through_the_frames_in_between(seed, speed, lags, moving_textured_square):
    # With the same mean brightness as its background, the square is invisible to the coarse pyramid levels that
    # padding adds: the direct estimate of a 15-30 px move came out between -2 and +1.4 px. The chained estimate
    # follows it through the frames in between.
    frames, shifts = moving_textured_square(seed, speed, max(lags) + 1)
    estimator = make_flow_estimator("dis")
    flows = estimator.estimate_lags(frames, lags)
    assert flows.shape == (len(lags), 2, 64, 64) and flows.dtype == np.float32
    inside, still = (slice(25, 35), slice(10, 20)), (slice(48, 62), slice(30, 62))  # object at frame 0; background
    for flow, lag in zip(flows, lags, strict=True):
        # Over 8 scenes: 0.3 px mean error at 10-20 px (0.8 at most), 0.5 at 30 px, half the frame (1.0 at most).
        tolerance = max(0.6, 0.06 * shifts[lag])
        np.testing.assert_allclose(flow[(slice(None), *inside)].mean(axis=(1, 2)), [shifts[lag], 0], atol=tolerance)
        assert np.abs(flow[(slice(None), *still)]).mean() < 0.1
        direct = estimator(frames[0], frames[lag])
        if shifts[lag] >= 15:  # what the chain is for: the direct estimate misses the move
            assert abs(direct[(0, *inside)].mean() - shifts[lag]) > 5
    # Without the chain, estimate_lags is the direct estimate of each pair.
    unchained = make_flow_estimator("dis", chain_hop=0)
    np.testing.assert_array_equal(unchained.estimate_lags(frames, lags),
                                  np.stack([estimator(frames[0], frames[lag]) for lag in lags]))


def test_estimate_lags_rejects_lags_beyond_the_frames_and_a_bad_hop(moving_textured_square):
    frames, _ = moving_textured_square(0, 1.0, 4)
    for estimator in (make_flow_estimator("dis"), make_flow_estimator("farneback")):
        with pytest.raises(ValueError, match=r"lags must be in \[1, 3\] for 4 frames"):
            estimator.estimate_lags(frames, [4])
        with pytest.raises(ValueError, match="lags must be in"):
            estimator.estimate_lags(frames, [0])
    with pytest.raises(ValueError, match="same size"):
        make_flow_estimator("dis").estimate_lags([frames[0], frames[1][:32]], [1])
    with pytest.raises(ValueError, match="chain_hop must be a whole number >= 0"):
        make_flow_estimator("dis", chain_hop=-1)


def test_estimate_pairs_matches_single_calls_and_bad_input_is_rejected():
    frame_a, frame_b, _ = textured_pair(1, 1)
    estimator = make_flow_estimator("dis", preset="fast")
    pairs = estimator.estimate_pairs([frame_a, frame_b], [frame_b, frame_a])
    assert pairs.shape == (2, 2, 64, 64)
    np.testing.assert_allclose(pairs[0], estimator(frame_a, frame_b))
    with pytest.raises(ValueError, match="same size"):
        estimate_flow(frame_a, frame_b[:32])
    with pytest.raises(ValueError, match="flow method"):
        make_flow_estimator("flownet2")


def test_resize_flow_rescales_vectors_to_the_new_pixels():
    flow = np.zeros((2, 40, 80), np.float32)
    flow[0], flow[1] = 8.0, -4.0
    small = resize_flow(flow, (20, 20))
    assert small.shape == (2, 20, 20)
    np.testing.assert_allclose(small[0], 2.0, atol=1e-5)  # width 80 -> 20: dx / 4
    np.testing.assert_allclose(small[1], -2.0, atol=1e-5)  # height 40 -> 20: dy / 2


@pytest.fixture
def empty_weight_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "ipoke_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


def test_raft_without_weights_names_the_file_and_never_downloads(empty_weight_caches):
    with pytest.raises(WeightsNotFoundError) as caught:
        make_flow_estimator("raft", raft_model="raft_small")
    message = str(caught.value)
    assert RAFT_WEIGHT_FILES["raft_small"] in message and "dis" in message
    assert str(empty_weight_caches / "torch_home") in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        make_flow_estimator("raft", weights=empty_weight_caches / "nope.pth")


def test_raft_runs_with_a_saved_state_dict(empty_weight_caches):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = empty_weight_caches / "my_raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)
    estimator = make_flow_estimator("raft", raft_model="raft_small", weights=weights, iterations=2)
    frame_a, frame_b, _ = textured_pair(2, 1, size=64)
    flow = estimator(frame_a[:, :60], frame_b[:, :60])  # 64 x 60: enlarged to >= 128 and padded to a multiple of 8
    assert flow.shape == (2, 64, 60) and flow.dtype == np.float32 and np.isfinite(flow).all()
    pairs = estimator.estimate_pairs([frame_a, frame_b], [frame_b, frame_a])
    assert pairs.shape == (2, 2, 64, 64)
    # The same weights found in the torch hub cache under torchvision's file name.
    cache = empty_weight_caches / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / RAFT_WEIGHT_FILES["raft_small"]).write_bytes(weights.read_bytes())
    cached = make_flow_estimator("raft", raft_model="raft_small", iterations=2)
    np.testing.assert_allclose(cached(frame_a, frame_b), pairs[0], atol=1e-4)
    with pytest.raises(ValueError, match="not a state_dict"):
        make_flow_estimator("raft", raft_model="raft_large", weights=weights)


def test_prepare_stores_the_chained_flow_of_a_textured_object(tmp_path, moving_textured_square):
    # End to end: the flow `ipoke data prepare` stores (and draws the training pokes from) follows a textured object
    # 15 and 30 px; with the chain off it is the direct estimate, which loses it.
    from ipoke.data.format import PreparedDataset
    from ipoke.data.prepare import prepare_dataset

    frames, shifts = moving_textured_square(0, 1.5, 22)
    folder = tmp_path / "raw" / "square"
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    for chain_hop, out in ((5, tmp_path / "chained"), (0, tmp_path / "direct")):
        prepare_dataset(tmp_path / "raw", out, size=64, lags=(10, 20), flow_options={"chain_hop": chain_hop},
                        progress=False)
        video = PreparedDataset(out).video("square")
        assert video.flow.shape == (2, 2, 2, 64, 64)  # starts 0 and 1, lags 10 and 20
        for start in (0, 1):
            for position, lag in enumerate((10, 20)):
                shift = shifts[start + lag] - shifts[start]
                found = float(video.flow[start, position, 0, 25:35, 10 + shifts[start]:20 + shifts[start]].mean())
                if chain_hop:
                    assert abs(found - shift) < max(0.6, 0.06 * shift), (start, lag, found, shift)
                else:
                    assert abs(found - shift) > 5, (start, lag, found, shift)
