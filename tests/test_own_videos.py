"""A user's own footage, end to end through the command line, as docs/real_data.md "Your own videos" and "Training on
the result" describe it: mp4 files -> ``ipoke data prepare`` -> ``ipoke fit`` of the four tiny configs (the cINN
reading the stage-1 checkpoints where the configs say) -> ``ipoke export`` -> ``ipoke sample`` and ``ipoke evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ipoke.cli import main
from ipoke.data.video_io import write_video

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def swinging_bar_clip(n_frames: int, *, seed: int, height: int = 64, width: int = 80) -> np.ndarray:
    """uint8 ``(N, H, W, 3)``: a bar hinged at the bottom swinging over a still texture, like a poked stem."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.uniform(40, 200, (height, width, 3)).astype(np.float32), (0, 0), 2.0)
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    base = (width // 2 + int(rng.integers(-8, 9)), height - 6)
    amplitude, length = np.deg2rad(rng.uniform(15, 30)), int(rng.integers(30, 45))
    frames = []
    for t in range(n_frames):
        angle = amplitude * np.sin(2 * np.pi * t / n_frames)
        tip = (int(round(base[0] + length * np.sin(angle))), int(round(base[1] - length * np.cos(angle))))
        frame = background.astype(np.uint8).copy()
        cv2.line(frame, base, tip, colour, 4, cv2.LINE_AA)
        frames.append(frame)
    return np.stack(frames)


def _fit(stage: str, data: str, *extra: str) -> None:
    # One short epoch per stage: what matters here is that each stage finds its data and the stages find each other.
    assert main(["fit", "--config", str(CONFIGS / stage / "tiny.yaml"), f"--data.init_args.data_dir={data}",
                 "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                 *extra]) == 0, f"ipoke fit of the {stage} stage failed"


def test_own_mp4s_prepare_train_export_sample_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the configs write and read runs/<stage>/tiny relative to the working directory
    for index in range(6):
        write_video(tmp_path / "raw" / ("garden" if index % 2 else "kitchen") / f"clip_{index}.mp4",
                    swinging_bar_clip(24, seed=index), fps=10)  # H.264, as a camera or phone writes them
    # tiny.yaml cuts clips of 4 frames: prepare lag 4 beside the defaults (docs/real_data.md).
    assert main(["data", "prepare", "--videos", "raw", "--out", "data/mine", "--size", "64", "--lags", "4,10,20",
                 "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "6 videos (test 1, train 5)" in summary
    assert sorted(p.name for p in (tmp_path / "data" / "mine" / "videos").iterdir())[:2] == [
        "garden__clip_1", "garden__clip_3"]

    for stage in ("autoencoder", "image_encoder", "poke_encoder"):
        _fit(stage, "data/mine")
    _fit("cinn", "data/mine")
    stage1 = {stage: tmp_path / "runs" / stage / "tiny" / "checkpoints" / "last.ckpt"
              for stage in ("autoencoder", "image_encoder", "poke_encoder")}
    assert all(path.exists() for path in stage1.values())
    # validate and test run the same way, from a checkpoint (real data has no val split: the test split stands in).
    for stage, checkpoint in stage1.items():
        assert main(["validate", "--config", str(CONFIGS / stage / "tiny.yaml"), "--data.init_args.data_dir=data/mine",
                     "--trainer.limit_val_batches=1", f"--ckpt_path={checkpoint}"]) == 0, stage
    capsys.readouterr()
    assert main(["test", "--config", str(CONFIGS / "cinn" / "tiny.yaml"), "--data.init_args.data_dir=data/mine",
                 "--trainer.limit_test_batches=1", "--ckpt_path=runs/cinn/tiny/checkpoints/last.ckpt"]) == 0
    printed = capsys.readouterr().out
    assert "test/nll" in printed and "val/" not in printed  # the test split's figures are named as such

    assert main(["export", "--ckpt", "runs/cinn/tiny/checkpoints/last.ckpt", "--out", "models/mine"]) == 0
    from ipoke.models.autoencoder import VideoAutoencoder
    from ipoke.sampling import Poker

    poker = Poker.from_checkpoint("models/mine")
    assert (poker.size, poker.n_frames) == (64, 4)
    # The exported model carries the stage-1 networks the user trained, unchanged by the cINN's training.
    trained = VideoAutoencoder.from_checkpoint(stage1["autoencoder"]).state_dict()
    with pytest.raises(ValueError, match="holds no VideoAutoencoder: its networks are \\['poke_encoder'\\]"):
        VideoAutoencoder.from_checkpoint(stage1["poke_encoder"])  # the wrong stage's checkpoint, named as such
    exported = poker.autoencoder.state_dict()
    assert trained.keys() == exported.keys()
    assert all(torch.equal(trained[key], exported[key].cpu()) for key in trained)

    assert main(["sample", "--ckpt", "models/mine", "--data", "data/mine", "--n", "2", "--samples", "2", "--scale",
                 "1", "--out", "samples"]) == 0
    overview = cv2.imread(str(tmp_path / "samples" / "overview_0.png"))
    assert overview.shape == (64, 4 * 64 + 3 * 4, 3)  # x0 with the poke, the real clip, two samples
    assert len(list((tmp_path / "samples").glob("sample_*.mp4"))) == 4

    assert main(["evaluate", "--ckpt", "models/mine", "--data", "data/mine", "--metrics", "ssim,psnr,diversity",
                 "--n-clips", "3", "--samples", "2", "--batch-size", "2", "--name", "mine", "--out",
                 "metrics.json"]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["settings"]["split"] == "test" and report["settings"]["n_clips"] == 3
    assert set(report["results"]) == {"mine", "copy_x0"}  # no re-simulated truth on real footage
    mine, copy = report["results"]["mine"], report["results"]["copy_x0"]
    assert 0 < mine["ssim"] <= 1 and mine["diversity/mse"] > 0 and copy["diversity/mse"] == 0
    # Two batches per stage leave the decoder far from the frames; copying x0 of this still-background footage is
    # much closer: the evaluation measures the model's own videos, not the real ones.
    assert np.isfinite(mine["psnr"]) and mine["psnr"] < copy["psnr"] - 3
