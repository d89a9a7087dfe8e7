import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ipoke.metrics import (
    CONTROL_BACKGROUND_MOTION,
    CONTROL_BACKGROUND_POKE_MOTION,
    CONTROL_OBJECT_EPE,
    CONTROL_POKE_ANGLE_DEG,
    CONTROL_POKE_EPE,
    N_CLIPS,
    ControlAccuracy,
    control_errors,
)
from ipoke.metrics.control import control_errors_from_flow

SIZE = 64
SHIFT = (3, 2)  # dx, dy of the object in pixels


def texture(seed: int, cells: int) -> torch.Tensor:
    noise = torch.rand(1, 3, cells, cells, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0].clamp(0, 1) * 1.8 - 0.9


def scene(shift: tuple[int, int]):
    """x0 and the last frame of a textured disc translated by an integer ``shift`` over a static textured background."""
    background, pattern = texture(0, 12), texture(1, 8)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    mask = (xx - 28) ** 2 + (yy - 30) ** 2 <= 12 ** 2
    first = torch.where(mask, pattern, background)
    moved_pattern = torch.roll(pattern, shifts=(shift[1], shift[0]), dims=(1, 2))
    moved_mask = torch.roll(mask, shifts=(shift[1], shift[0]), dims=(0, 1))
    last = torch.where(moved_mask, moved_pattern, background)
    return first, last, mask


def clip(last_shift: tuple[int, int], frames: int = 4):
    first, last, mask = scene(last_shift)
    video = torch.stack([first] * (frames - 1) + [last])
    return video, mask


def ground_truth(mask):
    flow = torch.zeros(2, SIZE, SIZE)
    flow[0][mask], flow[1][mask] = SHIFT[0], SHIFT[1]
    return flow


def run(videos, background_poke=False):
    mask = scene(SHIFT)[2]
    count = len(videos)
    poke = torch.tensor([[28.0, 30.0, 6.0, 4.0]]).expand(count, 4)
    return control_errors(torch.stack(videos), ground_truth(mask).expand(count, -1, -1, -1), mask.expand(count, -1, -1),
                          poke, torch.tensor(background_poke).expand(count))


def test_ground_truth_like_video_has_small_errors():
    video, _ = clip(SHIFT)
    errors = run([video])
    assert errors[CONTROL_POKE_EPE][0] < 0.5
    assert errors[CONTROL_POKE_ANGLE_DEG][0] < 8.0
    assert errors[CONTROL_OBJECT_EPE][0] < 1.0
    assert errors[CONTROL_BACKGROUND_MOTION][0] < 0.3
    assert math.isnan(errors[CONTROL_BACKGROUND_POKE_MOTION][0])


def test_static_and_reversed_videos_have_large_errors():
    static, _ = clip((0, 0))
    reversed_video, _ = clip((-SHIFT[0], -SHIFT[1]))
    errors = run([static, reversed_video])
    true_norm = math.hypot(*SHIFT)
    assert errors[CONTROL_POKE_EPE][0] == pytest.approx(true_norm, rel=0.15)  # nothing moved
    assert math.isnan(errors[CONTROL_POKE_ANGLE_DEG][0])  # no motion: no direction to measure
    assert errors[CONTROL_POKE_EPE][1] > 1.5 * true_norm  # moved the wrong way
    assert errors[CONTROL_POKE_ANGLE_DEG][1] > 150.0
    assert errors[CONTROL_OBJECT_EPE][1] > 1.5 * true_norm


def test_background_pokes_measure_any_motion():
    static, _ = clip((0, 0))
    moving, _ = clip(SHIFT)
    metric = ControlAccuracy()
    errors = metric.update(torch.stack([static, moving]), torch.zeros(2, 2, SIZE, SIZE),
                           scene(SHIFT)[2].expand(2, -1, -1), torch.tensor([[2.0, 2.0, 5.0, 0.0]] * 2),
                           torch.tensor([True, True]))
    assert errors[CONTROL_BACKGROUND_POKE_MOTION][0] < 0.1
    assert errors[CONTROL_BACKGROUND_POKE_MOTION][1] > 0.3  # the object moved although the background was poked
    assert np.isnan(errors[CONTROL_POKE_EPE]).all()
    summary = metric.compute()
    assert summary[N_CLIPS] == 2
    assert summary[CONTROL_BACKGROUND_POKE_MOTION] == pytest.approx(errors[CONTROL_BACKGROUND_POKE_MOTION].mean())
    assert math.isnan(summary[CONTROL_POKE_EPE])


def test_poke_error_is_measured_on_the_poked_part_only():
    # A 2 px wide stem moving by (3, 0) px; the estimate is exact on the stem and smears its motion over the
    # background next to it, as flow estimators do. The poke square (5x5) covers stem and background: only the stem
    # pixels count, so the error at the poke is 0 and the direction exact.
    size = 16
    mask = np.zeros((1, size, size), bool)
    mask[0, 4:12, 7:9] = True
    truth = np.zeros((1, 2, size, size), np.float32)
    truth[0, 0][mask[0]] = 3.0
    estimate = truth.copy()
    estimate[0, 0, 4:12, 5:11] = 3.0  # smeared onto two background columns each side
    poke = np.array([[7.0, 8.0, 3.0, 0.0]])
    errors = control_errors_from_flow(estimate, truth, mask, poke, np.array([False]))
    assert errors[CONTROL_POKE_EPE][0] == 0.0
    assert errors[CONTROL_POKE_ANGLE_DEG][0] == pytest.approx(0.0, abs=1e-6)
    # The whole square would have charged the smear: 15 of its 25 pixels are background moving by 3 px.
    assert np.linalg.norm(estimate - truth, axis=1)[0, 6:11, 5:10].mean() == pytest.approx(3.0 * 15 / 25)
    # A square without object pixels (a poke just off the mask) falls back to the whole square.
    off = np.array([[3.0, 8.0, 3.0, 0.0]])
    errors = control_errors_from_flow(estimate, truth, mask, off, np.array([False]))
    assert errors[CONTROL_POKE_EPE][0] == pytest.approx(3.0 * 5 / 25)  # its column 5 is smeared


def test_poke_window_is_centred_on_the_pixel_the_poke_map_fills():
    # The loaders serve pokes at pixel centres i + 0.5 and the poke map fills the square around pixel floor(x); the
    # metric's window must sit on that square. round() put it one pixel right/down whenever i was odd.
    from ipoke.data.pokes import poke_map_from_coords

    size = 16
    mask = np.ones((1, size, size), bool)
    truth = np.zeros((1, 2, size, size), np.float32)
    for x, y in ((7.5, 9.5), (8.5, 6.5)):
        poke = np.array([[x, y, 1.0, 0.0]])
        filled = poke_map_from_coords(poke, size, 5)[0] != 0  # the 5x5 square the model is given
        estimate = np.zeros_like(truth)
        estimate[0, 0][filled] = 1.0  # unit error exactly on the poked square, 0 elsewhere
        errors = control_errors_from_flow(estimate, truth, mask, poke, np.array([False]))
        assert errors[CONTROL_POKE_EPE][0] == 1.0, (x, y)


def test_keypoint_error_tracks_the_poked_joint_to_its_end():
    from ipoke.metrics import keypoint_errors

    video, _ = clip(SHIFT)
    static, _ = clip((0, 0))
    reversed_video, _ = clip((-SHIFT[0], -SHIFT[1]))
    # A "joint" inside the disc moving with it by SHIFT, at a sub-pixel position; the last row is not scored.
    pokes = torch.tensor([[27.4, 30.6, *SHIFT]] * 3 + [[27.4, 30.6, math.nan, math.nan]], dtype=torch.float64)
    errors = keypoint_errors(torch.stack([video, static, reversed_video, video]), pokes)
    true_norm = math.hypot(*SHIFT)
    assert errors[0] < 0.3 * true_norm  # the joint ends where it should
    assert errors[1] == pytest.approx(true_norm, rel=0.1)  # a static video leaves it at its start
    assert errors[2] == pytest.approx(2 * true_norm, rel=0.2)  # moved the other way
    assert math.isnan(errors[3])
    with pytest.raises(ValueError, match="2 videos but 4 keypoint pokes"):
        keypoint_errors(torch.stack([video, static]), pokes)


@pytest.mark.parametrize(("seed", "speed"), [(0, 1.5), (1, 2.0), (3, 2.5)])
def test_chained_keypoint_error_follows_a_joint_that_moves_far(seed, speed, moving_textured_square):
    """Real joints move beyond the direct DIS estimate's range (a tenth of the frame): there a perfect video scored
    nearly what a static one does. Followed through the frames in between, it scores within a pixel."""
    from ipoke.metrics import keypoint_errors

    frames, shifts = moving_textured_square(seed, speed, 11)  # a textured square on a same-brightness background
    video, shift = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1, float(shifts[-1])
    static = video[:1].expand_as(video)
    videos = torch.stack([video, static])
    pokes = torch.tensor([[15.5, 30.5, shift, 0.0]] * 2, dtype=torch.float64)  # a joint on the square
    direct = keypoint_errors(videos, pokes)
    chained = keypoint_errors(videos, pokes, flow="chained")
    assert chained[0] < 1.0 and direct[0] > 0.5 * shift  # 15-25 px: direct lost it, chained found it
    np.testing.assert_allclose([direct[1], chained[1]], shift, atol=0.05)  # a static video: the whole shift
    with pytest.raises(ValueError, match="flow must be one of direct, chained, got 'tracked'"):
        keypoint_errors(videos, pokes, flow="tracked")


def test_keypoint_error_reads_the_flow_where_the_poke_convention_puts_the_joint(monkeypatch):
    """A poke row's (x, y) counts pixel i as [i, i + 1) (the poke map's convention): the flow, sampled at pixel
    centres, is read at (x - 0.5, y - 0.5). A rotation field tells the two apart; the joint ends exactly right."""
    import ipoke.metrics.control as control

    size = 16
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)  # pixel centres
    angle, centre = 0.3, np.array([7.0, 9.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def displacement(x, y):
        offset = np.stack([x - centre[0], y - centre[1]], axis=-1)
        return offset @ rotation.T - offset

    field = displacement(xs, ys).transpose(2, 0, 1).astype(np.float32)  # (2, S, S)
    monkeypatch.setattr(control, "estimate_flow", lambda first, last: np.stack([field] * len(first)))
    joint = np.array([4.25, 11.5])  # pixel-centre coordinates
    dx, dy = displacement(*joint)
    pokes = np.array([[joint[0] + 0.5, joint[1] + 0.5, dx, dy]])
    videos = torch.zeros(1, 3, 3, size, size)
    assert control.keypoint_errors(videos, pokes)[0] == pytest.approx(0.0, abs=1e-5)
    # Read at the poke's own (x, y) instead, the rotation would make it miss by |(R - I)(0.5, 0.5)|.
    missed = np.linalg.norm((rotation - np.eye(2)) @ [0.5, 0.5])
    shifted = np.array([[joint[0] + 1.0, joint[1] + 1.0, dx, dy]])
    assert control.keypoint_errors(videos, shifted)[0] == pytest.approx(missed, rel=1e-4)


def test_annotations_that_do_not_fit_the_videos_are_refused():
    # Two videos against three clips' annotations were scored against the first two silently; (N, 1, 4) pokes (a
    # dataset's poke_coords) failed with a TypeError; floats in [0, 255] made every frame white: a static score.
    video, mask = clip(SHIFT)
    videos = torch.stack([video, video])
    flow, masks = ground_truth(mask).expand(3, -1, -1, -1), mask.expand(3, -1, -1)
    poke = torch.tensor([[28.0, 30.0, 6.0, 4.0]]).expand(3, 4)
    with pytest.raises(ValueError, match=r"do not fit 2 videos of 64x64: true_flow \(3, 2, 64, 64\)"):
        control_errors(videos, flow, masks, poke, torch.zeros(3, dtype=torch.bool))
    nested = control_errors(videos, flow[:2], masks[:2], poke[:2, None], torch.zeros(2, dtype=torch.bool))
    flat = control_errors(videos, flow[:2], masks[:2], poke[:2], torch.zeros(2, dtype=torch.bool))
    np.testing.assert_array_equal(nested[CONTROL_OBJECT_EPE], flat[CONTROL_OBJECT_EPE])
    with pytest.raises(ValueError, match="float videos must be in \\[-1, 1\\]"):
        control_errors((videos + 1) * 127.5, flow[:2], masks[:2], poke[:2], torch.zeros(2, dtype=torch.bool))
    # A numpy view with negative strides (here: time reversed) works like its copy.
    array = videos.numpy()[:, ::-1]
    np.testing.assert_array_equal(
        control_errors(array, flow[:2], masks[:2], poke[:2], np.zeros(2, bool))[CONTROL_OBJECT_EPE],
        control_errors(array.copy(), flow[:2], masks[:2], poke[:2], np.zeros(2, bool))[CONTROL_OBJECT_EPE])


def test_tensors_that_require_grad_are_scored_and_x0_alone_is_refused():
    # The control metrics called .numpy() on the graph (every other metric accepted such tensors), and a one-frame
    # "video" was scored as a static one (x0 against itself) instead of being refused.
    from ipoke.metrics import keypoint_errors

    video, mask = clip(SHIFT)
    videos = torch.stack([video])
    flow, masks, poke = ground_truth(mask)[None], mask[None], torch.tensor([[28.0, 30.0, 6.0, 4.0]])
    background = torch.zeros(1, dtype=torch.bool)
    plain = control_errors(videos, flow, masks, poke, background)
    tracked = control_errors(videos.clone().requires_grad_(), flow, masks, poke, background)
    for key in plain:
        np.testing.assert_array_equal(tracked[key], plain[key])
    for method in ("direct", "chained"):
        np.testing.assert_array_equal(keypoint_errors(videos.clone().requires_grad_(), poke, flow=method),
                                      keypoint_errors(videos, poke, flow=method))
        with pytest.raises(ValueError, match="at least 2 frames .* got 1"):
            keypoint_errors(videos[:, :1], poke, flow=method)
    with pytest.raises(ValueError, match="at least 2 frames .* got 1"):
        control_errors(videos[:, :1], flow, masks, poke, background)


def test_estimate_flow_is_the_same_in_threads_and_finds_a_translation(monkeypatch):
    from ipoke.metrics.control import estimate_flow

    first = torch.stack([texture(seed, 12) for seed in range(5)])
    last = torch.roll(first, shifts=(2, 3), dims=(2, 3))  # every frame moves dy = 2, dx = 3 (wrapping at the border)
    flows = {}
    for threads in (1, 3):
        monkeypatch.setattr("ipoke.utils.cpu_threads", lambda limit=8, threads=threads: threads)
        flows[threads] = estimate_flow(first, last)
    assert flows[1].shape == (5, 2, SIZE, SIZE) and np.array_equal(flows[1], flows[3])
    interior = flows[1][:, :, 16:48, 16:48]
    assert np.abs(interior[:, 0] - 3).mean() < 0.2 and np.abs(interior[:, 1] - 2).mean() < 0.2
    assert estimate_flow(first[:0], last[:0]).shape == (0, 2, SIZE, SIZE)
    with pytest.raises(ValueError, match="same number"):
        estimate_flow(first, last[:2])
