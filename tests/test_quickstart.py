"""`ipoke quickstart` end to end on a tiny budget: every report file, sane numbers, resumable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ipoke import quickstart
from ipoke.cli import main
from ipoke.sampling import Poker


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    assert main(["quickstart", "--out", str(out), "--minutes", "0.4", "--videos", "30", "--device", "cpu"]) == 0
    return out


def test_report_files_and_model(quickstart_run):
    out = quickstart_run
    for name in ("metrics.json", "metrics_val.json", "report.md", "model/poker.yaml", "data/ipoke_dataset.json",
                 "example.png"):
        assert (out / name).is_file(), name
    gifs = sorted((out / "samples").glob("overview_*.gif"))
    assert len(gifs) >= 2
    report_text = (out / "report.md").read_text()
    assert "| ipoke |" in report_text and "| copy_x0 |" in report_text and "overview_0.gif" in report_text
    # Both held-out splits, each with its verdict against copying x0.
    for file_name, split in (("metrics.json", "test"), ("metrics_val.json", "val")):
        report = json.loads((out / file_name).read_text())
        assert report["settings"]["split"] == split and report["settings"]["temperature"] == 1.0
        assert len(report["per_clip"]["ipoke"]["control/object_epe"]) == report["settings"]["n_clips"]
        assert quickstart.control_verdict(report) in report_text
    poker = Poker.from_checkpoint(out / "model")
    # The CPU preset: 5 frames taking every second of the 10 simulated ones.
    assert poker.size == 64 and poker.n_frames == 5 and poker.frame_step == 2
    # Its gifs are never read as raw videos by `ipoke data prepare` on a folder above it.
    from ipoke.data.layouts import LayoutError, discover_videos

    with pytest.raises(LayoutError, match="no videos found"):
        discover_videos(out.parent)


def test_the_example_poke_is_the_evaluations_poke(quickstart_run, tmp_path):
    # The README and the summary suggest `ipoke sample --image example.png --poke <this>`: the same poke square as
    # the poke the evaluation drew for that clip.
    poker = Poker.from_checkpoint(quickstart_run / "model")
    path, poke = quickstart.write_example_image(tmp_path / "example.png", quickstart_run / "data", poker)
    clips = poker.evaluation_clips(quickstart_run / "data", split="test", seed=42)
    first_object_poke = next(i for i in range(len(clips)) if not clips[i]["background_poke"])
    clip = clips[first_object_poke]  # the first test clip was a background poke: nothing moves
    _, poke_map, mapped = poker.prepare(path, [[float(value) for value in poke.split(",")]])
    np.testing.assert_array_equal(np.floor(mapped[0, :2]), np.floor(clip["poke_coords"][0, :2].numpy()))
    np.testing.assert_array_equal(poke_map[0].abs().sum(0).numpy() > 0, clip["poke"].abs().sum(0).numpy() > 0)
    np.testing.assert_allclose(mapped[0, 2:], clip["poke_coords"][0, 2:].numpy(), atol=0.5 * 64 / 256)
    # An evaluation of fewer clips than the split (the GPU preset: 256 of 400) scores evenly spaced clips with pokes
    # seeded by their place among them: the example is picked among those, with their pokes (it was a clip never
    # scored, with a poke the evaluation never drew).
    real, asked = poker.evaluation_clips, []

    def evaluation_clips(data_dir, **options):
        asked.append(options.get("max_clips"))
        return real(data_dir, **options)

    poker.evaluation_clips = evaluation_clips
    _, poke = quickstart.write_example_image(tmp_path / "example.png", quickstart_run / "data", poker, max_clips=2)
    assert asked and set(asked) == {2}
    subset = real(quickstart_run / "data", split="test", seed=42, max_clips=2)
    candidates = [clip for clip in subset if not clip["background_poke"]]
    if candidates:  # else the val split's, as tested below
        _, _, mapped = poker.prepare(tmp_path / "example.png", [[float(value) for value in poke.split(",")]])
        np.testing.assert_array_equal(np.floor(mapped[0, :2]), np.floor(candidates[0]["poke_coords"][0, :2].numpy()))


def test_the_example_falls_back_to_the_val_split_when_every_test_poke_is_on_the_background(quickstart_run, tmp_path):
    # With few --videos every test clip can be a background poke: the example suggested a drag on the background.
    poker = Poker.from_checkpoint(quickstart_run / "model")
    real = poker.evaluation_clips

    def evaluation_clips(data_dir, *, split, seed, max_clips=None):
        clips = real(data_dir, split=split, seed=seed, max_clips=max_clips)
        if split == "test":
            return [{**clips[i], "background_poke": True} for i in range(len(clips))]
        return clips

    poker.evaluation_clips = evaluation_clips
    _, poke = quickstart.write_example_image(tmp_path / "example.png", quickstart_run / "data", poker)
    clips = real(quickstart_run / "data", split="val", seed=42)
    clip = clips[next(i for i in range(len(clips)) if not clips[i]["background_poke"])]
    x, y = (float(value) for value in poke.split(",")[:2])
    np.testing.assert_array_equal(np.floor([x * 64 / 256, y * 64 / 256]), np.floor(clip["poke_coords"][0, :2].numpy()))


def test_metrics_follow_the_evaluate_schema(quickstart_run):
    report = json.loads((quickstart_run / "metrics.json").read_text())
    assert set(report) == {"settings", "results", "unavailable", "per_clip", "per_clip_videos"}
    results = report["results"]
    assert {"ipoke", "copy_x0", "ground_truth_resimulated"} <= set(results)
    n_clips = report["settings"]["n_clips"]
    assert n_clips >= 2
    for name, row in results.items():
        assert row["n_clips"] == n_clips and row["n_samples"] == report["settings"]["samples"]
        for key in ("ssim", "psnr", "diversity/mse", "control/object_epe", "control/background_motion"):
            assert math.isfinite(row[key]), (name, key)
    assert results["copy_x0"]["diversity/mse"] == 0.0
    assert 0 <= results["ipoke"]["ssim"] <= 1
    # I3D needs 9 frames; the CPU preset's clips have 6, and the report says so instead of failing.
    assert "at least 9 frames" in report["unavailable"]["fvd"]
    assert "lpips" in report["unavailable"] or "lpips" in results["ipoke"]
    # Targeted keypoint accuracy on the novel species: a second pass over the same clips with keypoint pokes.
    scored = report["settings"]["n_keypoint_clips"]
    assert 0 <= scored <= n_clips
    assert len(report["per_clip"]["copy_x0"]["control/keypoint_error"]) == n_clips
    assert len(set(report["per_clip_videos"])) == len(report["per_clip_videos"]) == n_clips  # one clip per video
    if scored:
        assert results["copy_x0"]["control/keypoint_error"] >= 1.0  # only joints moving at least 1 px are poked
    assert "n_keypoint_clips" not in json.loads((quickstart_run / "metrics_val.json").read_text())["settings"]


def test_second_run_reuses_finished_stages(quickstart_run, capsys):
    before = (quickstart_run / "model" / "cinn" / "model.pt").stat().st_mtime_ns
    assert main(["quickstart", "--out", str(quickstart_run), "--minutes", "0.4", "--videos", "30",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for stage in ("autoencoder", "image_encoder", "poke_encoder", "cinn"):
        assert f"{stage}: reusing" in printed
    assert "note: the finished stages" not in printed  # the same --minutes: nothing to say
    assert (quickstart_run / "model" / "cinn" / "model.pt").stat().st_mtime_ns == before


def test_a_retrained_stage_retrains_the_cinn_and_is_exported(quickstart_run, capsys):
    # With one stage network deleted, the rerun trained it again but kept evaluating the old export (and a cINN
    # trained for the old encoder).
    import shutil

    shutil.rmtree(quickstart_run / "runs" / "poke_encoder")
    assert main(["quickstart", "--out", str(quickstart_run), "--minutes", "0.4", "--videos", "30",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "autoencoder: reusing" in printed and "poke_encoder: reusing" not in printed
    assert "cinn: retraining, as poke_encoder was retrained" in printed and "stage 4/5: exporting" in printed
    for stage in ("poke_encoder", "cinn", "autoencoder"):
        exported = (quickstart_run / "model" / stage / "model.pt").read_bytes()
        assert exported == (quickstart_run / "runs" / stage / "network" / "model.pt").read_bytes(), stage


def test_a_rerun_stopped_in_the_evaluation_leaves_no_report_of_the_earlier_model(quickstart_run, tmp_path,
                                                                                  monkeypatch):
    # report.md, metrics_val.json and the samples of the earlier run stayed beside the re-exported model and a new
    # metrics.json: the report praised a model that was no longer there.
    import shutil

    out = tmp_path / "quickstart"
    shutil.copytree(quickstart_run, out)
    shutil.rmtree(out / "runs" / "cinn")
    calls = []

    def evaluate_then_stop(*args, **kwargs):
        calls.append(kwargs["split"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    import ipoke.evaluation

    real_evaluate = ipoke.evaluation.evaluate
    monkeypatch.setattr(ipoke.evaluation, "evaluate", evaluate_then_stop)  # quickstart imports it when it runs
    assert main(["quickstart", "--out", str(out), "--minutes", "0.4", "--videos", "30", "--device", "cpu"]) == 130
    left = sorted(path.name for path in out.iterdir())
    assert calls == ["test", "val"] and "model" in left and "metrics.json" in left  # the new test-split metrics
    for stale in ("report.md", "metrics_val.json", "example.png", "samples"):
        assert stale not in left, stale


def test_other_settings_are_refused(quickstart_run, capsys):
    assert main(["quickstart", "--out", str(quickstart_run), "--videos", "31", "--device", "cpu"]) == 2
    assert "--fresh" in capsys.readouterr().err


def test_second_run_says_the_first_runs_training_time_and_budget(quickstart_run, capsys):
    report = (quickstart_run / "report.md").read_text()
    seconds = sum(json.loads((quickstart_run / "runs" / stage / "training.json").read_text())["seconds"]
                  for stage in quickstart.STAGE_SHARES)
    assert f"trained on cpu for {seconds / 60:.1f} minutes in all" in report  # not this invocation's wall time
    assert main(["quickstart", "--out", str(quickstart_run), "--minutes", "0.8", "--videos", "30",
                 "--device", "cpu"]) == 0
    assert "trained with a budget of 0.4 min, not the 0.8 min that --minutes gives them now" in capsys.readouterr().out
    assert f"for {seconds / 60:.1f} minutes in all" in (quickstart_run / "report.md").read_text()


@pytest.mark.parametrize("arguments, message", [
    (["--minutes", "nan"], "--minutes must be a number of minutes"),
    (["--minutes", "-1"], "--minutes must be a number of minutes"),
    (["--minutes", "inf"], "--minutes must be a number of minutes"),
    (["--videos", "5"], "--videos must be a whole number >= 6"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, capsys, arguments, message):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--device", "cpu", *arguments]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_fresh_never_deletes_a_folder_that_is_not_a_quickstart_output(tmp_path, capsys, monkeypatch):
    # `--fresh` deleted whatever --out named: the current folder (--out . or ""), a user's folder, a link.
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("keep me")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(precious, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for out, message in ((".", "is the current folder or above it"), ("", "is the current folder or above it"),
                         (str(precious), "holds no quickstart run"), (str(link), "is a symbolic link"),
                         (str(blocker), "is a file, not a folder"), (str(blocker / "sub"), "is a file, not a folder")):
        assert main(["quickstart", "--out", out, "--fresh", "--device", "cpu", "--minutes", "0.1"]) == 2, out
        assert message in capsys.readouterr().err, out
    assert (precious / "chapter1.tex").read_text() == "keep me" and blocker.read_text() == "x"


def test_ctrl_c_in_a_training_stage_is_an_interrupt(tmp_path, monkeypatch, capsys):
    # Lightning answers Ctrl-C inside fit with sys.exit(1): the command exited 1 without saying what was kept.
    class Interrupted:
        interrupted = True

        def fit(self, *args, **kwargs):
            raise SystemExit(1)

    monkeypatch.setattr(quickstart, "_trainer", lambda **kwargs: Interrupted())
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--videos", "6", "--device", "cpu"]) == 130
    assert "finished stages are kept; run the same command again" in capsys.readouterr().err

    # SIGTERM arrives as the command's Terminated (chained after Lightning's handler), which Lightning also ends
    # with sys.exit(1); and a group SIGTERM kills the data loader's worker first. Both are 143, not 130 or 1.
    from ipoke.utils import Terminated

    class TerminatedInFit(Interrupted):
        def fit(self, *args, **kwargs):
            try:
                raise Terminated
            except Terminated:
                raise SystemExit(1) from None

    class WorkerKilled(Interrupted):
        def fit(self, *args, **kwargs):
            raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Terminated. ")

    for trainer in (TerminatedInFit, WorkerKilled):
        monkeypatch.setattr(quickstart, "_trainer", lambda trainer=trainer, **kwargs: trainer())
        assert main(["quickstart", "--out", str(tmp_path / "qs"), "--videos", "6", "--device", "cpu"]) == 143
        assert "ipoke: terminated (SIGTERM); finished stages are kept" in capsys.readouterr().err


def test_autoencoder_stage_takes_the_perceptual_term(tmp_path):
    # check_autoencoder.py --perceptual compares the terms on the quickstart's autoencoder: the choice must reach the
    # loss (ssim by default), not just the hyperparameters.
    import torch

    _, default = quickstart._build_stage("autoencoder", quickstart.CPU_SETTINGS, tmp_path)
    network, plain = quickstart._build_stage("autoencoder", quickstart.CPU_SETTINGS, tmp_path, perceptual="none")
    assert default.hparams.perceptual == "ssim" and plain.hparams.perceptual == "none"
    torch.manual_seed(0)
    video = torch.rand(2, network.n_frames + 1, 3, 64, 64) * 2 - 1
    plain.load_state_dict(default.state_dict())
    with torch.no_grad():
        _, default_logs, _ = default.generator_loss(video, gan=False)
        _, plain_logs, _ = plain.generator_loss(video, gan=False)
    assert float(default_logs["perceptual"]) > 0.1  # 1 - SSIM of an untrained reconstruction of noise
    assert float(plain_logs["perceptual"]) == 0.0
    assert torch.allclose(default_logs["l1"], plain_logs["l1"])


def test_the_autoencoder_sees_more_motionless_clips_than_the_cinn(synthetic_dataset):
    """The CPU preset's autoencoder trains on a quarter of motionless clips (its decoder then returns x0 for the latent
    of a motionless clip); the cINN keeps 1 in 12 (its background pokes)."""
    import torch

    settings = quickstart.CPU_SETTINGS
    shares = {}
    for stage in ("autoencoder", "cinn"):
        module = quickstart._datamodule(synthetic_dataset, settings, 0, stage)
        module.setup("fit")
        torch.manual_seed(0)
        clips = [module.train_set[index % len(module.train_set)] for index in range(600)]
        static = [bool(clip["background_poke"]) and bool((clip["video"] == clip["video"][:1]).all()) for clip in clips]
        shares[stage] = sum(static) / len(static)
    assert settings.autoencoder_static_fraction == 0.25
    # Both shares include the dataset's own background-poke videos; the autoencoder's extra 1/4 - 1/12 shows.
    assert shares["autoencoder"] - shares["cinn"] > 0.08, shares


def _report(model: dict[str, list[float]], copy: dict[str, list[float]]) -> dict:
    """A report as ``evaluate`` writes it, from per-clip control errors."""
    def mean(values: list[float]) -> float:
        finite = [value for value in values if not math.isnan(value)]
        return sum(finite) / len(finite) if finite else math.nan

    means = {name: {key: mean(values) for key, values in rows.items()} for name, rows in (("ipoke", model),
                                                                                             ("copy_x0", copy))}
    return {"results": means, "per_clip": {"ipoke": model, "copy_x0": copy}}


def test_paired_standard_error_is_clustered_by_video():
    """Ten clips from each of three videos: the model is better on two videos and worse on the third. Read as 30
    independent clips it would be "better"; clustered by video the evidence is three videos, and it is not."""
    from ipoke.evaluation import compare_with_baseline, paired_difference

    copy = {"control/poke_epe": [1.0] * 30}
    model = {"control/poke_epe": [0.8] * 20 + [1.05] * 10}
    report = _report(model, copy)
    independent = paired_difference(report, "ipoke", "copy_x0", "control/poke_epe")
    differences = np.array(model["control/poke_epe"]) - 1.0
    assert independent["standard_error"] == pytest.approx(differences.std(ddof=1) / np.sqrt(30), rel=1e-9)
    assert compare_with_baseline(report, "ipoke")["control/poke_epe"]["verdict"] == "better"

    report["per_clip_videos"] = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    clustered = paired_difference(report, "ipoke", "copy_x0", "control/poke_epe")
    sums = [(differences[i:i + 10] - differences.mean()).sum() for i in (0, 10, 20)]
    assert clustered["standard_error"] == pytest.approx(np.sqrt(1.5 * np.sum(np.square(sums))) / 30, rel=1e-9)
    assert clustered["difference"] == pytest.approx(-0.35 / 3) and clustered["n_videos"] == 3
    assert compare_with_baseline(report, "ipoke")["control/poke_epe"]["verdict"] == "no clear difference"
    assert "over 30 clips of 3 videos" in quickstart.control_verdict(report)
    report["per_clip_videos"] = ["a"] * 30  # one video: no standard error, no verdict
    assert paired_difference(report, "ipoke", "copy_x0", "control/poke_epe") is None


def test_a_verdict_needs_the_student_t_margin_of_its_videos():
    """Three videos, the model lower on each by 0.1, 0.2 and 0.3 px: 3.5 standard errors of the paired difference
    (0.2 +- 0.058). Two standard errors (the margin until session 20) called that better; with 2 degrees of freedom
    the 95 % margin is 4.30 standard errors, so it is no clear difference. With 30 videos alike it is better."""
    from scipy import stats

    from ipoke.evaluation import compare_with_baseline

    copy = {"control/poke_epe": [1.0] * 3}
    model = {"control/poke_epe": [0.9, 0.8, 0.7]}
    comparison = compare_with_baseline(_report(model, copy), "ipoke")["control/poke_epe"]
    assert comparison["standard_error"] == pytest.approx(0.1 / np.sqrt(3))
    assert comparison["margin"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
    assert comparison["verdict"] == "no clear difference"
    many = compare_with_baseline(_report({"control/poke_epe": [0.9, 0.8, 0.7] * 10}, {"control/poke_epe": [1.0] * 30}),
                                 "ipoke")["control/poke_epe"]
    assert many["margin"] == pytest.approx(stats.t.ppf(0.975, 29) * many["standard_error"])
    assert many["verdict"] == "better"


def test_control_verdict_compares_with_copy_x0_clip_by_clip():
    copy = {"control/poke_epe": [1.4, 2.0, 1.0, 1.6], "control/object_epe": [0.70, 0.80, 0.75, 0.75]}
    # Lower at the poke on every clip by 0.1 +- 0.02: better. Over the object: higher on every clip: worse.
    model = {"control/poke_epe": [1.3, 1.88, 0.9, 1.52], "control/object_epe": [0.75, 0.85, 0.80, 0.81]}
    text = quickstart.control_verdict(_report(model, copy))
    poke_line, object_line = text.splitlines()[2:]
    assert "`control/poke_epe`" in poke_line and "1.400 px against 1.500 px" in poke_line
    assert "paired difference -0.100 ± 0.008 px over 4 clips (standard error; 95 % margin ±0.026)" in poke_line
    assert poke_line.endswith(": better than copying x0.")
    assert "`control/object_epe`" in object_line and object_line.endswith(": worse than copying x0.")
    # A lower mean that one clip decides is no verdict: differences -0.3, +0.1, +0.1, +0.05.
    noisy = {"control/poke_epe": [1.1, 2.1, 1.1, 1.65], "control/object_epe": model["control/object_epe"]}
    assert "no clear difference from copying x0" in quickstart.control_verdict(_report(noisy, copy)).splitlines()[2]
    # Clips where a metric does not apply (NaN) are left out of the pairs; none at all gives no line.
    partial = {**model, "control/poke_epe": [math.nan, 1.88, 0.9, 1.52]}
    assert "over 3 clips" in quickstart.control_verdict(_report(partial, copy)).splitlines()[2]
    nothing = {**model, "control/poke_epe": [math.nan] * 4}
    assert "poke_epe" not in quickstart.control_verdict(_report(nothing, copy))
    assert quickstart.control_verdict({"results": {}, "per_clip": {}}) == ""
    # With targeted keypoint accuracy, a third line: differences -0.4, -0.3, -0.4, -0.4.
    joints = {**model, "control/keypoint_error": [1.5, 1.7, 1.2, 1.9]}
    copy_joints = {**copy, "control/keypoint_error": [1.9, 2.0, 1.6, 2.3]}
    line = quickstart.control_verdict(_report(joints, copy_joints)).splitlines()[-1]
    assert "where a joint poked with its own motion ends (`control/keypoint_error`)" in line
    assert line.endswith(": better than copying x0.")


def test_gpu_preset_stages_build_and_take_a_training_step(synthetic_dataset, tmp_path):
    # The GPU preset only runs on a lent GPU, where a device session has minutes: build its four stages here and take
    # one optimiser step of each on CPU (fp32, batch 2) so that a shape or config error shows in CI, not there.
    import dataclasses

    import lightning as L
    import torch

    from ipoke.models.base import load_network, save_pretrained

    settings = dataclasses.replace(quickstart.GPU_SETTINGS, batch_size=2)
    runs = tmp_path / "runs"
    for stage in quickstart.STAGE_SHARES:  # the cINN last: it loads the three saved stage-1 networks
        network, module = quickstart._build_stage(stage, settings, runs)
        before = {name: value.detach().clone() for name, value in network.named_parameters()}
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=runs / stage)
        trainer.fit(module, datamodule=quickstart._datamodule(synthetic_dataset, settings, 0, stage))
        assert trainer.global_step >= 1, stage
        changed = [name for name, value in network.named_parameters() if not torch.equal(value, before[name])]
        assert changed, f"one {stage} step changed no parameter"
        save_pretrained(network.cpu(), runs / stage / "network")
    cinn = load_network(runs / "cinn" / "network")
    assert cinn.z_dim == settings.z_dim and cinn.static_reference
