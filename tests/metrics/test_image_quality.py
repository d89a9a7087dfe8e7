import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from ipoke.metrics import psnr, psnr_per_frame, ssim, ssim_per_frame
from ipoke.metrics.image_quality import MAX_PSNR_DB


def smooth_video(batch=2, frames=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch * frames, 3, size // 4, size // 4, generator=generator)
    video = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear") * 1.6 - 0.8
    return video.view(batch, frames, 3, size, size)


def test_identical_videos_give_capped_psnr_and_unit_ssim():
    video = smooth_video()
    # Capped at the PSNR of 8-bit rounding noise (one uint8 step, 2 / 255, uniform: MSE step² / 12), not inf.
    cap = 10 * math.log10(2.0 ** 2 / ((2 / 255) ** 2 / 12))
    assert MAX_PSNR_DB == pytest.approx(cap) == pytest.approx(58.92, abs=0.01)
    assert torch.equal(psnr_per_frame(video, video), torch.full((2, 3), MAX_PSNR_DB, dtype=torch.float32))
    rounded = (video + 1) * 127.5  # frames that differ by 8-bit rounding alone score at most the cap
    assert psnr_per_frame(torch.round(rounded) / 127.5 - 1, video).max() <= MAX_PSNR_DB
    assert psnr_per_frame(torch.round(rounded) / 127.5 - 1, video).min() > MAX_PSNR_DB - 1
    torch.testing.assert_close(ssim_per_frame(video, video), torch.ones(2, 3))


def test_known_noise_gives_the_analytic_psnr():
    video = smooth_video()
    signs = torch.randint(0, 2, video.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noisy = video + 0.1 * signs  # MSE exactly 0.01 in [-1, 1] units
    expected = 10 * math.log10(2.0 ** 2 / 0.01)
    torch.testing.assert_close(psnr_per_frame(noisy, video), torch.full((2, 3), expected))
    # Per frame: different noise levels per frame give their own values.
    scaled = video + 0.1 * signs * torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1, 1)
    per_frame = psnr_per_frame(scaled, video)[0]
    expected_frames = [expected, expected - 20 * math.log10(2), expected - 20 * math.log10(4)]
    torch.testing.assert_close(per_frame, torch.tensor(expected_frames))
    assert psnr(noisy, video) == pytest.approx(expected, rel=1e-6)


def test_uint8_inputs_match_the_float_convention():
    video = torch.randint(0, 256, (1, 2, 3, 16, 16), dtype=torch.uint8)
    other = torch.randint(0, 256, (1, 2, 3, 16, 16), dtype=torch.uint8)
    unit = psnr_per_frame(video.float() / 127.5 - 1, other.float() / 127.5 - 1)
    torch.testing.assert_close(psnr_per_frame(video, other), unit)
    # Same value as the [0, 255] convention with data range 255.
    mse = ((video.double() - other.double()) ** 2).mean(dim=(2, 3, 4))
    torch.testing.assert_close(psnr_per_frame(video, other), (10 * torch.log10(255.0 ** 2 / mse)).float())


def test_ssim_matches_skimage_gaussian_reference():
    target = smooth_video(batch=1, frames=2, seed=2)
    prediction = (target + 0.15 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    ours = ssim_per_frame(prediction, target)
    for frame in range(2):
        reference = structural_similarity(
            prediction[0, frame].numpy().astype(np.float64), target[0, frame].numpy().astype(np.float64),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0, channel_axis=0)
        assert float(ours[0, frame]) == pytest.approx(reference, abs=1e-5)
    assert 0.2 < ssim(prediction, target) < 0.95


def test_rejects_frames_smaller_than_the_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim_per_frame(torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 1, 3, 8, 8))


def test_ssim_value_range_zero_one_matches_skimage_and_differs_from_the_ipoke_convention():
    # SSIM is not shift-invariant: the [0, 1] convention is its own number, and both must match scikit-image.
    target = smooth_video(batch=1, frames=2, size=24, seed=4)[..., :20]  # non-square frames (24 x 20)
    prediction = (target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    zero_one = ssim_per_frame(prediction, target, value_range=(0, 1))
    minus_one_one = ssim_per_frame(prediction, target)
    for frame in range(2):
        p, t = (v[0, frame].numpy().astype(np.float64) for v in (prediction, target))
        for ours, (lo, hi) in ((zero_one, (0.0, 1.0)), (minus_one_one, (-1.0, 1.0))):
            scale, offset = (hi - lo) / 2, (hi + lo) / 2
            reference = structural_similarity(p * scale + offset, t * scale + offset, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False, data_range=hi - lo,
                                              channel_axis=0)
            assert float(ours[0, frame]) == pytest.approx(reference, abs=1e-6)
    assert (zero_one > minus_one_one + 0.01).all()
    # The figures the docs quote (image_quality.py, docs/metrics.md): the conventions differ in either direction.
    frame = smooth_video(batch=1, frames=1, size=32, seed=4)
    noisy = (frame + 0.2 * torch.randn(frame.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    dark = frame * 0.1 - 0.9
    for prediction, target, ipoke_value, zero_one_value in ((noisy, frame, 0.566, 0.632), (dark + 0.1, dark, 0.993,
                                                                                            0.804)):
        assert float(ssim_per_frame(prediction, target)) == pytest.approx(ipoke_value, abs=5e-4)
        assert float(ssim_per_frame(prediction, target, value_range=(0, 1))) == pytest.approx(zero_one_value, abs=5e-4)
    with pytest.raises(ValueError, match="value_range"):
        ssim_per_frame(prediction, target, value_range=(1, 0))


def test_ssim_in_chunks_equals_frame_by_frame(monkeypatch):
    import ipoke.metrics.image_quality as image_quality

    target = smooth_video(batch=1, frames=7, size=16, seed=6)
    prediction = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(7))).clamp(-1, 1)
    whole = ssim_per_frame(prediction, target)
    monkeypatch.setattr(image_quality, "_SSIM_CHUNK_FRAMES", 3)  # 7 frames: chunks of 3, 3 and 1
    chunked = ssim_per_frame(prediction, target)
    one_by_one = torch.stack([ssim_per_frame(prediction[:, i], target[:, i]) for i in range(7)], dim=1)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-7)
    torch.testing.assert_close(one_by_one, whole, rtol=0, atol=1e-7)
    assert ssim_per_frame(prediction[:0], target[:0]).shape == (0, 7)
