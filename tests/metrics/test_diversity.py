import pytest
import torch

from ipoke.metrics import (
    DIVERSITY_LPIPS,
    DIVERSITY_MSE,
    N_SAMPLES,
    LearnedPerceptualSimilarity,
    diversity,
    pairwise_mse,
)


def test_identical_samples_have_zero_diversity():
    samples = (torch.rand(1, 4, 3, 16, 16) * 2 - 1).expand(5, -1, -1, -1, -1)
    scores = diversity(samples)
    assert scores[DIVERSITY_MSE] == 0.0 and scores[N_SAMPLES] == 5
    assert DIVERSITY_LPIPS not in scores  # no LPIPS network: reported unavailable, not made up


def test_pairwise_mse_of_known_offsets():
    base = torch.rand(1, 4, 3, 8, 8) * 0.5
    offsets = torch.tensor([0.0, 0.1, 0.3]).view(3, 1, 1, 1, 1)
    samples = base + offsets
    # Pairs: 0.1², 0.3², 0.2² -> mean 0.14 / 3.
    assert pairwise_mse(samples) == pytest.approx((0.01 + 0.09 + 0.04) / 3, rel=1e-6)


def test_first_frame_can_be_excluded():
    samples = torch.zeros(2, 3, 3, 8, 8)
    samples[1, 1:] = 0.5  # same x0, different future
    assert pairwise_mse(samples, skip_first_frame=True) == pytest.approx(0.25)
    assert pairwise_mse(samples) == pytest.approx(0.25 * 2 / 3)
    with pytest.raises(ValueError, match="leaves no frame"):  # x0 alone: it returned NaN silently
        pairwise_mse(samples[:, :1], skip_first_frame=True)


def test_lpips_diversity_with_a_stand_in_backbone(random_alexnet_path):
    model = LearnedPerceptualSimilarity.from_pretrained(backbone_path=random_alexnet_path)
    same = torch.zeros(3, 2, 3, 32, 32)
    assert diversity(same, lpips_model=model)[DIVERSITY_LPIPS] == pytest.approx(0.0, abs=1e-6)
    different = torch.rand(3, 2, 3, 32, 32) * 2 - 1
    assert diversity(different, lpips_model=model)[DIVERSITY_LPIPS] > 0


def test_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_mse(torch.zeros(1, 2, 3, 8, 8))
