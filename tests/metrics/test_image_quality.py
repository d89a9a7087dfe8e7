import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from ipoke.metrics import psnr, psnr_per_frame, ssim, ssim_per_frame


def smooth_video(batch=2, frames=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch * frames, 3, size // 4, size // 4, generator=generator)
    video = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear") * 1.6 - 0.8
    return video.view(batch, frames, 3, size, size)


def test_identical_videos_give_capped_psnr_and_unit_ssim():
    video = smooth_video()
    assert torch.equal(psnr_per_frame(video, video), torch.full((2, 3), 100.0))
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
