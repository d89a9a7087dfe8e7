"""Poker (sampling API), export + zoo, `ipoke sample` and `ipoke evaluate` on a tiny random-weight model."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from ipoke import zoo
from ipoke.cli import main
from ipoke.evaluation import compare_with_baseline
from ipoke.metrics import MetricUnavailable
from ipoke.sampling import ModelLoadError, Poker


@pytest.fixture(scope="module")
def exported(tiny_model):
    return tiny_model


def test_animate_shapes_determinism_and_seed(exported):
    poker = Poker.from_checkpoint(exported)
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    a = poker.animate(image, [(80, 60, 10, -5)], n_samples=3, seed=1)
    b = poker.animate(image, [(80, 60, 10, -5)], n_samples=3, seed=1)
    c = poker.animate(image, [(80, 60, 10, -5)], n_samples=3, seed=2)
    assert a.shape == (3, 11, 3, 64, 64)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[0, 1:], a[1, 1:]), "samples of one call differ"
    assert a.min() >= -1 and a.max() <= 1


def test_prepare_maps_pokes_through_crop_and_resize(exported):
    poker = Poker.from_checkpoint(exported)
    image = np.zeros((100, 200, 3), np.uint8)  # centre square: x in [50, 150)
    x0, poke, mapped = poker.prepare(image, [(100, 50, 20, 10)])
    np.testing.assert_allclose(mapped[0], [32.32, 32.32, 12.8, 6.4], rtol=1e-5)  # pixel 100's centre, 50.5 px in
    assert poke[0, 0, 32, 32] == pytest.approx(12.8) and poke[0, 1, 32, 32] == pytest.approx(6.4)
    assert x0.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="centre square"):
        poker.prepare(image, [(10, 50, 1, 1)])
    with pytest.raises(ValueError, match="outside the 200x100 image"):
        poker.prepare(image, [(250, 50, 1, 1)])


def test_a_poke_lands_on_the_model_pixel_holding_the_poked_pixels_centre(exported):
    # The pixel's corner was mapped ((x - left) * scale): wherever the scale is not a whole fraction a poke fell one
    # model pixel up or left of the one holding the poked pixel (pixel 39 of a 100 px image: 24.96 -> model pixel 24,
    # though its centre 25.28 is in 25).
    from fractions import Fraction

    from ipoke.data.pokes import poke_map_from_coords

    poker = Poker.from_checkpoint(exported)
    size = poker.size

    def cells(image, pixels):
        _, _, mapped = poker.prepare(image, [(x, y, 1.0, 0.0) for x, y in pixels])
        return np.floor(mapped[:, :2]).astype(int).tolist()

    def expected_cell(pixel, offset, side):  # exact: the model pixel whose area holds the pixel's centre
        return int((Fraction(2 * (pixel - offset) + 1, 2) * size / side) // 1)

    # 4x the model's size: pixels 4i .. 4i + 3 are model pixel i.
    big = np.zeros((4 * size, 4 * size, 3), np.uint8)
    assert cells(big, [(3, 3), (4, 4), (0, 255), (255, 128)]) == [[0, 0], [1, 1], [0, 63], [63, 32]]
    # A scale that is no whole fraction (100 px and a crop offset of 50 px onto 64), and an upscale (32 px -> 64).
    for height, width in ((100, 200), (100, 100), (32, 32)):
        side = min(height, width)
        left, top = (width - side) // 2, (height - side) // 2
        image = np.zeros((height, width, 3), np.uint8)
        pixels = [(left + p, top + side - 1 - p) for p in range(side)]
        expected = [[expected_cell(x, left, side), expected_cell(y, top, side)] for x, y in pixels]
        assert cells(image, pixels) == expected, (height, width)
    image = np.zeros((100, 200, 3), np.uint8)
    _, _, mapped = poker.prepare(image, [(89, 39, 10, 0)])
    np.testing.assert_allclose(mapped[0], [39.5 * 0.64, 39.5 * 0.64, 6.4, 0.0], rtol=1e-6)
    # The poke map is the square of that model pixel, (25, 25), the one the datasets' poke at its centre fills.
    _, poke, _ = poker.prepare(image, [(89, 39, 10, 0)])
    np.testing.assert_array_equal(poke[0].numpy(), poke_map_from_coords(np.array([[25.5, 25.5, *mapped[0, 2:]]]),
                                                                        size, poker.poke_size))
    # Fractions count pixel centres at integers: -0.4 is in pixel 0, 63.5 is past the last pixel 63.
    small = np.zeros((size, size, 3), np.uint8)
    assert cells(small, [(-0.4, 63.4), (0.6, 2.49)]) == [[0, 63], [1, 2]]
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        poker.prepare(small, [(63.5, 10, 1, 0)])


def test_export_round_trip_is_exact(exported, tmp_path):
    poker = Poker.from_checkpoint(exported)
    again = Poker.from_checkpoint(poker.export(tmp_path / "again"))
    x0, poke = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(2, 2, 64, 64)
    first = poker.sample(x0, poke, n_samples=2, generator=torch.Generator().manual_seed(0))
    second = again.sample(x0, poke, n_samples=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    # A float64 model stays float64 (its weights were cast down to float32 on loading, and its videos changed).
    double = Poker.from_checkpoint(exported).double()
    reloaded = Poker.from_checkpoint(double.export(tmp_path / "double"))
    assert reloaded.dtype == torch.float64
    first, second = (model.sample(x0.double(), poke.double(), generator=torch.Generator().manual_seed(0))
                     for model in (double, reloaded))
    assert first.dtype == torch.float64 and torch.equal(first, second)
    # The same seed draws the same residual in float64 (torch draws another stream in float64: a float64 model's
    # samples were unrelated to its float32 ones, and control_sensitivity's no longer matched animate's).
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    single = poker.animate(image, [(30, 20, 6, -3)], n_samples=2, seed=5)
    double_videos = double.animate(image, [(30, 20, 6, -3)], n_samples=2, seed=5)
    assert double_videos.dtype == torch.float64
    torch.testing.assert_close(double_videos.float(), single, atol=1e-4, rtol=0)
    sensitivity, pokes = double.control_sensitivity(image, 30, 20, magnitudes=[6.0], n_directions=2, seed=5)
    torch.testing.assert_close(sensitivity[1:2], double.animate(image, [tuple(pokes[1])], n_samples=1, seed=5),
                               atol=1e-9, rtol=0)


def test_transfer_reuses_the_residual(exported):
    poker = Poker.from_checkpoint(exported)
    video = torch.rand(2, 11, 3, 64, 64) * 2 - 1
    poke = torch.randn(2, 2, 64, 64)
    same = poker.transfer(video, poke, video[:, 0])
    z = poker.autoencoder.encode(video).mean
    expected = poker.autoencoder.decode(z, video[:, 0])
    torch.testing.assert_close(same[:, 1:], expected, atol=1e-4, rtol=1e-4)
    other = poker.transfer(video, poke, video.flip(0)[:, 0])
    assert torch.equal(other[:, 0], video.flip(0)[:, 0]) and not torch.allclose(other[:, 1:], same[:, 1:])


def test_zoo_register_resolve_and_tamper(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("IPOKE_HOME", str(tmp_path / "home"))
    folder = Poker.from_checkpoint(exported).export(tmp_path / "zoo_model")
    zoo.register("tiny_64", folder)
    assert zoo.names() == ["tiny_64"]
    assert Poker.from_checkpoint("tiny_64").size == 64
    with pytest.raises(ValueError, match="taken"):
        zoo.register("tiny_64", folder)
    # Opening the folder (Finder's .DS_Store, an editor's swap file) is not a change of the model.
    registered = zoo.entries()["tiny_64"]["sha256"]
    (folder / ".DS_Store").write_bytes(b"finder")
    (folder / "cinn" / ".model.pt.swp").write_bytes(b"vim")
    assert zoo.folder_checksum(folder) == registered and zoo.resolve("tiny_64") == folder.resolve()
    # Nor does a file of that name that is not a checkpoint (it was unpickled and blamed instead).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_64").write_text("notes")
    assert Poker.from_checkpoint("tiny_64").size == 64
    (tmp_path / "notes.txt").write_text("notes")  # not a registered name: still read, and refused clearly
    with pytest.raises(ModelLoadError, match="notes.txt is not a readable checkpoint"):
        Poker.from_checkpoint("notes.txt")
    (folder / "cinn" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match=rf"changed on disk .*register --overwrite tiny_64 {folder.resolve()}"):
        zoo.resolve("tiny_64")
    # Weights behind a linked network folder count too (Path.rglob skipped linked folders: a change went unnoticed).
    import shutil

    linked = tmp_path / "linked_model"
    linked.mkdir()
    for role in ("autoencoder", "image_encoder", "poke_encoder", "poker.yaml"):
        (linked / role).symlink_to(folder / role)
    shutil.copytree(folder / "cinn", tmp_path / "shared_cinn")
    (linked / "cinn").symlink_to(tmp_path / "shared_cinn", target_is_directory=True)
    zoo.register("linked", linked)
    (tmp_path / "shared_cinn" / "model.pt").write_bytes(b"swapped")
    with pytest.raises(ValueError, match="changed on disk"):
        zoo.resolve("linked")
    with pytest.raises(FileNotFoundError, match="registered: linked, tiny_64"):
        Poker.from_checkpoint("no_such_model")


def test_sample_command_writes_videos_and_overviews(exported, tmp_path, synthetic_dataset, capsys):
    import cv2

    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    out = tmp_path / "samples"
    assert main(["sample", "--ckpt", str(exported), "--image", str(image), "--poke", "48,32,5,0", "--poke",
                 "40,20,0,3", "--samples", "2", "--out", str(out), "--scale", "1"]) == 0
    for name in ("sample_0_0.mp4", "sample_0_1.gif", "overview_0.gif", "overview_0.png"):
        assert (out / name).stat().st_size > 0
    overview = cv2.imread(str(out / "overview_0.png"))
    assert overview.shape == (64, 3 * 64 + 2 * 4, 3)
    out_data = tmp_path / "from_data"
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(exported), "--data", synthetic_dataset, "--n", "2", "--samples", "3",
                 "--mode", "transfer", "--out", str(out_data), "--scale", "1"]) == 0
    assert sorted(p.name for p in out_data.glob("overview_*.png")) == ["overview_0.png", "overview_1.png"]
    assert cv2.imread(str(out_data / "overview_0.png")).shape == (64, 3 * 64 + 2 * 4, 3)  # x0, source clip, transfer
    assert sorted(p.name for p in out_data.glob("sample_*.mp4")) == ["sample_0_0.mp4", "sample_1_0.mp4"]
    assert "--samples is ignored" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(exported), "--out", str(out)]) == 2


def test_evaluate_command_reports_model_and_baselines(exported, tmp_path, synthetic_dataset, capsys):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--ckpt", str(exported), "--data", synthetic_dataset, "--metrics",
                 "ssim,psnr,diversity,control", "--n-clips", "3", "--samples", "2", "--batch-size", "2",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"tiny", "copy_x0", "ground_truth_resimulated"}
    for row in results.values():
        assert row["n_clips"] == 3 and row["n_samples"] == 2
        assert {"ssim", "psnr", "diversity/mse", "control/object_epe"} <= set(row)
    assert results["copy_x0"]["diversity/mse"] == 0.0
    assert results["copy_x0"]["control/background_motion"] < 0.05
    # Another physics sample of the true motion is closer to the truth than no motion at all.
    assert results["ground_truth_resimulated"]["control/object_epe"] < results["copy_x0"]["control/object_epe"]
    assert results["ground_truth_resimulated"]["psnr"] > results["copy_x0"]["psnr"]
    # Per-clip control errors (mean over the samples) for paired comparisons, printed against copy_x0.
    assert all(len(report["per_clip"][name]["control/object_epe"]) == 3 for name in results)
    per_clip_mean = sum(report["per_clip"]["tiny"]["control/object_epe"]) / 3
    assert per_clip_mean == pytest.approx(results["tiny"]["control/object_epe"])
    assert "tiny vs copy_x0, control/object_epe:" in capsys.readouterr().out
    # Standard JSON (jq, JavaScript): a static video's poke angle does not apply and is null, not a bare NaN.
    json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert results["copy_x0"]["control/poke_angle_deg"] is None
    assert results["tiny"]["control/poke_angle_deg"] >= 0.0
    # The report read back still gives the paired comparison printed above (null reads as not applicable).
    object_epe = compare_with_baseline(report, "tiny")["control/object_epe"]
    assert object_epe["n_clips"] == 3 and object_epe["model"] == results["tiny"]["control/object_epe"]
    # --temperature 0 scores the video of r = 0: every sample of a clip is the same, and the JSON says so.
    mode_out = tmp_path / "mode.json"
    assert main(["evaluate", "--ckpt", str(exported), "--data", synthetic_dataset, "--metrics", "diversity,control",
                 "--n-clips", "3", "--samples", "2", "--batch-size", "2", "--temperature", "0", "--no-baselines",
                 "--out", str(mode_out)]) == 0
    mode = json.loads(mode_out.read_text())
    assert mode["settings"]["temperature"] == 0.0 and report["settings"]["temperature"] == 1.0
    assert mode["results"]["tiny"]["diversity/mse"] == 0.0 < results["tiny"]["diversity/mse"]
    baselines_only = ["evaluate", "--data", synthetic_dataset, "--temperature", "0.5", "--out", str(tmp_path / "b.j")]
    assert main(baselines_only) == 2
    assert "the baselines draw nothing" in capsys.readouterr().err and not (tmp_path / "b.j").exists()
    # --keypoint-flow reaches the metric and the JSON (auto is direct on synthetic data).
    keypoint_out = tmp_path / "keypoints.json"
    assert main(["evaluate", "--data", synthetic_dataset, "--split", "train", "--metrics", "keypoints", "--n-clips",
                 "2", "--samples", "1", "--keypoint-flow", "chained", "--out", str(keypoint_out)]) == 0
    assert json.loads(keypoint_out.read_text())["settings"]["keypoint_flow"] == "chained"


def test_control_metrics_average_every_sample(synthetic_dataset):
    """Sample 0 static, sample 1 the true clip: the control errors are the mean of both, not the first sample's."""
    from ipoke.evaluation import copy_first_frame_sampler, evaluate

    def true_clip(batch, n_samples, generator):
        return batch["video"].unsqueeze(1).expand(-1, n_samples, -1, -1, -1, -1)

    def static_then_true(batch, n_samples, generator):
        return torch.cat([copy_first_frame_sampler(batch, 1, generator), true_clip(batch, 1, generator)], dim=1)

    options = {"metrics": ("control",), "n_clips": 4, "batch_size": 2, "include_baselines": False, "device": "cpu"}
    one = evaluate({"static": copy_first_frame_sampler, "true": true_clip}, synthetic_dataset, samples=1, **options)
    two = evaluate({"mixed": static_then_true}, synthetic_dataset, samples=2, **options)
    static, true, mixed = one["results"]["static"], one["results"]["true"], two["results"]["mixed"]
    assert true["control/object_epe"] < static["control/object_epe"] - 0.1
    assert mixed["control/object_epe"] == pytest.approx((static["control/object_epe"] + true["control/object_epe"]) / 2)
    assert mixed["control/poke_epe"] == pytest.approx((static["control/poke_epe"] + true["control/poke_epe"]) / 2)


def test_control_on_a_dataset_with_dilated_masks_is_flagged(synthetic_dataset, tmp_path, caplog):
    """Generator versions before 6 drew part masks that do not match the frames: the report records the version and
    warns."""
    from ipoke.evaluation import copy_first_frame_sampler, evaluate

    legacy = tmp_path / "legacy"
    shutil.copytree(synthetic_dataset, legacy)
    index = json.loads((legacy / "ipoke_dataset.json").read_text())
    index["settings"]["generator_version"] = 4
    (legacy / "ipoke_dataset.json").write_text(json.dumps(index))
    options = {"metrics": ("control",), "n_clips": 2, "batch_size": 2, "include_baselines": False, "device": "cpu",
               "samples": 1}
    with caplog.at_level("WARNING", logger="ipoke.evaluation"):
        today = evaluate({"static": copy_first_frame_sampler}, synthetic_dataset, **options)
    assert today["settings"]["synthetic_generator_version"] >= 6
    assert "part masks" not in caplog.text
    with caplog.at_level("WARNING", logger="ipoke.evaluation"):
        older = evaluate({"static": copy_first_frame_sampler}, legacy, **options)
    assert older["settings"]["synthetic_generator_version"] == 4
    assert "version 4 of the synthetic generator, whose part masks do not match" in caplog.text


def test_evaluate_missing_metric_alone_fails(tmp_path, synthetic_dataset, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "cache"))
    assert main(["evaluate", "--data", synthetic_dataset, "--metrics", "lpips", "--n-clips", "2",
                 "--out", str(tmp_path / "m.json")]) == 2
    assert "LPIPS is unavailable" in capsys.readouterr().err


def test_zoo_and_export_commands(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPOKE_HOME", str(tmp_path / "home"))
    assert main(["export", "--ckpt", str(exported), "--out", str(tmp_path / "bundle"), "--name", "tiny_cli"]) == 0
    assert main(["zoo", "list"]) == 0
    assert "tiny_cli" in capsys.readouterr().out
    assert main(["zoo", "register", "tiny_cli", str(tmp_path / "bundle")]) == 2
    assert "taken" in capsys.readouterr().err
    assert main(["zoo", "remove", "tiny_cli"]) == 0
    assert main(["zoo", "remove", "tiny_cli"]) == 2
    assert zoo.names() == []


def test_strided_model_carries_its_frame_step_to_sample_and_evaluate(tmp_path, synthetic_dataset, make_tiny_poker):
    """A model trained on every second frame (5 frames over 10) is evaluated and sampled on clips cut the same way;
    FVD is reported unavailable for its 6-frame clips (I3D needs 9) while the other metrics run."""
    folder = make_tiny_poker(n_frames=5, frame_step=2).export(tmp_path / "strided")
    assert Poker.from_checkpoint(folder).frame_step == 2
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--ckpt", str(folder), "--data", synthetic_dataset, "--metrics", "fvd,psnr,control",
                 "--n-clips", "2", "--samples", "1", "--batch-size", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["frame_step"] == 2 and report["settings"]["n_frames"] == 5
    assert "at least 9 frames" in report["unavailable"]["fvd"]
    results = report["results"]
    assert "fvd" not in results["strided"] and "psnr" in results["strided"]
    # The resimulated ground truth is cut with the same stride: same x0, its physics noise is small.
    assert results["ground_truth_resimulated"]["psnr"] > results["copy_x0"]["psnr"]
    assert main(["evaluate", "--ckpt", str(folder), "--data", synthetic_dataset, "--metrics", "fvd", "--n-clips", "2",
                 "--out", str(tmp_path / "fvd.json")]) == 2
    samples = tmp_path / "samples"
    assert main(["sample", "--ckpt", str(folder), "--data", synthetic_dataset, "--n", "1", "--samples", "1",
                 "--out", str(samples), "--scale", "1"]) == 0
    assert (samples / "overview_0.png").exists()


def test_resimulated_baseline_follows_the_frame_step(synthetic_dataset):
    from ipoke.data.datasets import PokeDataset
    from ipoke.evaluation import resimulation_sampler

    dataset = PokeDataset(synthetic_dataset, split="test", n_frames=5, frame_step=2, n_pokes=1, augment=False,
                          deterministic=True, max_clips=2)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    with resimulation_sampler(dataset) as sampler:
        videos = sampler(batch, 2, torch.Generator().manual_seed(0))
    assert videos.shape == (2, 2, 6, 3, 64, 64)
    torch.testing.assert_close(videos[:, :, 0], batch["video"][:, None, 0].expand(-1, 2, -1, -1, -1))
    # Frames 1..5 are stored frames 2, 4, .., 10 of another physics sample: close to the strided clip.
    assert (videos[:, 0, 1:] - batch["video"][:, 1:]).abs().mean() < 0.05


def test_resimulated_baseline_is_the_same_with_any_number_of_workers(synthetic_dataset, monkeypatch):
    import ipoke.evaluation as evaluation
    from ipoke.data.datasets import PokeDataset
    from ipoke.data.synthetic import resimulate

    dataset = PokeDataset(synthetic_dataset, split="test", n_frames=10, n_pokes=1, augment=False, deterministic=True,
                          max_clips=3)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(3)])
    runs = {}
    for threads in (1, 4):
        monkeypatch.setattr("ipoke.utils.cpu_threads", lambda limit=8, threads=threads: threads)
        generators = evaluation.clip_generators(7, 0, 3)
        with evaluation.resimulation_sampler(dataset) as sampler:
            runs[threads] = sampler(batch, 3, generators)
    assert torch.equal(runs[1], runs[4]) and runs[1].shape == (3, 3, 11, 3, 64, 64)
    # Clip c, sample k is the physics sample of the k-th seed drawn from clip c's own generator.
    generator = evaluation.clip_generators(7, 0, 3)[2]
    seeds = [int(torch.randint(0, 2**31, (1,), generator=generator)) for _ in range(3)]
    video_id, start = batch["video_id"][2], int(batch["start"][2])
    frames = resimulate(dataset.data.scene(video_id), size=dataset.data.size, physics_seed=seeds[1])["frames"]
    expected = torch.from_numpy(frames[start:start + 11]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(runs[4][2, 1], expected)
    assert not torch.equal(runs[4][2, 0], runs[4][2, 1])  # the samples differ


def test_static_reference_model_round_trips_through_export_and_transfer(tmp_path, make_tiny_poker):
    poker = make_tiny_poker(static_reference=True)
    again = Poker.from_checkpoint(poker.export(tmp_path / "static"))
    assert again.cinn.static_reference and again.cinn.condition_channels == 20
    x0, poke = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(2, 2, 64, 64)
    first = poker.sample(x0, poke, n_samples=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again.sample(x0, poke, n_samples=2, generator=torch.Generator().manual_seed(0)))
    # Transfer onto the source's own first frame reproduces the autoencoder's reconstruction (residual reused).
    video = torch.rand(2, 11, 3, 64, 64) * 2 - 1
    same = again.transfer(video, poke, video[:, 0])
    expected = again.autoencoder.decode(again.autoencoder.encode(video).mean, video[:, 0])
    torch.testing.assert_close(same[:, 1:], expected, atol=1e-4, rtol=1e-4)


def test_autoencoder_and_tempered_samplers(make_tiny_poker):
    from ipoke.evaluation import autoencoder_sampler, poker_sampler

    poker = make_tiny_poker()
    batch = {"video": torch.rand(2, 11, 3, 64, 64) * 2 - 1, "poke": torch.randn(2, 2, 64, 64)}
    clips = autoencoder_sampler(poker.autoencoder)(batch, 3, torch.Generator().manual_seed(0))
    expected = poker.autoencoder(batch["video"], sample_posterior=False).sample
    assert clips.shape == (2, 3, 11, 3, 64, 64)
    assert torch.equal(clips[:, :, 0], batch["video"][:, None, 0].expand(-1, 3, -1, -1, -1))
    torch.testing.assert_close(clips[:, 1, 1:], expected.detach())
    # Temperature 0 ignores the random draw; temperature 1 does not.
    def draws(sampler):  # noqa: ANN001, ANN202
        return [sampler(batch, 2, torch.Generator().manual_seed(seed)) for seed in (0, 1)]

    assert torch.equal(*draws(poker_sampler(poker, 0.0)))
    assert not torch.equal(*draws(poker_sampler(poker)))


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors (exit code 2, no traceback), nothing deleted or half-written


def test_export_never_deletes_a_folder_that_is_not_an_export(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPOKE_HOME", str(tmp_path / "home"))
    user_folder = tmp_path / "notes"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("important")
    assert main(["export", "--ckpt", str(exported), "--out", str(user_folder)]) == 2
    assert "not an output of this kind" in capsys.readouterr().err
    assert (user_folder / "notes.txt").read_text() == "important"
    assert main(["export", "--ckpt", str(exported), "--out", str(user_folder / "notes.txt")]) == 2
    monkeypatch.chdir(user_folder)
    assert main(["export", "--ckpt", str(exported), "--out", "."]) == 2
    assert (user_folder / "notes.txt").read_text() == "important"
    # An earlier export is replaced; a taken zoo name needs --overwrite and is checked before exporting.
    assert main(["export", "--ckpt", str(exported), "--out", str(tmp_path / "a"), "--name", "m"]) == 0
    assert main(["export", "--ckpt", str(exported), "--out", str(tmp_path / "a")]) == 0
    assert main(["export", "--ckpt", str(exported), "--out", str(tmp_path / "b"), "--name", "m"]) == 2
    assert "--overwrite" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["export", "--ckpt", str(exported), "--out", str(tmp_path / "b"), "--name", "m", "--overwrite"]) == 0
    assert zoo.entries()["m"]["path"] == str((tmp_path / "b").resolve())


def test_sample_command_rejects_bad_input_without_writing(exported, tmp_path, capsys):
    import cv2

    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((100, 150, 3), np.uint8))
    out = tmp_path / "out"
    base = ["sample", "--ckpt", str(exported), "--image", str(image), "--out", str(out), "--scale", "1"]
    assert main([*base, "--poke", "0,0,5,-2"]) == 2  # outside the centre square the model sees
    assert "centre square" in capsys.readouterr().err and not out.exists()
    assert main(["sample", "--ckpt", str(image), "--image", str(image), "--poke", "75,50,1,1", "--out", str(out)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err and not out.exists()
    # --n and --split choose dataset clips: with --image they were ignored silently (and recorded as settings).
    assert main([*base, "--poke", "75,50,1,1", "--n", "50", "--split", "nosuchsplit"]) == 2
    assert "--n and --split are for --data" in capsys.readouterr().err and not out.exists()
    for bad in (["--poke", "75,50,nan,1"], ["--poke", "75,50,1,1", "--samples", "0"],
                ["--poke", "75,50,1,1", "--fps", "0"], ["--poke", "75,50,1,1", "--scale", "-1"]):
        with pytest.raises(SystemExit):
            main([*base, *bad])
    assert not out.exists()
    # A rerun replaces the earlier output as a whole: no stale samples; the settings are written beside.
    assert main([*base, "--poke", "75,50,3,1", "--samples", "3"]) == 0
    assert main([*base, "--poke", "75,50,3,1", "--samples", "1"]) == 0
    assert sorted(p.name for p in out.glob("sample_*.gif")) == ["sample_0_0.gif"]
    assert json.loads((out / "ipoke_sample.json").read_text())["samples"] == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert main([*base[:-4], "--out", str(foreign), "--poke", "75,50,3,1"]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    # A transfer needs two clips: on a split of one it replayed the clip onto itself.
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset

    generate_dataset(tmp_path / "one", SyntheticSettings(videos=4, frames=10, size=64, seed=0, val_fraction=0.0,
                                                         test_fraction=0.25), workers=1, progress=False)
    assert main(["sample", "--ckpt", str(exported), "--data", str(tmp_path / "one"), "--n", "2", "--mode", "transfer",
                 "--out", str(tmp_path / "transfer")]) == 2
    assert "has only 1 clip" in capsys.readouterr().err and not (tmp_path / "transfer").exists()


def test_control_sensitivity_pokes_are_visible_at_the_model_resolution(exported):
    poker = Poker.from_checkpoint(exported)
    image = np.random.default_rng(0).integers(0, 255, (640, 960, 3), dtype=np.uint8)  # 10x the model's 64 px
    videos, pokes = poker.control_sensitivity(image, 480, 320, n_directions=4)
    lengths = np.hypot(pokes[:, 2], pokes[:, 3])
    np.testing.assert_allclose(lengths, [40] * 4 + [80] * 4, rtol=1e-5)  # 4 and 8 model pixels
    _, _, mapped = poker.prepare(image, pokes)
    np.testing.assert_allclose(np.hypot(mapped[:, 2], mapped[:, 3]), [4] * 4 + [8] * 4, rtol=1e-5)
    assert videos.shape[0] == 8 and not torch.allclose(videos[0, 1:], videos[2, 1:])


def test_api_rejects_unreadable_images_pokes_and_models(exported, tmp_path):
    from ipoke.sampling import ModelLoadError

    poker = Poker.from_checkpoint(exported)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        poker.animate(torch.full((3, 64, 64), 200.0), [(32, 32, 1, 1)])
    with pytest.raises(ValueError, match="finite"):
        poker.animate(np.zeros((64, 64, 3), np.uint8), [(32, 32, float("nan"), 1)])
    not_a_model = tmp_path / "image.pt"
    not_a_model.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        Poker.from_checkpoint(not_a_model)
    damaged = poker.export(tmp_path / "damaged")
    (damaged / "poker.yaml").write_text("size: 64\n")
    with pytest.raises(ModelLoadError, match="damaged"):
        Poker.from_checkpoint(damaged)


def test_evaluate_command_checks_its_arguments_before_working(exported, tmp_path, synthetic_dataset, capsys,
                                                              monkeypatch):
    from ipoke import cli, evaluation

    assert cli.ALL_METRICS == evaluation.ALL_METRICS
    base = ["evaluate", "--ckpt", str(exported), "--data", synthetic_dataset, "--n-clips", "2"]
    assert main([*base, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main([*base, "--metrics", ",", "--out", str(tmp_path / "m.json")]) == 2
    for bad in (["--n-clips", "0"], ["--samples", "-2"]):
        with pytest.raises(SystemExit):
            main([*base, *bad])
    assert not (tmp_path / "m.json").exists()
    # Diversity alone without the LPIPS weights still gives diversity/mse; one sample per clip says why there is none.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "cache"))
    assert main([*base, "--metrics", "diversity", "--samples", "2", "--out", str(tmp_path / "d.json")]) == 0
    report = json.loads((tmp_path / "d.json").read_text())
    assert "diversity/mse" in report["results"]["tiny"] and "diversity/lpips" in report["unavailable"]
    # With lpips asked for too, both keys are listed (diversity/lpips used to vanish silently).
    report = evaluation.evaluate({}, synthetic_dataset, metrics=("lpips", "diversity"), n_clips=2, samples=2,
                                 n_frames=3, progress=False)
    assert {"lpips", "diversity/lpips"} <= set(report["unavailable"])
    assert "diversity/mse" in report["results"]["copy_x0"]
    report = evaluation.evaluate({}, synthetic_dataset, metrics=("diversity", "ssim"), n_clips=2, samples=1,
                                 progress=False)
    assert "--samples 2" in report["unavailable"]["diversity"]
    # A synthetic dataset without a video's scene.json: one line (a TypeError deep in the re-simulation before).
    damaged = tmp_path / "damaged"
    shutil.copytree(synthetic_dataset, damaged)
    for scene in (damaged / "videos").glob("*/scene.json"):
        scene.unlink()
    assert main(["evaluate", "--data", str(damaged), "--metrics", "ssim", "--n-clips", "1", "--samples", "1",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "has no scene.json, which the re-simulated baseline needs" in capsys.readouterr().err
    # The baselines alone take the clip settings of the model they are compared with (10 frames, step 1 always).
    assert main(["evaluate", "--data", synthetic_dataset, "--metrics", "ssim", "--n-clips", "2", "--samples", "1",
                 "--n-frames", "5", "--frame-step", "2", "--out", str(tmp_path / "s.json")]) == 0
    settings = json.loads((tmp_path / "s.json").read_text())["settings"]
    assert (settings["n_frames"], settings["frame_step"]) == (5, 2)
    assert main([*base, "--metrics", "ssim", "--frame-step", "2", "--out", str(tmp_path / "s.json")]) == 2
    assert "--frame-step 2 differs from the model's 1: with --ckpt the clips are the model's" in (
        capsys.readouterr().err)
    # --name labels the model's row; it must not be empty, need a model, or take a baseline's name.
    assert main([*base, "--metrics", "ssim", "--name", "run-2", "--out", str(tmp_path / "n.json")]) == 0
    assert set(json.loads((tmp_path / "n.json").read_text())["results"]) == {"run-2", "copy_x0",
                                                                             "ground_truth_resimulated"}
    for bad, message in ((["--name", " "], "--name is empty"), (["--name", "copy_x0"], "that name is a baseline's")):
        assert main([*base, "--metrics", "ssim", *bad, "--out", str(tmp_path / "b.json")]) == 2
        assert message in capsys.readouterr().err
    assert main(["evaluate", "--data", synthetic_dataset, "--name", "x", "--out", str(tmp_path / "b.json")]) == 2
    assert "give --ckpt too" in capsys.readouterr().err
    assert not (tmp_path / "b.j").exists()
    # Found before any clip is sampled: an --out below a file, a device that is not one (also without --ckpt), a
    # negative seed (numpy refused it mid-run with a message that did not name --seed).
    blocker = tmp_path / "blocker.png"
    blocker.write_bytes(b"x")
    assert main([*base, "--metrics", "ssim", "--out", str(blocker / "m.json")]) == 2
    assert "blocker.png is a file, so nothing can be created inside it" in capsys.readouterr().err
    # `--out results/run1/` wrote a file named run1 (Path drops the slash).
    assert main([*base, "--metrics", "ssim", "--out", str(tmp_path / "run1") + "/"]) == 2
    assert "run1/ is a folder; give a file name such as" in capsys.readouterr().err
    assert not (tmp_path / "run1").exists()
    assert main(["evaluate", "--data", synthetic_dataset, "--metrics", "ssim", "--device", "foo",
                 "--out", str(tmp_path / "b.json")]) == 2
    assert "--device 'foo' is not a device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--seed", "-3"])
    assert "must be in [0, 2**63)" in capsys.readouterr().err
    # The row of a model folder or zoo name keeps a dot in its name (it is not a file extension).
    dotted = tmp_path / "model.v2"
    shutil.copytree(exported, dotted)
    assert main(["evaluate", "--ckpt", str(dotted), "--data", synthetic_dataset, "--n-clips", "2", "--metrics",
                 "ssim", "--no-baselines", "--out", str(tmp_path / "v.json")]) == 0
    assert list(json.loads((tmp_path / "v.json").read_text())["results"]) == ["model.v2"]
    # One network of an export is not a model: a one-line error, as `ipoke sample` gives.
    assert main(["evaluate", "--ckpt", str(exported / "cinn"), "--data", synthetic_dataset, "--metrics", "ssim",
                 "--out", str(tmp_path / "c.json")]) == 2
    assert "one network, not a model" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "c.json").exists()
    # FVD alone on a split of one clip fails instead of writing a report without it.
    with pytest.raises(MetricUnavailable, match="at least 2 clips"):
        evaluation.evaluate({}, synthetic_dataset, metrics=("fvd",), n_clips=1, n_frames=9, progress=False,
                            strict=True)


def test_zoo_rejects_bad_names_and_reports_a_damaged_registry(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPOKE_HOME", str(tmp_path / "home"))
    with pytest.raises(zoo.ZooError, match="invalid model name"):
        zoo.register("", exported)
    assert main(["zoo", "remove", "nothing"]) == 2
    assert "no model named 'nothing'" in capsys.readouterr().err
    # `zoo list` flags entries whose folder went away or changed.
    kept, changed, gone = (Poker.from_checkpoint(exported).export(tmp_path / name) for name in ("k", "c", "g"))
    for name, folder in (("kept", kept), ("changed", changed), ("gone", gone)):
        zoo.register(name, folder)
    (changed / "poker.yaml").write_text((changed / "poker.yaml").read_text() + "# edited\n")
    shutil.rmtree(gone)
    assert main(["zoo", "list"]) == 0
    listing = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert listing["changed"].endswith("[changed on disk]") and listing["gone"].endswith("[missing]")
    assert not listing["kept"].endswith("]")
    zoo.registry_file().write_text("[unclosed")
    assert main(["zoo", "list"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_weights_file_that_is_not_one_is_named(tmp_path):
    from ipoke.weights import WeightsNotFoundError, load_weights_file

    fake = tmp_path / "alexnet.pth"
    fake.write_bytes(b"\x89PNG not weights")
    with pytest.raises(WeightsNotFoundError, match="alexnet.pth is not a readable PyTorch weights file"):
        load_weights_file(fake)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_option_is_checked():
    from ipoke.cli import UserError, _device

    assert _device("cpu") == "cpu"
    with pytest.raises(UserError, match="no CUDA GPU"):
        _device("cuda")
    with pytest.raises(UserError, match="not a device"):
        _device("gpu")


def test_keypoint_accuracy_scores_where_the_poked_joint_ends(synthetic_dataset, tmp_path):
    """The true clip takes the poked joint close to its end, a static video leaves it; no keypoints: unavailable."""
    from ipoke.evaluation import copy_first_frame_sampler, evaluate

    def true_clip(batch, n_samples, generator):
        return batch["video"].unsqueeze(1).expand(-1, n_samples, -1, -1, -1, -1)

    options = {"split": "train", "n_clips": 8, "batch_size": 4, "include_baselines": False, "device": "cpu",
               "progress": False}
    report = evaluate({"static": copy_first_frame_sampler, "true": true_clip}, synthetic_dataset,
                      metrics=("keypoints",), samples=2, **options)
    static, true = report["results"]["static"], report["results"]["true"]
    scored = report["settings"]["n_keypoint_clips"]
    assert 4 <= scored <= 8 and report["settings"]["keypoint_flow"] == "direct"  # synthetic motion stays small
    assert true["control/keypoint_error"] < 0.8 * static["control/keypoint_error"]
    assert static["control/keypoint_error"] >= 1.0  # only joints that move at least 1 px are poked
    per_clip = np.asarray(report["per_clip"]["static"]["control/keypoint_error"])
    assert len(per_clip) == 8 and np.isfinite(per_clip).sum() == scored
    assert "ssim" not in static  # keypoints alone: the simulated-poke pass is skipped

    # The same data without keypoints.
    bare = tmp_path / "bare"
    shutil.copytree(synthetic_dataset, bare)
    for meta_file in (bare / "videos").glob("*/meta.json"):
        meta = json.loads(meta_file.read_text())
        meta["has_keypoints"] = False
        meta_file.write_text(json.dumps(meta))
        (meta_file.parent / "keypoints.npy").unlink()
    assert main(["data", "index", str(bare)]) == 0
    report = evaluate({"true": true_clip}, bare, metrics=("keypoints", "ssim"), samples=1, **options)
    assert "ipoke data prepare --keypoints" in report["unavailable"]["keypoints"]
    assert "control/keypoint_error" not in report["results"]["true"] and report["results"]["true"]["ssim"] > 0.99
    with pytest.raises(MetricUnavailable, match="targeted keypoint accuracy needs keypoints"):
        evaluate({"true": true_clip}, bare, metrics=("keypoints",), samples=1, strict=True, **options)

    # Keypoints that never move: known only after the pass, and no longer an `n/a` with exit status 0.
    still = tmp_path / "still"
    shutil.copytree(synthetic_dataset, still)
    for keypoint_file in (still / "videos").glob("*/keypoints.npy"):
        keypoints = np.load(keypoint_file)
        np.save(keypoint_file, np.repeat(keypoints[:1], len(keypoints), axis=0))
    report = evaluate({"true": true_clip}, still, metrics=("keypoints", "ssim"), samples=1, **options)
    assert "no clip of split 'train' has a joint inside the frame that moves" in report["unavailable"]["keypoints"]
    with pytest.raises(MetricUnavailable, match="keypoints: no clip of split 'train'"):
        evaluate({"true": true_clip}, still, metrics=("keypoints",), samples=1, strict=True, **options)


def test_keypoint_accuracy_on_real_data_follows_joints_that_move_far(tmp_path, moving_textured_square):
    """On prepared (real) data a joint moving 15-25 px in a 64 px clip is followed through the generated frames
    (``keypoint_flow`` auto -> chained): the true clip scores within a pixel. The direct estimate, kept for synthetic
    data, loses such a move: the true clip would score almost what a static video does."""
    from ipoke.data.format import DatasetWriter
    from ipoke.evaluation import copy_first_frame_sampler, evaluate

    writer = DatasetWriter(tmp_path / "real", size=64, flow_lags=[10], source="prepare")
    for index, speed in enumerate((1.5, 2.0, 2.5)):
        frames, shifts = moving_textured_square(index, speed, 11)
        keypoints = np.array([[[14.0 + shift, 29.0]] for shift in shifts], np.float32)  # a joint on the square
        writer.write_video(f"clip{index}", split="test", frames=np.stack(frames),
                           flow=np.zeros((1, 1, 2, 64, 64), np.float32), flow_starts=[0], keypoints=keypoints)
    writer.write_index()

    def true_clip(batch, n_samples, generator):
        return batch["video"].unsqueeze(1).expand(-1, n_samples, -1, -1, -1, -1)

    samplers = {"static": copy_first_frame_sampler, "true": true_clip}
    options = {"metrics": ("keypoints",), "samples": 1, "include_baselines": False, "device": "cpu",
               "progress": False}
    report = evaluate(samplers, tmp_path / "real", **options)
    assert report["settings"]["keypoint_flow"] == "chained" and report["settings"]["n_keypoint_clips"] == 3
    static, true = (report["results"][name]["control/keypoint_error"] for name in ("static", "true"))
    assert static == pytest.approx(np.mean([15, 20, 25]), abs=0.01) and true < 1.0
    direct = evaluate(samplers, tmp_path / "real", keypoint_flow="direct", **options)
    assert direct["settings"]["keypoint_flow"] == "direct"
    assert direct["results"]["true"]["control/keypoint_error"] > 0.5 * static
    with pytest.raises(ValueError, match="keypoint_flow must be auto, direct or chained, got 'tracked'"):
        evaluate(samplers, tmp_path / "real", keypoint_flow="tracked", **options)


def test_evaluation_does_not_depend_on_the_batch_size(synthetic_dataset, make_tiny_poker):
    """Every clip draws its samples from its own seeded generator: batch 2 and batch 3 give the same numbers.

    The convolutions of another batch size may take other CPU kernels (samples differ by ~1e-6), which can flip a
    grey level of the 8-bit frames that DIS reads: the control errors agree to 1e-3 (other draws differ by far more).
    """
    from ipoke.evaluation import evaluate, poker_sampler

    samplers = {"tiny": poker_sampler(make_tiny_poker())}
    options = {"metrics": ("ssim", "diversity", "control"), "n_clips": 4, "samples": 2, "device": "cpu",
               "progress": False}
    small = evaluate(samplers, synthetic_dataset, batch_size=2, **options)
    large = evaluate(samplers, synthetic_dataset, batch_size=3, **options)
    for name in small["results"]:  # the model and both baselines, the re-simulation included
        for key, value in small["results"][name].items():
            tolerance = 1e-3 if key.startswith("control/") else 1e-5
            assert large["results"][name][key] == pytest.approx(value, rel=tolerance, nan_ok=True), (name, key)
    assert small["results"]["tiny"]["diversity/mse"] > 0


def test_evaluate_says_when_the_split_has_fewer_clips_than_asked(synthetic_dataset, tmp_path, capsys):
    assert main(["evaluate", "--data", synthetic_dataset, "--metrics", "ssim", "--n-clips", "100000", "--samples",
                 "1", "--out", str(tmp_path / "m.json")]) == 0
    n_clips = json.loads((tmp_path / "m.json").read_text())["settings"]["n_clips"]
    assert 0 < n_clips < 100000
    assert f"note: split 'test' has {n_clips} clips; all of them were used (--n-clips 100000" in capsys.readouterr().out


def test_api_refuses_pokes_sample_counts_generators_and_devices_it_cannot_honour(exported):
    poker = Poker.from_checkpoint(exported)
    image = np.zeros((64, 64, 3), np.uint8)
    # Four pokes of three numbers were reshaped into three pokes of four; one flat poke stays one poke.
    with pytest.raises(ValueError, match="rows of four numbers"):
        poker.prepare(image, [(10, 10, 1), (20, 20, 1), (30, 30, 1), (40, 40, 1)])
    with pytest.raises(ValueError, match="rows of four numbers"):
        poker.prepare(image, (10, 10, 1, 1, 20, 20, 1, 1))
    with pytest.raises(ValueError, match="at least one poke"):
        poker.prepare(image, [])
    assert poker.prepare(image, (10, 12, 1, -1))[2].tolist() == [[10.5, 12.5, 1, -1]]  # the pixel's centre
    # n_samples=0 failed deep inside with an IndexError, -1 with a RuntimeError.
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            poker.animate(image, [(32, 32, 3, 1)], n_samples=bad)
    # A sequence of generators must have one per pair (it was silently split over the rows instead).
    x0, poke = torch.zeros(2, 3, 64, 64), torch.zeros(2, 2, 64, 64)
    with pytest.raises(ValueError, match="1 generators for 2 pairs"):
        poker.sample(x0, poke, n_samples=2, generator=[torch.Generator().manual_seed(0)])
    # A device that is not one, or is missing here, is named as such, not blamed on the model ("damaged").
    with pytest.raises(ValueError, match="not a device"):
        Poker.from_checkpoint(exported, map_location="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Poker.from_checkpoint(exported, map_location="cuda")
    # Half-precision networks failed deep inside a coupling ("Input type (float) and bias type (c10::Half)").
    for dtype in (torch.float16, torch.bfloat16):
        half = Poker.from_checkpoint(exported).to(dtype)
        with pytest.raises(ValueError, match=f"networks are {dtype}; sampling needs float32.*torch.autocast"):
            half.animate(image, [(32, 32, 3, 1)], n_samples=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the message advises works
        videos = poker.animate(image, [(32, 32, 3, 1)], n_samples=1)
    assert torch.isfinite(torch.as_tensor(np.asarray(videos, dtype=np.float32))).all()


def test_export_checks_the_zoo_name_before_writing(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPOKE_HOME", str(tmp_path / "home"))
    out = tmp_path / "export"
    assert main(["export", "--ckpt", str(exported), "--out", str(out), "--name", "bad name"]) == 2
    assert "invalid model name" in capsys.readouterr().err
    assert not out.exists() and zoo.names() == []
    # Parallel exports of one name: another process registers it between the early check and the registration.
    assert main(["export", "--ckpt", str(exported), "--out", str(tmp_path / "first"), "--name", "sweep"]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(zoo, "is_registered", lambda name: False)  # as seen before the other process registered
        assert main(["export", "--ckpt", str(exported), "--out", str(out), "--name", "sweep"]) == 2
    assert "is taken" in (error := capsys.readouterr().err) and "exported to" in error and "not registered" in error
    assert zoo.entries()["sweep"]["path"].endswith("first")
    shutil.rmtree(out)
    # A registry that cannot be written was found after the export (an unregistered folder stayed, and the error
    # was "[Errno 17] File exists" without naming the registry).
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    monkeypatch.setenv("IPOKE_HOME", str(a_file))
    for command in (["export", "--ckpt", str(exported), "--out", str(out), "--name", "good"],
                    ["zoo", "register", "good", str(exported)]):
        assert main(command) == 2
        assert (f"the model registry {a_file / 'models.yaml'} cannot be written: {a_file} is a file, so nothing can "
                "be created inside it; set IPOKE_HOME to a writable folder") in capsys.readouterr().err
    assert not out.exists()


def test_sample_and_evaluate_name_a_checkpoint_they_cannot_load(tmp_path, make_tiny_poker, capsys):
    """A file that is no checkpoint, a stage-1 checkpoint, and a cINN checkpoint whose weights do not fit this
    version's networks (an older architecture) are one-line errors of `ipoke sample` and `ipoke evaluate` (exit 2),
    not tracebacks; nothing is written."""
    import cv2

    from ipoke.models.base import NETWORKS_KEY

    poker = make_tiny_poker()
    networks = {name: getattr(poker, name) for name in ("autoencoder", "image_encoder", "poke_encoder", "cinn")}
    state = {f"{name}.{key}": value for name, network in networks.items()
             for key, value in network.state_dict().items()}
    key = next(key for key, value in state.items() if "skip" in key and value.ndim == 4 and value.shape[-1] == 3)
    state[key] = state[key][..., 1:2, 1:2].clone()  # as saved by a version with 1x1 skip convs
    old_architecture = tmp_path / "old.ckpt"
    torch.save({NETWORKS_KEY: {name: network.spec() for name, network in networks.items()}, "state_dict": state},
               old_architecture)
    stage1 = tmp_path / "autoencoder.ckpt"
    torch.save({NETWORKS_KEY: {"autoencoder": networks["autoencoder"].spec()},
                "state_dict": {f"autoencoder.{k}": v for k, v in networks["autoencoder"].state_dict().items()}},
               stage1)
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    out, metrics = tmp_path / "out", tmp_path / "m.json"
    config = tmp_path / "model_config.yaml"  # unpickling text that starts with "c" raised ModuleNotFoundError
    config.write_text("class_path: ipoke.models.cinn.ConditionalINN\n")
    for ckpt, message in ((image, "not a readable checkpoint"), (config, "not a readable checkpoint"),
                          (stage1, "does not hold exactly one ImageEncoder"),
                          (old_architecture, "do not fit")):
        assert main(["sample", "--ckpt", str(ckpt), "--image", str(image), "--poke", "32,32,2,0",
                     "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(tmp_path / "unused"), "--out", str(metrics)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists() and not metrics.exists()


def test_an_export_from_another_architecture_is_not_called_damaged(tmp_path, make_tiny_poker):
    """Intact weights of an older architecture: the error names the tensor and does not ask to export again."""
    from ipoke.models.base import WEIGHTS_FILE, WeightsMismatchError

    folder = make_tiny_poker().export(tmp_path / "model")
    candidates = ((path, torch.load(path)) for path in sorted(folder.glob(f"*/{WEIGHTS_FILE}")))
    weights, state, key = next((path, state, key) for path, state in candidates for key, value in state.items()
                               if "skip" in key and value.ndim == 4 and value.shape[-1] == 3)
    state[key] = state[key][..., 1:2, 1:2].clone()  # as saved by a version with 1x1 skip convs
    torch.save(state, weights)
    with pytest.raises(WeightsMismatchError, match="do not fit") as raised:
        Poker.from_checkpoint(folder)
    assert "export it again" not in str(raised.value)


def test_sample_temperature_zero_gives_the_mode_for_any_seed(exported, tmp_path, capsys):
    import cv2

    from ipoke.data.video_io import read_gif

    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    base = ["sample", "--ckpt", str(exported), "--image", str(image), "--poke", "30,30,4,-3", "--scale", "1",
            "--samples", "2"]
    outs = {}
    for name, extra in {"t0_s0": ["--temperature", "0", "--seed", "0"], "t0_s5": ["--temperature", "0", "--seed", "5"],
                        "t1_s0": ["--seed", "0"]}.items():
        outs[name] = tmp_path / name
        assert main([*base, *extra, "--out", str(outs[name])]) == 0

    def frames(name, k):
        return read_gif(outs[name] / f"sample_0_{k}.gif").astype(np.int16)

    assert np.array_equal(frames("t0_s0", 0), frames("t0_s0", 1))  # r = 0: every sample is the same video
    assert np.array_equal(frames("t0_s0", 0), frames("t0_s5", 0))  # whatever the seed
    assert np.abs(frames("t1_s0", 0) - frames("t1_s0", 1)).max() > 0  # temperature 1 draws different videos
    assert json.loads((outs["t0_s5"] / "ipoke_sample.json").read_text())["temperature"] == 0.0
    poker = Poker.from_checkpoint(exported)
    calm, _ = poker.control_sensitivity(str(image), 30, 30, n_directions=2, seed=0, temperature=0.0)
    other_seed, _ = poker.control_sensitivity(str(image), 30, 30, n_directions=2, seed=9, temperature=0.0)
    torch.testing.assert_close(calm, other_seed)
    mode = poker.animate(str(image), [30, 30, 4.0, 0.0], n_samples=1, temperature=0.0)
    torch.testing.assert_close(calm[0], mode[0])  # direction 0 at the first default magnitude: the poke (4, 0)
    with pytest.raises(SystemExit):
        main([*base, "--temperature", "-1", "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="temperature"):
        poker.control_sensitivity(str(image), 30, 30, temperature=float("nan"))
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(exported), "--data", "unused", "--mode", "transfer", "--temperature", "0.5",
                 "--out", str(tmp_path / "tr")]) == 2
    assert "--temperature is for the poke and sensitivity modes" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "tr").exists()


def test_sample_command_sensitivity_mode_from_an_image_and_from_data(exported, tmp_path, synthetic_dataset):
    import cv2

    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(4).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    out = tmp_path / "sens_image"
    # One location, 8 directions x 2 magnitudes (half and full length of the given poke), one shared residual.
    assert main(["sample", "--ckpt", str(exported), "--image", str(image), "--poke", "64,48,6,-8", "--mode",
                 "sensitivity", "--scale", "1", "--out", str(out)]) == 0
    assert len(list(out.glob("sample_0_*.gif"))) == 16
    assert cv2.imread(str(out / "overview_0.png")).shape == (64, 17 * 64 + 16 * 4, 3)
    out_data = tmp_path / "sens_data"
    assert main(["sample", "--ckpt", str(exported), "--data", synthetic_dataset, "--n", "2", "--mode", "sensitivity",
                 "--scale", "1", "--out", str(out_data)]) == 0
    assert sorted(p.name for p in out_data.glob("overview_*.png")) == ["overview_0.png", "overview_1.png"]
    assert len(list(out_data.glob("sample_1_*.mp4"))) == 16


def _register_many(home: str, folder: str, prefix: str, count: int) -> None:
    os.environ["IPOKE_HOME"] = home
    for index in range(count):
        zoo.register(f"{prefix}{index}", folder)


def test_zoo_keeps_every_model_registered_at_the_same_time(exported, tmp_path, monkeypatch):
    # Unlocked read-modify-write and one shared temporary file name: 15 of 60 names survived four processes.
    import multiprocessing

    home = str(tmp_path / "home")
    monkeypatch.setenv("IPOKE_HOME", home)
    folder = str(Poker.from_checkpoint(exported).export(tmp_path / "model"))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_register_many, args=(home, folder, f"p{worker}_", 6)) for worker in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert len(zoo.names()) == 24
    assert sorted(path.name for path in (tmp_path / "home").iterdir()) == [".models.yaml.lock", "models.yaml"]


def test_zoo_names_home_folders_and_hand_written_entries(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("IPOKE_HOME", "~/models")  # quoted in a shell: was a folder named ~ in the working folder
    assert zoo.registry_file() == tmp_path / "user" / "models" / "models.yaml"
    folder = Poker.from_checkpoint(exported).export(tmp_path / "model")
    zoo.register("synthetic_64", folder)
    # A folder of the registered name in the working folder does not hide the model (unless it is a model itself).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic_64").mkdir()
    assert Poker.from_checkpoint("synthetic_64").size == 64
    # A manifest that is not one is refused in one line (was an AttributeError traceback).
    broken = tmp_path / "broken"
    broken.mkdir()
    for text in ("", "- a\n", "networks: [\n"):
        (broken / "poker.yaml").write_text(text)
        assert main(["zoo", "register", "broken", str(broken)]) == 2
        assert "is not the manifest of an exported model" in capsys.readouterr().err
    # A hand-written entry without a checksum: the registry is named as the problem (was KeyError: 'sha256').
    registry = zoo.registry_file().read_text()
    zoo.registry_file().write_text(f"mine:\n  path: {folder}\n")
    assert main(["zoo", "list"]) == 2
    assert "each with a path and a sha256" in capsys.readouterr().err
    # A hand-written name that YAML reads as a number is that name (sorting names crashed with a TypeError).
    zoo.registry_file().write_text(registry + registry.replace("synthetic_64:", "2024:"))
    assert zoo.names() == ["2024", "synthetic_64"]
    assert Poker.from_checkpoint("2024").size == 64
    assert main(["zoo", "list"]) == 0 and "2024" in capsys.readouterr().out
    zoo.registry_file().write_text(registry.replace("synthetic_64:", "2024:") + registry.replace("synthetic_64:",
                                                                                                 "'2024':"))
    with pytest.raises(zoo.ZooError, match=r"lists \['2024'\] twice"):
        zoo.names()
    zoo.registry_file().write_text(registry)
    # An incomplete copy (its manifest but not every network) is refused; it was listed as fine and failed to load.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "poker.yaml").write_text((folder / "poker.yaml").read_text())
    assert main(["zoo", "register", "partial", str(partial)]) == 2
    assert "not a complete exported model" in capsys.readouterr().err
    # `ipoke evaluate` too: a folder holding one saved network does not hide the zoo name (it did, unlike sample).
    import shutil

    from ipoke.evaluation import load_model
    from ipoke.models.base import save_pretrained

    shutil.rmtree(tmp_path / "synthetic_64")
    save_pretrained(Poker.from_checkpoint(folder).autoencoder, tmp_path / "synthetic_64")
    assert load_model("synthetic_64").kind == "ipoke"
    save_pretrained(Poker.from_checkpoint(folder).autoencoder, tmp_path / "one_network")
    with pytest.raises(ModelLoadError, match="that folder is one network"):
        load_model("one_network")


def test_devices_this_machine_lacks_are_not_blamed_on_the_model(exported):
    for device, message in (("cpu:1", "the CPU has no index"), ("meta", "not available here"),
                            ("mps", "not available here"), ("xpu", "not available here")):
        if device in ("mps", "xpu") and getattr(getattr(torch, device, None), "is_available", lambda: False)():
            continue
        with pytest.raises(ValueError, match=rf"map_location '{device}': .*{message}"):
            Poker.from_checkpoint(exported, map_location=device)


def test_outputs_inside_a_file_are_refused_in_words(exported, tmp_path, capsys):
    a_file = tmp_path / "image.png"
    a_file.write_bytes(b"x")
    assert main(["export", "--ckpt", str(exported), "--out", str(a_file / "out")]) == 2
    assert f"{a_file} is a file, so the folder {a_file / 'out'} cannot be created inside it" in capsys.readouterr().err


def test_sensitivity_from_data_uses_each_clips_poke_length(exported, tmp_path, synthetic_dataset, monkeypatch, capsys):
    from ipoke import cli
    from ipoke.data.pokes import poke_map_from_coords

    seen, places = [], []
    real = Poker.control_sensitivity

    def spy(self, image, x, y, **kwargs):  # noqa: ANN001, ANN202
        seen.append(kwargs.get("magnitudes"))
        places.append((x, y))
        return real(self, image, x, y, **kwargs)

    monkeypatch.setattr(Poker, "control_sensitivity", spy)
    assert cli.main(["sample", "--ckpt", str(exported), "--data", synthetic_dataset, "--n", "2", "--mode",
                     "sensitivity", "--samples", "3", "--out", str(tmp_path / "s")]) == 0
    assert "--samples is ignored" in capsys.readouterr().err
    clips = Poker.from_checkpoint(exported).evaluation_clips(synthetic_dataset, split="test", seed=0, max_clips=2)
    assert len(seen) == 2
    # The sensitivity pokes the clip's pixel: its squares are the clip's own poke square (the clip's coordinate, a
    # pixel centre, was passed as a pixel, and Poker.prepare added another half pixel: one pixel right and down).
    poker = Poker.from_checkpoint(exported)
    for (x, y), index in zip(places, range(2)):
        coords = clips[index]["poke_coords"][0].numpy()
        _, poke, mapped = poker.prepare(np.zeros((64, 64, 3), np.uint8), [(x, y, 1.0, 0.0)])
        np.testing.assert_array_equal(np.floor(mapped[0, :2]), np.floor(coords[:2]))
        expected = poke_map_from_coords(np.array([[coords[0], coords[1], 1.0, 0.0]]), 64, poker.poke_size)
        np.testing.assert_array_equal(poke[0].numpy(), expected)
    for magnitudes, index in zip(seen, range(2)):
        length = float(np.hypot(*clips[index]["poke_coords"][0, 2:4].numpy()))
        assert magnitudes == pytest.approx((length / 2, length))
    with pytest.raises(SystemExit) as exit_info:  # argparse: a GIF cannot hold 200 fps (its delay became 0)
        main(["sample", "--ckpt", str(exported), "--data", synthetic_dataset, "--fps", "200", "--out",
              str(tmp_path / "f")])
    assert exit_info.value.code == 2 and "expected frames per second from 0.01 to 50" in capsys.readouterr().err


def test_evaluation_accumulator_takes_tensors_of_any_device_and_grad_state():
    from ipoke.evaluation import _Accumulator

    # Frame metrics come back as tensors on the metric device; numpy cannot read a CUDA tensor (or one that requires
    # grad), which broke every evaluation on a GPU once SSIM moved there. A grad-requiring tensor takes the same path.
    accumulator = _Accumulator()
    accumulator.add("ssim", torch.tensor([0.5, 1.0, float("nan")], requires_grad=True))
    accumulator.add("ssim", np.array([0.0]))
    assert accumulator.means() == {"ssim": pytest.approx(0.5)}


@pytest.mark.timeout(120)
def test_evaluate_ends_the_resimulation_workers(synthetic_dataset, monkeypatch):
    import multiprocessing

    from ipoke.evaluation import copy_first_frame_sampler, evaluate

    monkeypatch.setattr("ipoke.utils.cpu_threads", lambda limit=8: 2)  # worker processes even on a 1-core machine
    # control runs OpenCV's DIS in this process before the pool forks: a worker that then called cv2.setNumThreads
    # deadlocked (an earlier version's initializer did), so this test also guards against that hang.
    report = evaluate({"still": copy_first_frame_sampler}, synthetic_dataset, metrics=("psnr", "control"), n_clips=2,
                      samples=2, batch_size=2, progress=False)
    assert report["results"]["ground_truth_resimulated"]["psnr"] > report["results"]["still"]["psnr"]
    assert multiprocessing.active_children() == []


def test_a_second_export_or_sample_into_one_folder_is_refused_while_the_first_writes(exported, tmp_path, capsys,
                                                                                       synthetic_dataset):
    # Parallel runs into one --out used to delete each other's files while replacing it ("Directory not empty",
    # missing files); the folder is now held for the whole run, as for quickstart and data synth.
    from ipoke.utils import exclusive_output

    out, samples = tmp_path / "model", tmp_path / "samples"
    assert main(["export", "--ckpt", str(exported), "--out", str(out)]) == 0
    before = sorted(str(path.relative_to(out)) for path in out.rglob("*"))
    with exclusive_output(out, "test run"):
        assert main(["export", "--ckpt", str(exported), "--out", str(out)]) == 2
        assert f"another model export is writing {out.resolve()} right now" in capsys.readouterr().err
        with pytest.raises(FileExistsError, match="another model export"):
            Poker.from_checkpoint(exported).export(out)
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*")) == before
    sample = ["sample", "--ckpt", str(out), "--data", synthetic_dataset, "--n", "1", "--samples", "1", "--out",
              str(samples), "--scale", "1"]
    with exclusive_output(samples, "test run"):
        assert main(sample) == 2
        assert f"another ipoke sample is writing {samples.resolve()} right now" in capsys.readouterr().err
        assert not samples.exists()
    assert main(sample) == 0 and (samples / "overview_0.png").is_file()
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_a_model_whose_samples_hold_nan_is_refused_not_scored(synthetic_dataset):
    # NaN frames scored "n/a" for SSIM/PSNR, were dropped from the means, and read as black frames by the control
    # metrics' flow, whose errors then beat copying x0.
    from ipoke.evaluation import copy_first_frame_sampler, evaluate
    from ipoke.metrics.common import to_unit_range

    def diverged(batch, n_samples, generator):
        videos = copy_first_frame_sampler(batch, n_samples, generator).clone()
        videos[1:, :, 2] = math.nan  # every clip of the batch but its first
        return videos

    options = {"split": "train", "n_clips": 4, "batch_size": 2, "include_baselines": False, "device": "cpu",
               "progress": False, "samples": 2}
    for metrics in (("ssim", "control"), ("keypoints",)):
        with pytest.raises(ValueError, match=r"the samples of 'diverged' hold NaN or inf values \(clips \[1\]\)"):
            evaluate({"diverged": diverged}, synthetic_dataset, metrics=metrics, **options)
    with pytest.raises(ValueError, match="videos must be finite, but 1 of 2 values are NaN"):
        to_unit_range(torch.tensor([0.5, math.nan]))


def test_every_seed_the_command_accepts_seeds_the_clips():
    # Seeds above about 2.6e12 overflowed the generators once the evaluation had started; small seeds are unchanged.
    from ipoke import evaluation

    for seed in (10**14, 2**63 - 1):
        first, second = evaluation.clip_generators(seed, 5, 2)
        assert first.initial_seed() != second.initial_seed()
    assert evaluation.clip_generators(7, 2, 1)[0].initial_seed() == (7 * 1_000_003 + 2) * 7
