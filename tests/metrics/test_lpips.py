"""LPIPS pipeline tests with a STAND-IN random AlexNet backbone (the numbers are not LPIPS, only the plumbing)."""

import lpips
import pytest
import torch

from ipoke.metrics import LearnedPerceptualSimilarity, MetricUnavailable, lpips_per_frame


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # lpips' own torchvision call
def test_backbone_and_heads_are_loaded_through_the_real_path(random_alexnet_path):
    model = LearnedPerceptualSimilarity.from_pretrained(backbone_path=random_alexnet_path)
    saved = torch.load(random_alexnet_path, weights_only=True)
    torch.testing.assert_close(model.network.net.slice1._modules["0"].weight, saved["features.0.weight"])
    torch.testing.assert_close(model.network.net.slice5._modules["10"].bias, saved["features.10.bias"])
    heads = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).lin0.model[1].weight
    torch.testing.assert_close(model.network.lin0.model[1].weight, heads)
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_identical_inputs_give_zero_and_different_inputs_do_not(random_alexnet_path):
    model = LearnedPerceptualSimilarity.from_pretrained(backbone_path=random_alexnet_path)
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 3, 64, 64, generator=generator) * 2 - 1
    other = torch.rand(2, 3, 3, 64, 64, generator=generator) * 2 - 1
    same = lpips_per_frame(video, video, model=model)
    assert same.shape == (2, 3)
    assert torch.all(same.abs() < 1e-6)
    different = model.video_distance(video, other, batch_size=4)
    assert different.shape == (2, 3) and torch.all(different > 0)
    # Frames are paired in order: row 0 equals the image-level distances of video 0.
    torch.testing.assert_close(different[0], model(video[0], other[0]))
    # Numpy views with negative strides (a reversed clip) were refused by torch.as_tensor; no frames give (B, 0).
    reversed_frames = video.numpy()[:, ::-1]
    torch.testing.assert_close(lpips_per_frame(reversed_frames, other.numpy(), model=model),
                               model.video_distance(video.flip(1), other))
    assert model.video_distance(video[:, :0], other[:, :0]).shape == (2, 0)


def test_missing_backbone_is_reported_unavailable(tmp_path):
    # The autouse fixture points both caches at empty folders.
    with pytest.raises(MetricUnavailable, match="alexnet-owt-7be5be79.pth"):
        LearnedPerceptualSimilarity.from_pretrained()
    with pytest.raises(MetricUnavailable, match="does not exist"):
        LearnedPerceptualSimilarity.from_pretrained(backbone_path=tmp_path / "nope.pth")


def test_an_alexnet_that_is_not_torchvisions_is_refused(random_alexnet_unregistered, synthetic_dataset):
    # Any AlexNet-shaped file (here a randomly initialised one under torchvision's name) was loaded, and its numbers
    # were reported as `lpips` and `diversity/lpips` with nothing in `unavailable`.
    from ipoke.evaluation import evaluate

    with pytest.raises(MetricUnavailable, match=r"is not torchvision's ImageNet AlexNet alexnet-owt-7be5be79.pth "
                                                r"\(its SHA-256 starts with [0-9a-f]{8}, not 7be5be79\)"):
        LearnedPerceptualSimilarity.from_pretrained(backbone_path=random_alexnet_unregistered)
    report = evaluate({}, synthetic_dataset, metrics=("lpips", "diversity"), n_clips=2, samples=2, n_frames=3,
                      size=32, lpips_backbone=str(random_alexnet_unregistered), progress=False)
    assert set(report["unavailable"]) == {"lpips", "diversity/lpips"}
    assert "lpips" not in report["results"]["copy_x0"]


def test_backbone_found_in_the_torch_hub_cache(random_alexnet_path):
    checkpoints = __import__("pathlib").Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(random_alexnet_path.read_bytes())
    model = LearnedPerceptualSimilarity.from_pretrained()
    image = torch.zeros(1, 3, 32, 32)
    assert float(model(image, image)) == pytest.approx(0.0, abs=1e-6)


def test_frames_too_small_for_alexnet_are_refused_and_evaluate_reports_lpips_unavailable(random_alexnet_path,
                                                                                          synthetic_dataset):
    # AlexNet's second max-pooling fails below 31 px: `ipoke evaluate --size 24` died after sampling with a torch
    # traceback and wrote no report when LPIPS weights were present.
    from ipoke.evaluation import evaluate
    from ipoke.metrics.perceptual import LPIPS_MIN_SIZE

    model = LearnedPerceptualSimilarity.from_pretrained(backbone_path=random_alexnet_path)
    smallest = torch.rand(2, 3, LPIPS_MIN_SIZE, 40) * 2 - 1
    assert model(smallest, smallest.flip(0)).shape == (2,)
    with pytest.raises(ValueError, match=f"at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels, got 30x40"):
        model(smallest[:, :, :30], smallest[:, :, :30])
    settings = dict(metrics=("lpips", "diversity", "ssim"), n_clips=2, samples=2, n_frames=3,
                    lpips_backbone=str(random_alexnet_path), progress=False)
    small = evaluate({}, synthetic_dataset, size=24, **settings)
    assert set(small["unavailable"]) == {"lpips", "diversity/lpips"}
    assert "at least 31 px, these have 24 px" in small["unavailable"]["lpips"]
    assert {"ssim", "diversity/mse"} <= set(small["results"]["ground_truth_resimulated"])
    large = evaluate({}, synthetic_dataset, size=LPIPS_MIN_SIZE, **settings)
    assert not large["unavailable"]
    assert large["results"]["ground_truth_resimulated"]["diversity/lpips"] > 0
    assert large["results"]["copy_x0"]["lpips"] > 0
