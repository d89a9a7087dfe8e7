"""Augmentation moves frames, flow and masks together and rotates the flow vectors."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ipoke.data.augment import AugmentSettings, affine_matrix, augment_clip, jitter_colour, warp_clip


def test_rotation_rotates_flow_vectors():
    size = 32
    flow = np.zeros((2, size, size), np.float32)
    flow[0], flow[1] = 2.0, 0.0  # everything moves right by 2 px
    frames = np.zeros((2, size, size, 3), np.uint8)
    matrix = affine_matrix(size, 90.0, 0.0, 0.0)
    _, rotated, _ = warp_clip(frames, matrix, flow=flow)
    centre = rotated[:, 8:24, 8:24]
    # cv2's +90 degrees turns the image counter-clockwise on screen: "right" becomes "up" (negative y).
    np.testing.assert_allclose(centre[0], 0.0, atol=1e-4)
    np.testing.assert_allclose(centre[1], -2.0, atol=1e-4)


def test_warped_flow_stays_consistent_with_warped_frames():
    """Frame 1 is frame 0 shifted by a known flow; after any augmentation the flow still maps frame 0 onto 1."""
    rng = np.random.default_rng(0)
    size = 48
    texture = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 2)
    shift = np.float32([[1, 0, 2.0], [0, 1, -1.0]])
    frame1 = cv2.warpAffine(texture, shift, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    frames = np.stack([texture, frame1]).astype(np.uint8)
    flow = np.stack([np.full((size, size), 2.0), np.full((size, size), -1.0)]).astype(np.float32)
    matrix = affine_matrix(size, 25.0, 3.0, -2.0)
    warped, warped_flow, _ = warp_clip(frames, matrix, flow=flow)
    angle = math.radians(25.0)
    # Content moved by flow before the transform moves by R @ flow after it (cv2: +angle is counter-clockwise).
    expected = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]]) @ [2.0, -1.0]
    np.testing.assert_allclose(warped_flow[:, 20:28, 20:28].reshape(2, -1).mean(1), expected, atol=1e-3)
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    back = cv2.remap(warped[1].astype(np.float32), grid_x + warped_flow[0], grid_y + warped_flow[1], cv2.INTER_LINEAR)
    interior = (slice(12, 36), slice(12, 36))
    assert np.abs(back[interior] - warped[0][interior].astype(np.float32)).mean() < 3.0


def test_masks_use_nearest_and_clip_is_consistent():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    frames[:] = frames[0]
    masks = np.zeros((1, 32, 32), np.uint8)
    masks[0, 10:20, 10:20] = 7
    out_frames, out_flow, out_masks = augment_clip(frames, np.zeros((2, 32, 32), np.float32), masks, rng,
                                                   AugmentSettings(colour_probability=1.0, geometry_probability=1.0))
    assert set(np.unique(out_masks)) <= {0, 7}
    assert (out_masks == 7).sum() > 50
    # The same transform for every frame: identical inputs stay identical.
    np.testing.assert_array_equal(out_frames[0], out_frames[2])
    assert out_frames.dtype == np.uint8 and out_flow.shape == (2, 32, 32)


def test_colour_jitter_changes_colours_only():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    out = jitter_colour(frames, np.random.default_rng(4), AugmentSettings())
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frames)
