"""``prepare_dataset`` on tiny lossless videos written here: exact frames, sane flow, splits, resuming, bad input."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from ipoke.data.format import DatasetFormatError, PreparedDataset
from ipoke.data.layouts import LayoutError, VideoSource
from ipoke.data.prepare import (
    SETTINGS_FILE,
    PrepareError,
    add_prepare_arguments,
    assign_splits,
    grabcut_foreground,
    prepare_dataset,
    run_prepare,
)
from ipoke.data.video_io import write_video

LAGS = (2, 4)


def texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.uniform(0, 255, (100, 200, 3)).astype(np.float32), (0, 0), 1.5)
    return cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def panning_clip(n_frames: int, *, seed: int = 0, height: int = 32, width: int = 40, speed: int = 1) -> np.ndarray:
    """uint8 (N, H, W, 3): a window sliding left over a texture, so the content moves right by ``speed`` px/frame."""
    image = texture(seed)
    return np.stack([image[20:20 + height, 80 - t * speed:80 - t * speed + width] for t in range(n_frames)])


def write_frame_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


@pytest.fixture
def raw(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A raw folder: two PNG frame folders and an FFV1 (lossless) mkv, 40x32 frames; returns the clips by id."""
    clips = {"walk": panning_clip(9, seed=0), "pan": panning_clip(10, seed=1), "sub__jump": panning_clip(8, seed=2)}
    root = tmp_path / "raw"
    write_frame_folder(root / "walk", clips["walk"])
    write_video(root / "pan.mkv", clips["pan"], codec="ffv1")
    write_frame_folder(root / "sub" / "jump", clips["sub__jump"])
    return root, clips


def centre(clip: np.ndarray) -> np.ndarray:
    """The centred 32x32 crop of 40x32 frames (what resize='crop' keeps at size 32)."""
    return clip[:, :, 4:36]


def interior_mean(flow: np.ndarray) -> np.ndarray:
    return np.asarray(flow, np.float32)[..., 6:-6, 6:-6].mean(axis=(-1, -2))


def test_prepare_round_trip_frames_flow_and_index(raw, tmp_path):
    root, clips = raw
    result = prepare_dataset(root, tmp_path / "out", size=32, lags=LAGS, progress=False)
    assert sorted(result.written) == sorted(clips) and not result.skipped and not result.failed
    dataset = PreparedDataset(tmp_path / "out")
    assert dataset.size == 32 and dataset.flow_lags == list(LAGS)
    assert dataset.index["source"] == "prepare" and dataset.index["settings"]["flow_method"] == "dis"
    for video_id, clip in clips.items():
        video = dataset.video(video_id)
        np.testing.assert_array_equal(video.frames, centre(clip))  # lossless source, no resampling at size S
        n_frames = len(clip)
        np.testing.assert_array_equal(video.flow_starts, np.arange(n_frames - max(LAGS)))
        assert video.flow.shape == (n_frames - max(LAGS), len(LAGS), 2, 32, 32) and video.flow.dtype == np.float16
        for lag_index, lag in enumerate(LAGS):  # content moves right 1 px per frame
            np.testing.assert_allclose(interior_mean(video.flow[:, lag_index]), [[lag, 0]] * len(video.flow_starts),
                                       atol=0.3)
        assert video.masks is None and video.meta["raw_size"] == [32, 40]
    assert dataset.video("pan").meta["source_file"] == "pan.mkv" and dataset.video("pan").meta["fps"] == 10
    assert dataset.video("sub__jump").meta["source_file"] == "sub/jump"
    assert (tmp_path / "out" / SETTINGS_FILE).is_file()


def test_frame_step_and_flow_stride(raw, tmp_path):
    root, clips = raw
    prepare_dataset(root, tmp_path / "out", size=32, lags=(1, 2), frame_step=2, flow_stride=2, exclude=["sub*"],
                    progress=False)
    dataset = PreparedDataset(tmp_path / "out")
    assert sorted(dataset.ids()) == ["pan", "walk"]
    video = dataset.video("pan")
    np.testing.assert_array_equal(video.frames, centre(clips["pan"])[::2])  # frames 0, 2, ..., 8
    np.testing.assert_array_equal(video.flow_starts, [0, 2])  # starts where lag 2 (4 raw frames) fits
    # Two raw frames per kept frame: lag 1 = 2 px.
    np.testing.assert_allclose(interior_mean(video.flow[:, 0]), [[2, 0]] * 2, atol=0.3)
    np.testing.assert_allclose(interior_mean(video.flow[:, 1]), [[4, 0]] * 2, atol=0.3)
    assert video.meta["fps"] == 5


def test_flow_resolution_rescales_vectors_to_size(tmp_path, monkeypatch):
    import ipoke.data.prepare as prepare_module

    seen_shapes = set()
    real_make_flow_estimator = prepare_module.make_flow_estimator

    def recording_estimator(method, **options):
        estimator = real_make_flow_estimator(method, **options)
        original = estimator.estimate_lags

        def estimate_lags(frames, lags):
            seen_shapes.update(frame.shape for frame in frames)
            return original(frames, lags)

        estimator.estimate_lags = estimate_lags
        return estimator

    monkeypatch.setattr(prepare_module, "make_flow_estimator", recording_estimator)
    # 64 x 80 raw frames panning 2 px per frame: 1 px per frame at S = 32.
    write_frame_folder(tmp_path / "raw" / "big", panning_clip(7, height=64, width=80, speed=2))
    result = prepare_dataset(tmp_path / "raw", tmp_path / "out", size=32, lags=(1, 2), flow_resolution=128,
                             progress=False)
    assert result.written == ["big"] and seen_shapes == {(64, 64, 3)}
    video = PreparedDataset(tmp_path / "out").video("big")
    assert video.flow.shape == (5, 2, 2, 32, 32)
    # Estimated at 64 px (capped at the raw side, not 128), where it is 2 and 4 px, and rescaled to pixels at 32.
    np.testing.assert_allclose(interior_mean(video.flow[:, 0]), [[1, 0]] * 5, atol=0.2)
    np.testing.assert_allclose(interior_mean(video.flow[:, 1]), [[2, 0]] * 5, atol=0.3)


def test_squash_resize_keeps_the_whole_frame(raw, tmp_path):
    root, clips = raw
    prepare_dataset(root, tmp_path / "out", size=16, lags=LAGS, resize="squash", exclude=["sub*", "pan"],
                    progress=False)
    frames = PreparedDataset(tmp_path / "out").video("walk").frames
    expected = cv2.resize(clips["walk"][0], (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(frames[0], expected)


def test_resume_skips_finished_redoes_interrupted_and_relabels(raw, tmp_path, monkeypatch):
    root, _ = raw
    out = tmp_path / "out"
    import ipoke.data.format as format_module

    real_save = np.save
    calls = {"flow": 0}

    def interrupted_save(path, array, *args, **kwargs):
        if Path(path).name == "flow.npy":
            calls["flow"] += 1
            if calls["flow"] == 2:  # the second video is interrupted while its files are written
                raise KeyboardInterrupt
        return real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(format_module.np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    monkeypatch.setattr(format_module.np, "save", real_save)
    finished = [path.name for path in (out / "videos").iterdir()]
    assert len(finished) == 1 and not finished[0].startswith(".")  # nothing half-written, no index yet
    assert not (out / "ipoke_dataset.json").exists()
    (out / "videos" / ".ghost.tmp").mkdir()  # a stale folder, e.g. from a killed worker
    # A run killed between writing meta.json and the rename leaves a temporary folder that holds one: it was read as
    # a finished video named '.<id>.pid<N>.<rand>.tmp' (refused as an id) and counted as finished.
    import shutil

    from ipoke.data.format import unfinished_prepare_message

    shutil.copytree(out / "videos" / finished[0], out / "videos" / f".{finished[0]}.pid99999.abcd1234.tmp")
    assert "(1 videos finished" in unfinished_prepare_message(out)

    second = prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    assert second.skipped == finished and len(second.written) == 2
    assert not [path.name for path in (out / "videos").iterdir() if path.name.startswith(".")]
    frames_before = np.load(out / "videos" / "walk" / "frames.npy")

    third = prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    assert third.written == [] and len(third.skipped) == 3
    np.testing.assert_array_equal(np.load(out / "videos" / "walk" / "frames.npy"), frames_before)

    split_file = tmp_path / "splits.txt"
    split_file.write_text("walk test\npan.mkv, train\nsub/jump\ttest\n")
    fourth = prepare_dataset(root, out, size=32, lags=LAGS, split_file=split_file, progress=False)
    assert fourth.written == []
    assert PreparedDataset(out).splits() == {"test": 2, "train": 1}
    before = {meta["id"]: meta["split"] for meta in second.index["videos"]}
    wanted = {"walk": "test", "pan": "train", "sub__jump": "test"}
    assert sorted(fourth.relabelled) == sorted(vid for vid in wanted if wanted[vid] != before[vid])
    assert json.loads((out / "videos" / "walk" / "meta.json").read_text())["split"] == "test"

    with pytest.raises(PrepareError, match="other settings.*size: 32 -> 16"):
        prepare_dataset(root, out, size=16, lags=LAGS, progress=False)
    # A dataset prepared before DIS chained the frames in between (session 15) records no chain_hop: it resumes
    # with --dis-chain 0 only; one prepared before DIS padded its frames (session 12) records no pad_factor either.
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert settings["flow_options"] == {"pad_factor": 4, "preset": "medium", "chain_hop": 5}
    del settings["flow_options"]["chain_hop"]
    (out / SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(PrepareError, match="other settings.*'chain_hop': 0.*'chain_hop': 5"):
        prepare_dataset(root, out, size=32, lags=LAGS, split_file=split_file, progress=False)
    assert prepare_dataset(root, out, size=32, lags=LAGS, split_file=split_file, progress=False,
                           flow_options={"chain_hop": 0}).written == []
    del settings["flow_options"]["pad_factor"]
    (out / SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(PrepareError, match="other settings.*'pad_factor': 1.*'pad_factor': 4"):
        prepare_dataset(root, out, size=32, lags=LAGS, split_file=split_file, progress=False,
                        flow_options={"chain_hop": 0})
    assert prepare_dataset(root, out, size=32, lags=LAGS, split_file=split_file, progress=False,
                           flow_options={"pad_factor": 1, "chain_hop": 0}).written == []
    settings["flow_options"] = {}  # what a Python call without flow_options recorded before session 12
    (out / SETTINGS_FILE).write_text(json.dumps(settings))
    assert prepare_dataset(root, out, size=32, lags=LAGS, split_file=split_file, progress=False,
                           flow_options={"pad_factor": 1, "chain_hop": 0}).written == []


def test_workers_give_the_same_dataset(raw, tmp_path):
    root, _ = raw
    prepare_dataset(root, tmp_path / "one", size=32, lags=LAGS, progress=False)
    prepare_dataset(root, tmp_path / "two", size=32, lags=LAGS, workers=2, progress=False)
    one, two = PreparedDataset(tmp_path / "one"), PreparedDataset(tmp_path / "two")
    assert one.videos == two.videos
    for video_id in one.ids():
        np.testing.assert_array_equal(one.video(video_id).frames, two.video(video_id).frames)
        np.testing.assert_array_equal(one.video(video_id).flow, two.video(video_id).flow)


def test_bad_videos_stop_the_run_or_are_skipped(raw, tmp_path):
    root, _ = raw
    write_frame_folder(root / "short", panning_clip(4))  # lags up to 4 need 5 frames
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match=r"broken\.mp4"):
        prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    assert not (out / "ipoke_dataset.json").exists()  # not mistaken for a complete dataset
    with pytest.raises(PrepareError, match=r"short.*4 frames.*at least 5"):
        prepare_dataset(root, out, size=32, lags=LAGS, exclude=["broken"], progress=False)
    result = prepare_dataset(root, out, size=32, lags=LAGS, on_error="skip", progress=False)
    assert sorted(result.failed) == ["broken", "short"]
    index = json.loads((out / "ipoke_dataset.json").read_text())
    assert sorted(video["id"] for video in index["videos"]) == ["pan", "sub__jump", "walk"]
    assert sorted(index["settings"]["failed"]) == ["broken", "short"]
    assert not (out / "videos" / "short").exists()
    # Every video failing under --skip-bad wrote a finished index of no videos, which passed for a dataset and
    # refused the corrected command (other settings); now nothing is left, and the corrected command runs.
    only_short = tmp_path / "only_short"
    write_frame_folder(only_short / "short", panning_clip(4))
    write_frame_folder(only_short / "shorter", panning_clip(3))
    fresh = tmp_path / "fresh"
    with pytest.raises(PrepareError, match=r"all 2 videos failed, so no dataset was written:\n  short: .*4 frames"):
        prepare_dataset(only_short, fresh, size=32, lags=LAGS, on_error="skip", progress=False)
    assert not fresh.exists()
    corrected = prepare_dataset(only_short, fresh, size=32, lags=(1, 2), on_error="skip", progress=False)
    assert sorted(corrected.written) == ["short", "shorter"]


def test_bad_folders_and_outputs(raw, tmp_path):
    root, _ = raw
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="no videos found"):
        prepare_dataset(empty, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
    cluttered = tmp_path / "cluttered"
    cluttered.mkdir()
    (cluttered / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetFormatError, match="not an ipoke dataset"):
        prepare_dataset(root, cluttered, size=32, lags=LAGS, progress=False)
    assert sorted(path.name for path in cluttered.iterdir()) == ["thesis.tex"]
    foreign = tmp_path / "foreign"
    (foreign / "videos").mkdir(parents=True)
    (foreign / "ipoke_dataset.json").write_text(json.dumps({"size": 32, "flow_lags": list(LAGS)}))
    with pytest.raises(PrepareError, match="did not make"):
        prepare_dataset(root, foreign, size=32, lags=LAGS, progress=False)
    with pytest.raises(PrepareError, match="lags"):
        prepare_dataset(root, tmp_path / "x", lags=(0, 2), progress=False)
    bad_split = tmp_path / "bad_split.txt"
    bad_split.write_text("walk\n")
    with pytest.raises(PrepareError, match="bad_split.txt:1"):
        prepare_dataset(root, tmp_path / "x", split_file=bad_split, progress=False)


def sources(*specs: tuple[str, str | None]) -> list[VideoSource]:
    return [VideoSource(video_id=vid, path=Path(vid), relative_path=f"{vid}.mp4", object_id=obj)
            for vid, obj in specs]


def test_random_split_is_seeded_and_keeps_objects_in_train():
    plain = sources(*[(f"v{i}", None) for i in range(10)])
    first = assign_splits(plain, test_fraction=0.3, seed=1)
    assert first == assign_splits(list(reversed(plain)), test_fraction=0.3, seed=1)
    assert sorted(first.values()).count("test") == 3
    assert first != assign_splits(plain, test_fraction=0.3, seed=2)
    plants = sources(("a0", "A"), ("a1", "A"), ("a2", "A"), ("a3", "A"), ("b0", "B"), ("b1", "B"), ("c0", "C"))
    by_video = assign_splits(plants, test_fraction=0.25, seed=0)
    for plant, expected_test in (("a", 1), ("b", 1), ("c", 0)):  # each plant with >= 2 takes: some in test, not all
        splits = [split for vid, split in by_video.items() if vid.startswith(plant)]
        assert splits.count("test") == expected_test and "train" in splits
    by_object = assign_splits(plants, test_fraction=0.34, seed=0, split_by="object")
    test_objects = {vid[0] for vid, split in by_object.items() if split == "test"}
    assert len(test_objects) == 1
    assert all((split == "test") == (vid[0] in test_objects) for vid, split in by_object.items())
    assert set(assign_splits(plain, test_fraction=0.0).values()) == {"train"}


def test_split_file_names_and_unlisted(tmp_path):
    videos = sources(("walk", None), ("run", None), ("sit", None))
    split_file = tmp_path / "splits.txt"
    split_file.write_text("# name split\nwalk.mp4 val\nrun test\n")
    with pytest.raises(PrepareError, match="does not name 1"):
        assign_splits(videos, split_file=split_file)
    assert assign_splits(videos, split_file=split_file, unlisted="train") == {
        "walk": "val", "run": "test", "sit": "train"}
    assert assign_splits(videos, split_file=split_file, unlisted="skip")["sit"] is None


def test_split_file_names_match_in_either_unicode_form(tmp_path):
    # The file on disk came from macOS or a zip (decomposed "e" + accent), the split file was typed on Linux
    # (composed): "does not name 1 of the videos, e.g. ['café.mkv']", naming what the file visibly contained.
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "caf\u00e9")
    videos = [VideoSource(video_id="cafe", path=Path("x"), relative_path=f"{decomposed}.mkv"),
              VideoSource(video_id="tea", path=Path("y"), relative_path="tea.mkv")]
    split_file = tmp_path / "splits.txt"
    split_file.write_text("caf\u00e9.mkv test\ntea train\n", encoding="utf-8")
    assert assign_splits(videos, split_file=split_file) == {"cafe": "test", "tea": "train"}


def test_grabcut_finds_a_central_object():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)  # dark noisy background
    cv2.circle(frame, (32, 34), 12, (250, 220, 40), -1)
    mask, ok = grabcut_foreground(frame)
    assert ok and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert mask[30:38, 28:36].mean() > 0.95 and mask[:6, :6].max() == 0 and mask[:, :10].max() == 0
    uniform, ok = grabcut_foreground(np.zeros((32, 32, 3), np.uint8))
    assert uniform.shape == (32, 32) and uniform.dtype == np.uint8 and isinstance(ok, bool)


def test_grabcut_draws_the_same_random_numbers_whatever_ran_before(monkeypatch):
    # GrabCut's k-means++ draws from OpenCV's global generator: unseeded, masks changed with --workers and with the
    # videos a worker had done before (the session-20 reproducibility hunt: up to 120 pixels per video).
    import ipoke.data.prepare as prepare_module

    grab_cut, draws = cv2.grabCut, []

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        draws.append(cv2.randu(np.zeros(4), 0.0, 1.0).copy())  # the generator's state GrabCut would start from
        return grab_cut(*args, **kwargs)

    monkeypatch.setattr(prepare_module.cv2, "grabCut", recording)
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for seed in (1, 2):
        cv2.setRNGSeed(seed)  # as another video's GrabCut calls would have left it
        grabcut_foreground(frame)
    assert len(draws) == 2 and np.array_equal(draws[0], draws[1])


def test_grabcut_masks_are_stored(raw, tmp_path):
    root, _ = raw
    prepare_dataset(root, tmp_path / "out", size=32, lags=LAGS, masks="grabcut", exclude=["sub*", "pan"],
                    progress=False)
    video = PreparedDataset(tmp_path / "out").video("walk")
    assert video.meta["has_masks"] and video.masks.shape == (9, 32, 32) and video.masks.dtype == np.uint8
    assert video.masks.max() <= 1


def test_command_line(raw, tmp_path, capsys):
    root, _ = raw
    parser = add_prepare_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--videos", str(root), "--out", str(tmp_path / "out"), "--size", "32", "--lags",
                              "2,4", "--exclude", "sub*", "--no-progress", "--test-fraction", "0.5"])
    assert args.lags == [2, 4] and args.flow_method == "dis" and args.resize == "crop"
    assert run_prepare(args) == 0
    assert "2 videos (test 1, train 1)" in capsys.readouterr().out
    write_frame_folder(root / "tiny", panning_clip(2))
    args = parser.parse_args(["--videos", str(root), "--out", str(tmp_path / "out2"), "--size", "32", "--lags",
                              "2,4", "--no-progress"])
    assert run_prepare(args) == 2
    assert "error:" in capsys.readouterr().err
    args.skip_bad = True
    assert run_prepare(args) == 1
    assert "FAILED" in capsys.readouterr().out and len(PreparedDataset(tmp_path / "out2")) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--videos", "x", "--out", "y", "--lags", "ten"])


def write_mp4(path: Path, frames: np.ndarray) -> Path:
    """A tiny mp4 written with OpenCV (mp4v), as a user's camera clip would be; RGB frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_a_single_video_file_is_a_dataset_of_one(tmp_path):
    video = write_mp4(tmp_path / "raw" / "square.mp4", panning_clip(8))
    result = prepare_dataset(video, tmp_path / "out", size=32, lags=LAGS, progress=False)
    data = PreparedDataset(tmp_path / "out")
    assert data.ids() == ["square"] and data.splits() == {"train": 1} and result.written == ["square"]
    assert data.video("square").frames.shape == (8, 32, 32, 3)
    assert data.videos[0]["source_file"] == "square.mp4"
    # The plants layout reads the take from a single file's name too; layouts of whole trees need the folder.
    plant = write_mp4(tmp_path / "raw" / "VID_3_1.mp4", panning_clip(6))
    prepare_dataset(plant, tmp_path / "plant", size=32, lags=LAGS, layout="plants", progress=False)
    assert PreparedDataset(tmp_path / "plant").videos[0]["plant"] == 3
    with pytest.raises(LayoutError, match="single video file; layout 'h36m' needs"):
        prepare_dataset(video, tmp_path / "never", size=32, lags=LAGS, layout="h36m", progress=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    with pytest.raises(LayoutError, match="notes.txt is a file but not a video"):
        prepare_dataset(notes, tmp_path / "never", size=32, lags=LAGS, progress=False)
    assert not (tmp_path / "never").exists()


def test_frame_folder_with_mixed_sizes_is_refused_and_leaves_nothing(tmp_path):
    folder = tmp_path / "raw" / "clip"
    folder.mkdir(parents=True)
    for index in range(6):
        cv2.imwrite(str(folder / f"img_{index}.png"), np.full((60, 80 if index < 3 else 100, 3), 30 * index, np.uint8))
    with pytest.raises(PrepareError, match=r"clip mixes frame sizes: img_0.png is 80x60 but img_3.png is 100x60"):
        prepare_dataset(tmp_path / "raw", tmp_path / "out", size=32, lags=(2,), progress=False)
    assert not (tmp_path / "out").exists()
    # An empty output folder the user made stays, emptied again.
    (tmp_path / "mine").mkdir()
    with pytest.raises(PrepareError, match="nothing was written"):
        prepare_dataset(folder, tmp_path / "mine", size=32, lags=(2,), progress=False)
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_a_stopped_or_interrupted_run_says_to_rerun_it(raw, tmp_path, capsys, monkeypatch):
    """A folder that a prepare run started but did not finish (stopped at a bad video, or Ctrl-C) has finished videos
    but no index. Readers said 'not an ipoke dataset ... rebuild a lost index with `ipoke data index DIR`', which then
    failed with 'pass them' (an option the command does not have); now readers, `ipoke data index` and the
    interrupted command say to re-run the same prepare command, and the re-run finishes the dataset."""
    import ipoke.data.prepare as prepare_module
    from ipoke.cli import main
    from ipoke.data.format import write_index

    root, _ = raw
    write_frame_folder(root / "zz_short", panning_clip(3))  # too short for lag 4; natural order: after the others
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="zz_short"):
        prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    unfinished = r"unfinished `ipoke data prepare` output \(3 videos finished.*run the same `ipoke data prepare`"
    with pytest.raises(DatasetFormatError, match=unfinished):
        PreparedDataset(out)
    with pytest.raises(DatasetFormatError, match=unfinished):
        write_index(out)
    for command in (["data", "info", str(out)], ["data", "index", str(out)]):
        assert main(command) == 2
        assert "run the same `ipoke data prepare` command again" in capsys.readouterr().err
    assert not (out / "ipoke_dataset.json").exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "prepare_dataset", interrupted)
    args = add_prepare_arguments(argparse.ArgumentParser()).parse_args(
        ["--videos", str(root), "--out", str(out), "--size", "32", "--lags", "2,4", "--no-progress"])
    assert run_prepare(args) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    monkeypatch.undo()
    result = prepare_dataset(root, out, size=32, lags=LAGS, exclude=["zz_*"], progress=False)
    assert len(result.skipped) == 3 and len(PreparedDataset(out)) == 3


def test_an_interrupt_before_any_video_is_finished_leaves_nothing(raw, tmp_path, capsys, monkeypatch):
    # Ctrl-C or SIGTERM during the first video left a new folder holding only the settings marker, which refused
    # the corrected command ("prepared with other settings") although nothing had been prepared.
    import ipoke.data.prepare as prepare_module
    from ipoke.utils import Terminated

    root, _ = raw
    real_prepare_sources = prepare_module._prepare_sources
    for stop, out in ((KeyboardInterrupt, tmp_path / "new"), (Terminated, tmp_path / "empty")):
        if out.name == "empty":
            out.mkdir()

        def interrupted(writer, *args, stop=stop, **kwargs):
            assert (writer.root / SETTINGS_FILE).is_file()  # the marker exists while the run works
            raise stop

        monkeypatch.setattr(prepare_module, "_prepare_sources", interrupted)
        args = add_prepare_arguments(argparse.ArgumentParser()).parse_args(
            ["--videos", str(root), "--out", str(out), "--size", "32", "--lags", "2,4", "--no-progress"])
        assert run_prepare(args) == 130
        assert f"interrupted before any video was finished; nothing was kept in {out}" in capsys.readouterr().err
        assert (out.exists() and not any(out.iterdir())) if out.name == "empty" else not out.exists()
        monkeypatch.setattr(prepare_module, "_prepare_sources", real_prepare_sources)
        assert len(prepare_dataset(root, out, size=16, lags=LAGS, progress=False).written) == 3  # other settings


def test_an_interrupted_run_adding_videos_says_the_earlier_index_still_holds(raw, tmp_path, capsys, monkeypatch):
    # It said "the index is written only at the end, so it is not a dataset yet", but the earlier index still loads
    # (without the videos this run finished).
    import ipoke.data.prepare as prepare_module

    root, clips = raw
    out = tmp_path / "out"
    prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    write_frame_folder(root / "added", panning_clip(9, seed=5))
    real_prepare_one = prepare_module._prepare_one

    def one_then_ctrl_c(task):
        real_prepare_one(task)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_prepare_one", one_then_ctrl_c)
    args = add_prepare_arguments(argparse.ArgumentParser()).parse_args(
        ["--videos", str(root), "--out", str(out), "--size", "32", "--lags", "2,4", "--no-progress"])
    assert run_prepare(args) == 130
    assert "its index still lists only the videos of the earlier run" in capsys.readouterr().err
    assert (out / "videos" / "added" / "meta.json").is_file() and len(PreparedDataset(out)) == len(clips)
    monkeypatch.undo()
    assert prepare_dataset(root, out, size=32, lags=LAGS, progress=False).written == []  # all finished before
    assert len(PreparedDataset(out)) == len(clips) + 1


def test_outputs_of_ipoke_inside_the_videos_folder_are_not_read_as_videos(raw, tmp_path, caplog):
    """An `ipoke sample --out`, a prepared dataset or an unfinished prepare output written inside --videos was read
    as raw videos by the next prepare (its gifs, mp4s and overview pngs); folders holding ipoke's marker files are
    skipped now, so --out may even lie inside --videos."""
    from ipoke.data.layouts import IPOKE_OUTPUT_MARKERS, SAMPLE_RECORD, discover_videos

    assert SAMPLE_RECORD in IPOKE_OUTPUT_MARKERS
    root, clips = raw
    out = root / "prepared"  # --out inside --videos
    first = prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    samples = root / "results" / "samples"  # what `ipoke sample --out` writes: videos, gifs, overview pngs
    write_video(samples / "sample_0_0.mkv", clips["walk"], codec="ffv1")
    write_video(samples / "sample_0_0.gif", clips["walk"])
    cv2.imwrite(str(samples / "overview_0.png"), clips["walk"][0])
    (samples / SAMPLE_RECORD).write_text("{}")
    unfinished = root / "half"  # an unfinished prepare output
    write_video(unfinished / "stray.mkv", clips["pan"], codec="ffv1")
    (unfinished / SETTINGS_FILE).write_text("{}")
    dataset = root / "other_dataset"
    write_frame_folder(dataset / "frames", clips["pan"])
    (dataset / "ipoke_dataset.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert sorted(source.video_id for source in discover_videos(root)) == sorted(clips)
    assert "results/samples/ (ipoke_sample.json)" in caplog.text and "half/ (.ipoke_prepare.json)" in caplog.text
    second = prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    assert second.written == [] and sorted(second.skipped) == sorted(first.written) == sorted(clips)
    assert sorted(PreparedDataset(out).ids()) == sorted(clips)


def test_skip_bad_draws_the_random_split_over_the_prepared_videos(raw, tmp_path):
    """The random split was drawn before the videos were read, so a bad video left out by --skip-bad could take the
    only test slot (3 good videos + 1 bad: 'train 3', no test). It is drawn again over the prepared videos, the same
    on a re-run."""
    from ipoke.data.layouts import discover_videos

    root, clips = raw
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    everything = discover_videos(root)
    seed = next(seed for seed in range(100) if assign_splits(everything, seed=seed)["broken"] == "test")
    out = tmp_path / "out"
    result = prepare_dataset(root, out, size=32, lags=LAGS, seed=seed, on_error="skip", progress=False)
    assert list(result.failed) == ["broken"]
    good = [source for source in everything if source.video_id != "broken"]
    expected = assign_splits(good, seed=seed)
    assert PreparedDataset(out).splits() == {"test": 1, "train": 2}
    assert {meta["id"]: meta["split"] for meta in result.index["videos"]} == expected
    assert "test 1, train 2" in result.summary() and "no video is in the test split" not in result.summary()
    again = prepare_dataset(root, out, size=32, lags=LAGS, seed=seed, on_error="skip", progress=False)
    assert again.written == [] and again.relabelled == [] and list(again.failed) == ["broken"]
    assert {meta["id"]: meta["split"] for meta in again.index["videos"]} == expected


def test_summary_notes_an_empty_test_split(tmp_path):
    write_frame_folder(tmp_path / "raw" / "only", panning_clip(6))
    result = prepare_dataset(tmp_path / "raw", tmp_path / "out", size=32, lags=LAGS, progress=False)
    assert "1 videos (train 1)" in result.summary() and "note: no video is in the test split" in result.summary()
    # With a split file, a misspelt split name ('Test') left no test split without a word.
    split_file = tmp_path / "splits.txt"
    split_file.write_text("only Test\n")
    result = prepare_dataset(tmp_path / "raw", tmp_path / "named", size=32, lags=LAGS, split_file=split_file,
                             progress=False)
    assert "note: the split file names no video 'test' (its splits here: Test)" in result.summary()
    split_file.write_text("only test\n")
    result = prepare_dataset(tmp_path / "raw", tmp_path / "right", size=32, lags=LAGS, split_file=split_file,
                             progress=False)
    assert "\nnote:" not in result.summary()


def test_flow_resolution_actually_used_is_recorded_per_video(tmp_path):
    """--flow-resolution above a video's raw shorter side was capped silently while the settings said otherwise;
    each video's meta records the side flow was estimated at and the summary says when the cap applied."""
    write_frame_folder(tmp_path / "raw" / "big", panning_clip(6, height=64, width=80, speed=2))
    write_frame_folder(tmp_path / "raw" / "small", panning_clip(6, height=40, width=48, speed=2))
    result = prepare_dataset(tmp_path / "raw", tmp_path / "out", size=32, lags=LAGS, flow_resolution=48,
                             progress=False)
    data = PreparedDataset(tmp_path / "out")
    assert data.index["settings"]["flow_resolution"] == 48  # what was asked, needed to resume
    assert data.video("big").meta["flow_resolution"] == 48 and data.video("small").meta["flow_resolution"] == 40
    assert "note: --flow-resolution 48 is above the raw frames' shorter side of 1 videos" in result.summary()
    assert "small at 40 px" in result.summary()
    plain = prepare_dataset(tmp_path / "raw", tmp_path / "plain", size=32, lags=LAGS, progress=False)
    assert PreparedDataset(tmp_path / "plain").video("small").meta["flow_resolution"] == 32
    assert "--flow-resolution" not in plain.summary()


def test_ctrl_c_with_workers_ends_the_pool_at_once(raw, tmp_path, monkeypatch):
    """After Ctrl-C with --workers 2 the videos already handed to the workers kept running (shutdown waited for
    them); now the queued videos are cancelled and the workers terminated. Timing itself is not measured here: the
    test checks that the workers were terminated (exit by SIGTERM, not a normal exit after the remaining videos),
    that what was finished is whole and that a re-run finishes the dataset."""
    import signal
    from concurrent.futures import ProcessPoolExecutor

    import ipoke.data.prepare as prepare_module

    root, clips = raw
    for index in range(5):
        write_frame_folder(root / f"more{index}", panning_clip(8, seed=index + 3))
    pools, processes = [], []

    class RecordingPool(ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    real_as_completed = prepare_module.as_completed

    def interrupted_after_first(futures):
        for future in real_as_completed(futures):
            yield future
            processes.extend(pools[0]._processes.values())
            raise KeyboardInterrupt  # as Ctrl-C in the main process

    monkeypatch.setattr(prepare_module, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(prepare_module, "as_completed", interrupted_after_first)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(root, out, size=32, lags=LAGS, workers=2, progress=False)
    assert len(processes) == 2 and all(process.exitcode == -signal.SIGTERM for process in processes)
    assert not (out / "ipoke_dataset.json").exists()
    for folder in (out / "videos").iterdir():
        if not folder.name.startswith("."):
            assert (folder / "meta.json").is_file() and np.load(folder / "frames.npy").shape[1:] == (32, 32, 3)
    monkeypatch.undo()
    result = prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    assert len(result.skipped) >= 1 and len(PreparedDataset(out)) == len(clips) + 5


def test_pool_workers_leave_ctrl_c_to_the_main_process(tmp_path):
    import signal

    from ipoke.data.format import DatasetWriter
    from ipoke.data.prepare import _init_worker

    writer = DatasetWriter(tmp_path / "out", size=32, flow_lags=list(LAGS), source="prepare")
    previous = signal.getsignal(signal.SIGINT)
    try:
        _init_worker(writer, {"flow_method": "dis"}, None)
        assert signal.getsignal(signal.SIGINT) == previous  # the in-process path (--workers 1) keeps Ctrl-C
        _init_worker(writer, {"flow_method": "dis"}, None, True)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_docs_list_exactly_the_video_extensions_the_code_reads():
    import re

    from ipoke.data.video_io import VIDEO_EXTENSIONS

    repo = Path(__file__).resolve().parents[2]
    readme = re.search(r"Reads every video file \(([^)]*)\)", (repo / "README.md").read_text())
    guide = re.search(r"For every video file \(([^)]*)\)", (repo / "docs" / "real_data.md").read_text())
    expected = [extension[1:] for extension in VIDEO_EXTENSIONS]
    assert readme and re.split(r"[/, ]+", readme.group(1)) == expected
    assert guide and re.split(r"[/, ]+", guide.group(1)) == expected


def test_an_out_that_is_a_file_is_refused_before_anything_is_written(raw, tmp_path):
    root, _ = raw
    blocker = tmp_path / "notadir"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(PrepareError, match="notadir exists and is not a folder"):
            prepare_dataset(root, out, size=32, lags=LAGS, progress=False)
    assert blocker.read_text() == "x"
    with pytest.raises(PrepareError, match="size must be at least 16"):
        prepare_dataset(root, tmp_path / "small", size=8, lags=LAGS, progress=False)
    with pytest.raises(PrepareError, match="seed must be >= 0"):
        prepare_dataset(root, tmp_path / "seed", size=32, lags=LAGS, seed=-1, progress=False)
    assert not (tmp_path / "small").exists() and not (tmp_path / "seed").exists()


def test_bad_flow_weights_fail_before_the_output_folder_exists(raw, tmp_path):
    root, _ = raw
    weights = tmp_path / "raft_small.pth"
    weights.write_bytes(b"not a state dict")
    with pytest.raises(PrepareError, match="raft flow estimator could not be built"):
        prepare_dataset(root, tmp_path / "out", size=32, lags=LAGS, flow_method="raft",
                        flow_options={"weights": str(weights)}, progress=False)
    assert not (tmp_path / "out").exists()


def test_an_unexpected_error_in_a_new_folder_leaves_nothing_behind(raw, tmp_path, monkeypatch):
    root, _ = raw
    import ipoke.data.prepare as prepare_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prepare_module, "prepare_video_arrays", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_dataset(root, tmp_path / "out", size=32, lags=LAGS, progress=False)
    assert not (tmp_path / "out").exists()  # a re-run is a new run, not a resume refused for its settings
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError):
        prepare_dataset(root, empty, size=32, lags=LAGS, progress=False)
    assert empty.is_dir() and not any(empty.iterdir())


def test_video_ids_too_long_for_a_folder_name_are_refused(tmp_path):
    deep = tmp_path / "raw" / ("x" * 120) / ("y" * 120)
    write_frame_folder(deep / "clip", panning_clip(6))
    with pytest.raises(PrepareError, match="longer than 200 bytes.*deeper folder"):
        prepare_dataset(tmp_path / "raw", tmp_path / "out", size=32, lags=LAGS, progress=False)
    assert not (tmp_path / "out").exists()
    result = prepare_dataset(tmp_path / "raw" / ("x" * 120), tmp_path / "out", size=32, lags=LAGS, progress=False)
    assert result.written == ["y" * 120 + "__clip"]


def test_linked_folders_other_containers_and_frames_in_the_root_are_read(tmp_path, caplog, monkeypatch):
    root = tmp_path / "raw"
    write_frame_folder(root, panning_clip(6, seed=0))  # frames in the raw folder itself ...
    write_mp4(root / "door.mp4", panning_clip(6, seed=1))  # ... beside a video
    elsewhere = tmp_path / "elsewhere" / "kitchen"
    write_mp4(elsewhere / "bush.mp4", panning_clip(6, seed=2))
    (root / "kitchen").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link back up the tree is read once
    write_mp4(tmp_path / "camera.mp4", panning_clip(6, seed=3)).rename(root / "camera.MTS")
    (root / "notes.txt").write_text("annotations")
    (root / "clip.xyz").write_bytes(b"unknown container")
    with caplog.at_level("WARNING"):
        result = prepare_dataset(root, tmp_path / "out", size=32, lags=LAGS, progress=False)
    assert sorted(result.written) == ["camera", "door", "kitchen__bush", "raw"]
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert "1 files" in warnings and "clip.xyz" in warnings and "notes.txt" not in warnings
    np.testing.assert_array_equal(PreparedDataset(tmp_path / "out").video("raw").frames,
                                  centre(panning_clip(6, seed=0)))
    # `--videos .` inside a frame folder: the video is named after the folder, not "v".
    monkeypatch.chdir(elsewhere.parent.parent)
    write_frame_folder(tmp_path / "elsewhere" / "frames", panning_clip(6))
    monkeypatch.chdir(tmp_path / "elsewhere" / "frames")
    single = prepare_dataset(".", tmp_path / "single", size=32, lags=LAGS, progress=False)
    assert single.written == ["frames"]
    assert single.index["videos"][0]["source_file"] == "frames"


def test_a_resume_with_another_layout_updates_the_videos_metadata(tmp_path):
    root = tmp_path / "raw"
    for plant, take in ((0, 0), (0, 1), (0, 2), (1, 0)):
        write_frame_folder(root / f"VID_{plant}_{take}", panning_clip(6, seed=plant * 3 + take))
    out = tmp_path / "out"
    first = prepare_dataset(root, out, size=32, lags=LAGS, test_fraction=0.0, progress=False)
    assert {meta["object_id"] for meta in first.index["videos"]} == {None}
    second = prepare_dataset(root, out, size=32, lags=LAGS, layout="plants", progress=False)
    assert second.written == [] and len(second.skipped) == 4
    by_id = {meta["id"]: meta for meta in second.index["videos"]}
    assert by_id["VID_0_2"]["object_id"] == "plant0" and by_id["VID_0_2"]["take"] == 2
    assert by_id["VID_1_0"]["plant"] == 1 and second.index["settings"]["layout"] == "plants"
    third = prepare_dataset(root, out, size=32, lags=LAGS, test_fraction=0.0, progress=False)
    assert all("plant" not in meta and meta["object_id"] is None for meta in third.index["videos"])


def test_a_resume_keeps_the_ids_an_earlier_version_gave(tmp_path, monkeypatch):
    # Names with non-ASCII characters got new ids (a hash added); a run resumed across that change prepared those
    # videos again under the new id, the copy possibly in the other split.
    import re

    import ipoke.data.layouts as layouts

    root = tmp_path / "raw"
    for seed, name in enumerate(("café", "日本", "plain1")):
        write_frame_folder(root / name, panning_clip(6, seed=seed))
    out = tmp_path / "out"
    new_sanitize = layouts.sanitize_id
    monkeypatch.setattr(layouts, "sanitize_id", lambda name: re.sub(r"[^A-Za-z0-9_.\-]", "_", name.strip())
                        if name.strip()[:1].isascii() else "v" + re.sub(r"[^A-Za-z0-9_.\-]", "_", name.strip()))
    first = prepare_dataset(root, out, size=32, lags=LAGS, test_fraction=0.34, progress=False)
    assert sorted(first.written) == ["caf_", "plain1", "v__"]
    monkeypatch.setattr(layouts, "sanitize_id", new_sanitize)
    write_frame_folder(root / "plain2", panning_clip(6, seed=5))
    second = prepare_dataset(root, out, size=32, lags=LAGS, test_fraction=0.34, progress=False)
    assert second.written == ["plain2"] and sorted(second.skipped) == ["caf_", "plain1", "v__"]
    assert sorted(meta["id"] for meta in second.index["videos"]) == ["caf_", "plain1", "plain2", "v__"]
    assert new_sanitize("café") != "caf_"  # a fresh run gives the new ids


def test_train_list_without_the_iper_layout_is_refused(raw, tmp_path):
    # It was ignored: a random split instead of the official one, without a word.
    root, _ = raw
    (tmp_path / "train.txt").write_text("walk\n")
    with pytest.raises(PrepareError, match="--train-list is iPER's official split and needs --layout iper"):
        prepare_dataset(root, tmp_path / "out", size=32, lags=LAGS, train_list=tmp_path / "train.txt", progress=False)
    assert not (tmp_path / "out").exists()


def test_split_file_names_must_name_one_video_each(tmp_path, caplog):
    videos = [VideoSource(video_id=f"{folder}__door_01", path=Path(folder), relative_path=f"{folder}/door_01.mp4")
              for folder in ("kitchen", "garden")]
    split_file = tmp_path / "splits.txt"
    split_file.write_text("door_01 test\n")
    with pytest.raises(PrepareError, match="'door_01' matches 2 videos.*'kitchen/door_01.mp4'"):
        assign_splits(videos, split_file=split_file)
    split_file.write_text("kitchen/door_01 test\ngarden/door_01.mp4 train\n")
    assert assign_splits(videos, split_file=split_file) == {"kitchen__door_01": "test", "garden__door_01": "train"}
    split_file.write_text("kitchen/door_01, test\ngarden/door_01.mp4\ttrain\n")
    assert assign_splits(videos, split_file=split_file) == {"kitchen__door_01": "test", "garden__door_01": "train"}
    commas = [VideoSource(video_id="take_1_2", path=Path("x"), relative_path="take 1,2.mp4")]
    split_file.write_text("take 1,2.mp4 test\n")  # a file name with a space and a comma
    assert assign_splits(commas, split_file=split_file) == {"take_1_2": "test"}
    split_file.write_text("kitchen/door_01 test\ngarden/door_01 train\nkitchen/door_01 train\n")
    with pytest.raises(PrepareError, match="splits.txt:3: 'kitchen/door_01' is in 'train' here but in 'test' on "
                                           "line 1"):
        assign_splits(videos, split_file=split_file)
    # One video under two of its names: an error when the splits differ (it went silently to the first name's
    # split, and the other line was reported "not found"), fine when they agree.
    split_file.write_text("kitchen/door_01.mp4 test\nkitchen__door_01 train\ngarden/door_01 train\n")
    with pytest.raises(PrepareError, match=r"lists the video 'kitchen/door_01.mp4' more than once with different "
                                           r"splits \('kitchen__door_01': 'train', 'kitchen/door_01.mp4': 'test'\)"):
        assign_splits(videos, split_file=split_file)
    split_file.write_text("kitchen/door_01.mp4 test\nkitchen__door_01 test\ngarden/door_01 train\n")
    with caplog.at_level(logging.WARNING, logger="ipoke.data.prepare"):
        assert assign_splits(videos, split_file=split_file) == {"kitchen__door_01": "test",
                                                                "garden__door_01": "train"}
    assert "not found" not in caplog.text
    # A top-level clip.mp4 and x/clip.mp4: each line names the video whose path it is (the loose file name of
    # x/clip.mp4 is the other video's path); this was refused as a double listing, then as ambiguous.
    nested = [VideoSource(video_id="clip", path=Path("clip.mp4"), relative_path="clip.mp4"),
              VideoSource(video_id="x__clip", path=Path("x/clip.mp4"), relative_path="x/clip.mp4")]
    for first, second in (("train", "test"), ("test", "test")):
        split_file.write_text(f"clip.mp4 {first}\nx/clip.mp4 {second}\n")
        assert assign_splits(nested, split_file=split_file) == {"clip": first, "x__clip": second}
    split_file.write_text("clip test\nx__clip train\n")  # the ids work too
    assert assign_splits(nested, split_file=split_file) == {"clip": "test", "x__clip": "train"}
    # A loose name that is no other video's id or path still counts, and a contradiction is found (the first
    # priority rule let "door_01 train" pass beside "kitchen/door_01.mp4 test").
    split_file.write_text("kitchen/door_01.mp4 test\ndoor_01 train\n")
    with pytest.raises(PrepareError, match="lists the video 'kitchen/door_01.mp4' more than once"):
        assign_splits(videos[:1], split_file=split_file)


def test_summary_note_names_the_layouts_test_videos(tmp_path):
    for name in ("a", "b", "c"):
        write_frame_folder(tmp_path / "raw" / "train" / name, panning_clip(6))
    result = prepare_dataset(tmp_path / "raw", tmp_path / "out", size=32, lags=LAGS, layout="taichi", progress=False)
    assert "taichi layout puts in test the videos under test/" in result.summary()


def test_split_file_may_be_a_pipe_but_not_a_folder(tmp_path):
    # `--split-file <(grep ...)` gives a /dev/fd path that is not a regular file: it was called missing.
    import os

    from ipoke.data.prepare import read_split_file

    read_end, write_end = os.pipe()
    os.write(write_end, b"walk train\n# a comment\npan test\n")
    os.close(write_end)
    try:
        assert read_split_file(f"/dev/fd/{read_end}") == {"walk": "train", "pan": "test"}
    finally:
        os.close(read_end)
    with pytest.raises(PrepareError, match="is a folder"):
        read_split_file(tmp_path)
    with pytest.raises(PrepareError, match="does not exist"):
        read_split_file(tmp_path / "nope.txt")


def test_growing_stack_equals_np_stack_across_chunks(monkeypatch):
    # Frames and flow are gathered in chunks (np.stack of a list held the list and its copy at once).
    from ipoke.data.prepare import _GrowingStack

    monkeypatch.setattr(_GrowingStack, "CHUNK_BYTES", 3 * 2 * 5 * 4)  # 3 items per chunk
    items = [np.random.default_rng(i).standard_normal((2, 5)).astype(np.float32) for i in range(10)]
    growing = _GrowingStack()
    for item in items:
        growing.append(item)
    assert len(growing) == 10 and len(growing._chunks) == 3
    np.testing.assert_array_equal(growing.stack(), np.stack(items))


def test_keypoints_of_a_gif_may_have_one_row_per_stored_frame(tmp_path):
    """A GIF frame shown twice as long is read as two frames (a time step each), but a pose estimator sees the frames
    the file stores (7 here, read as 8): such keypoints were refused ('7 rows but video ... has 8 frames'). They are
    repeated like the frames; one row per time step still works; other counts name the GIF's held frames."""
    from PIL import Image

    from ipoke.data.video_io import gif_frame_repeats, read_frames

    clip = panning_clip(7, seed=3)
    root, keypoints = tmp_path / "raw", tmp_path / "keypoints"
    root.mkdir()
    keypoints.mkdir()
    images = [Image.fromarray(frame) for frame in clip]
    images[0].save(root / "held.gif", save_all=True, append_images=images[1:], duration=[100] * 3 + [200] + [100] * 3,
                   loop=0)
    assert gif_frame_repeats(root / "held.gif") == [1, 1, 1, 2, 1, 1, 1] and len(read_frames(root / "held.gif")) == 8
    stored = np.zeros((7, 2, 2), np.float32)
    stored[:, 0] = np.stack([10.0 + 2 * np.arange(7), np.full(7, 12.0)], axis=-1)
    stored[:, 1] = np.nan
    np.save(keypoints / "held.npy", stored)
    result = prepare_dataset(root, tmp_path / "out", size=32, lags=LAGS, keypoints_dir=keypoints, progress=False)
    assert result.written == ["held"]
    video = tmp_path / "out" / "videos" / "held"
    frames, points = np.load(video / "frames.npy"), np.load(video / "keypoints.npy")
    assert len(frames) == len(points) == 8
    expected = np.repeat(stored, [1, 1, 1, 2, 1, 1, 1], axis=0)
    expected[..., 0] -= 4  # the centred 32x32 crop of 40x32 frames starts at x = 4
    np.testing.assert_array_equal(points, expected)
    np.testing.assert_array_equal(frames[3], frames[4])  # the held frame, and its keypoints, twice

    np.save(keypoints / "held.npy", np.repeat(stored, [1, 1, 1, 2, 1, 1, 1], axis=0))  # one row per time step
    again = prepare_dataset(root, tmp_path / "steps", size=32, lags=LAGS, keypoints_dir=keypoints, progress=False)
    assert again.written == ["held"]
    np.testing.assert_array_equal(np.load(tmp_path / "steps" / "videos" / "held" / "keypoints.npy"), expected)

    np.save(keypoints / "held.npy", stored[:6])
    with pytest.raises(PrepareError, match=r"has 6 rows but .*held.gif is a GIF with 7 stored frames, read as 8 time "
                                           r"steps \(frame 3 is held 2x"):
        prepare_dataset(root, tmp_path / "short", size=32, lags=LAGS, keypoints_dir=keypoints, progress=False)


def test_videos_added_to_the_raw_folder_leave_the_finished_videos_splits_alone(tmp_path):
    """Adding a video and re-running the same command (the documented way to grow a dataset) redrew the seeded
    split over all videos: finished videos changed split ('relabelled 2'), a video trained on moved to test. They
    keep their split now, the new video gets one that keeps the test fraction; other split options redraw, and the
    summary names the finished videos that moved into test."""
    root, out = tmp_path / "raw", tmp_path / "out"
    five = sources(*[(f"v{i}", None) for i in range(5)])
    six = sources(*[(f"v{i}", None) for i in range(6)])
    # A seed whose draw over six videos gives one of the first five another split than the draw over five did.
    seed = next(seed for seed in range(100)
                if any(assign_splits(five, seed=seed)[f"v{i}"] != assign_splits(six, seed=seed)[f"v{i}"]
                       for i in range(5)))
    for index in range(5):
        write_frame_folder(root / f"v{index}", panning_clip(6, seed=index))
    first = prepare_dataset(root, out, size=32, lags=LAGS, seed=seed, progress=False)
    before = {meta["id"]: meta["split"] for meta in first.index["videos"]}
    assert before == assign_splits(five, seed=seed)

    write_frame_folder(root / "v5", panning_clip(6, seed=5))
    second = prepare_dataset(root, out, size=32, lags=LAGS, seed=seed, progress=False)
    after = {meta["id"]: meta["split"] for meta in second.index["videos"]}
    assert second.written == ["v5"] and second.relabelled == [] and "relabelled 0" in second.summary()
    assert {vid: after[vid] for vid in before} == before
    assert after["v5"] == "train" and PreparedDataset(out).splits() == {"test": 1, "train": 5}  # round(0.2 * 6) = 1
    assert all(json.loads((out / "videos" / vid / "meta.json").read_text())["split"] == split
               for vid, split in after.items())
    assert "note:" not in second.summary()

    # Another test fraction draws the split again over all videos; the videos moved into test are named.
    third = prepare_dataset(root, out, size=32, lags=LAGS, seed=seed, test_fraction=0.5, progress=False)
    moved = sorted(vid for vid, split in after.items() if split == "train"
                   and json.loads((out / "videos" / vid / "meta.json").read_text())["split"] == "test")
    assert PreparedDataset(out).splits() == {"test": 3, "train": 3} and len(moved) >= 2
    assert sorted(third.moved_to_test) == moved
    assert f"note: {len(moved)} videos prepared before this run moved into the test split ({', '.join(moved)};" in (
        third.summary())
    # The same options again: nothing moves.
    assert prepare_dataset(root, out, size=32, lags=LAGS, seed=seed, test_fraction=0.5, progress=False
                           ).relabelled == []


def test_random_split_keeps_the_kept_videos_and_tops_up_the_test_share():
    plain = sources(*[(f"v{i}", None) for i in range(10)])
    kept = {f"v{i}": "test" if i == 0 else "train" for i in range(8)}
    splits = assign_splits(plain, seed=0, kept=kept)
    assert {vid: splits[vid] for vid in kept} == kept
    assert [splits["v8"], splits["v9"]].count("test") == 1  # round(0.2 * 10) = 2, one of them kept
    kept = {f"v{i}": "test" if i < 2 else "train" for i in range(8)}
    assert assign_splits(plain, seed=0, kept=kept) == {**kept, "v8": "train", "v9": "train"}
    # Per object: a new take tops up its own plant's test share; every plant keeps a video in train.
    plants = sources(("a0", "A"), ("a1", "A"), ("a2", "A"), ("a3", "A"), ("a4", "A"), ("b0", "B"), ("b1", "B"),
                     ("b2", "B"), ("c0", "C"))
    kept = {"a0": "test", "a1": "train", "a2": "train", "a3": "train", "b0": "train", "b1": "train"}
    splits = assign_splits(plants, seed=0, kept=kept)
    assert {vid: splits[vid] for vid in kept} == kept
    assert splits["a4"] == "train" and splits["b2"] == "test" and splits["c0"] == "train"
    # Whole objects: a new take joins its plant's split; new plants fill what the kept ones leave of the share.
    objects = sources(("a0", "A"), ("a9", "A"), ("b0", "B"), ("b9", "B"), ("d0", "D"), ("e0", "E"))
    splits = assign_splits(objects, seed=0, split_by="object", test_fraction=0.34, kept={"a0": "test", "b0": "train"})
    assert splits == {"a0": "test", "a9": "test", "b0": "train", "b9": "train", "d0": "train", "e0": "train"}
    splits = assign_splits(objects, seed=0, split_by="object", test_fraction=0.5, kept={"a0": "test", "b0": "train"})
    assert splits["a9"] == "test" and splits["b9"] == "train" and sorted([splits["d0"], splits["e0"]]) == [
        "test", "train"]
    # Without kept videos the draw is the one it always was.
    assert assign_splits(plain, seed=3, kept={}) == assign_splits(plain, seed=3)
