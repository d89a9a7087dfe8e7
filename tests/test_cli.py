"""The ipoke command: help texts and the data subcommands end to end."""

from __future__ import annotations

import pytest

from ipoke.cli import main
from ipoke.data.format import PreparedDataset


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("fit", "validate", "test", "data"):
        assert command in text
    assert "predict" not in text


def test_version_and_python_dash_m(capsys):
    import subprocess
    import sys

    import ipoke

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"ipoke {ipoke.__version__}\n"
    # `python -m ipoke` is the command where the scripts folder is not on PATH.
    done = subprocess.run([sys.executable, "-m", "ipoke", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"ipoke {ipoke.__version__}\n"


def test_predict_points_to_the_commands_that_write_videos(capsys):
    # Lightning's predict loop would run and throw every prediction away (no module has a predict step).
    assert main(["predict", "--config", "configs/autoencoder/tiny.yaml"]) == 2
    error = capsys.readouterr().err
    assert "no `predict` command" in error and "ipoke sample" in error and "ipoke evaluate" in error


@pytest.mark.parametrize("command", [["data", "synth"], ["data", "info"], ["data", "index"]])
def test_subcommand_help_explains_options(capsys, command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    assert "usage: ipoke" in text
    if command[1] == "synth":
        for option in ("--out", "--videos", "--frames", "--size", "--seed", "--workers"):
            assert option in text


def test_data_synth_info_and_index(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--videos", "5", "--frames", "3", "--size", "32",
                 "--workers", "1", "--test-fraction", "0.2", "--val-fraction", "0.2"]) == 0
    data = PreparedDataset(out)
    assert data.splits() == {"train": 3, "val": 1, "test": 1}
    assert main(["data", "index", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "5 videos" in lines[0]
    # Per split: videos, objects, frames, clips per flow lag (one start frame per synthetic video), masks, keypoints.
    assert lines[1].split() == ["split", "videos", "objects", "frames", "min/median/max", "clips@1", "clips@2",
                                "clips@3", "masks", "keypoints"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["train"][0] == "3" and rows["train"][2:] == ["4/4/4", "3", "3", "3", "3", "3"]
    assert rows["test"][0] == "1" and rows["test"][2:] == ["4/4/4", "1", "1", "1", "1", "1"]
    # An interrupted run is not made "complete" by `ipoke data index` (readers then took it for a whole dataset).
    import json

    index_file = out / "ipoke_dataset.json"
    index_file.write_text(json.dumps({**json.loads(index_file.read_text()), "complete": False}))
    assert main(["data", "index", str(out)]) == 2
    assert "unfinished run" in capsys.readouterr().err
    assert json.loads(index_file.read_text())["complete"] is False


def test_data_errors_are_clear(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")  # --out below a file was a NotADirectoryError traceback
    assert main(["data", "synth", "--out", str(tmp_path / "afile" / "sub"), "--videos", "2", "--workers", "1"]) == 2
    assert "afile is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path / "taken"), "--videos", "2", "--size", "32"]) == 2
    assert "not an ipoke dataset" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # A damaged meta.json of one video was a JSONDecodeError traceback.
    data = tmp_path / "data"
    synth = ["data", "synth", "--out", str(data), "--videos", "3", "--frames", "2", "--size", "16", "--workers", "1"]
    assert main(synth) == 0
    meta = next((data / "videos").glob("*/meta.json"))
    meta.write_text("{bad")
    assert main(["data", "index", str(data)]) == 2
    error = capsys.readouterr().err
    assert f"{meta} is damaged (JSONDecodeError" in error and f"delete the folder {meta.parent}" in error
    import shutil

    shutil.rmtree(meta.parent)  # what the message advises: the rerun makes the video again
    assert main(synth) == 0 and main(["data", "index", str(data)]) == 0 and meta.is_file()


@pytest.mark.parametrize("options, message", [
    (["--videos", "0"], "argument --videos: must be at least 1, got 0"),
    (["--frames", "0"], "argument --frames: must be at least 1"),
    (["--workers", "0"], "argument --workers: must be at least 1"),
    (["--val-fraction", "1.5"], "argument --val-fraction: expected a fraction in [0, 1)"),
    (["--test-fraction", "nan"], "argument --test-fraction: expected a fraction in [0, 1)"),
    (["--background-poke-fraction", "2"], "argument --background-poke-fraction: expected a fraction in [0, 1]"),
])
def test_data_synth_rejects_bad_numbers_before_writing(tmp_path, capsys, options, message):
    out = tmp_path / "d"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", str(out), "--videos", "4", "--size", "32", *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("options, message", [
    (["--size", "8"], "size (--size) must be >= 16"),
    (["--val-fraction", "0.6", "--test-fraction", "0.6"], "val_fraction + test_fraction must be below 1"),
    (["--videos", "2", "--val-fraction", "0.4", "--test-fraction", "0.4"], "2 videos leave none for train"),
    (["--seed", "-1"], "seed (--seed) must be >= 0"),
])
def test_data_synth_rejects_impossible_settings_in_one_line(tmp_path, capsys, options, message):
    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--videos", "4", "--size", "32", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ipoke: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_data_synth_resume_names_the_changed_option(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--videos", "2", "--frames", "2", "--size", "16",
                 "--workers", "1", "--val-fraction", "0", "--test-fraction", "0"]) == 0
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(out), "--videos", "3", "--frames", "2", "--size", "16",
                 "--workers", "1", "--val-fraction", "0", "--test-fraction", "0"]) == 2
    err = capsys.readouterr().err
    assert "videos 2 (this run: 3)" in err and "'size'" not in err and "background_poke_fraction" not in err


@pytest.mark.parametrize("content, message", [("{\"format\": ", "not valid JSON"), ("[]", "JSON array")])
def test_data_info_on_a_damaged_index(tmp_path, capsys, content, message):
    out = tmp_path / "d"
    (out / "videos").mkdir(parents=True)
    (out / "ipoke_dataset.json").write_text(content)
    for command in ("info", "index"):
        assert main(["data", command, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ipoke: error: {out / 'ipoke_dataset.json'} is damaged") and message in err
        assert "Traceback" not in err


def test_data_prepare_takes_a_single_video_file(tmp_path, capsys):
    import cv2
    import numpy as np

    video = tmp_path / "raw" / "square.mp4"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 40))
    for index in range(6):
        frame = np.full((40, 48, 3), 60, np.uint8)
        cv2.rectangle(frame, (8 + 2 * index, 10), (24 + 2 * index, 26), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    assert main(["data", "prepare", "--videos", str(video), "--out", str(tmp_path / "out"), "--size", "32",
                 "--lags", "2", "--no-progress"]) == 0
    assert "1 videos (train 1)" in capsys.readouterr().out
    assert PreparedDataset(tmp_path / "out").ids() == ["square"]


def test_data_synth_workers_default_to_the_cores_this_process_may_use(monkeypatch):
    # In a container limited to a few cores, os.cpu_count() reports the whole host; the default must not.
    import ipoke.utils
    from ipoke.cli import build_parser

    monkeypatch.setattr(ipoke.utils, "available_cores", lambda: 3)
    args = build_parser().parse_args(["data", "synth", "--out", "unused"])
    assert args.workers == 3


def test_device_names_the_cpu_as_the_models_loader_takes_it(tiny_model):
    # `--device cpu:0` was passed on as is, and torch.load cannot restore weights tagged "cpu:0": the model was
    # reported as damaged ("export it again").
    from ipoke.cli import UserError, _device
    from ipoke.sampling import Poker

    assert _device("cpu:0") == "cpu" and _device("cpu") == "cpu"
    assert Poker.from_checkpoint(tiny_model, map_location=_device("cpu:0")).device.type == "cpu"
    with pytest.raises(UserError, match="the CPU has no index; use --device cpu"):
        _device("cpu:1")
    with pytest.raises(UserError, match="not a device"):
        _device("tpu")
