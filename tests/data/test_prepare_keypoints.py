"""``prepare_dataset(keypoints_dir=...)`` / ``--keypoints``: per-video keypoints mapped exactly like the frames.

The raw videos are 80x60 (width x height) clips of a bright blob at a known sub-pixel position, so the crop (10 px
off the left and right) and the squash (different scales per axis) both matter; the stored keypoints must land on
the blob in the stored frames.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from ipoke.data.format import PreparedDataset
from ipoke.data.prepare import SETTINGS_FILE, PrepareError, add_prepare_arguments, prepare_dataset, run_prepare
from ipoke.data.video_io import resize_points, write_video

WIDTH, HEIGHT = 80, 60
SIZE = 20  # crop: 60 -> 20 (scale 1/3, x offset 10); squash: x scale 1/4, y scale 1/3
LAGS = (1, 2)
N_RAW = 8
OUTSIDE_CROP = (3.0, 30.0)  # left of the centred 60x60 square, inside the frame


def blob_track(n_frames: int, seed: int) -> np.ndarray:
    """Sub-pixel (x, y) raw positions of the blob, well inside the centred square."""
    rng = np.random.default_rng(seed)
    start = np.array([22.3, 18.6]) + rng.uniform(0, 2, 2)
    return start + np.arange(n_frames)[:, None] * np.array([4.1, 2.7])


def blob_frames(track: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for x, y in track:
        image = 250 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.5 ** 2))
        frames.append(np.repeat(np.round(image).astype(np.uint8)[..., None], 3, axis=-1))
    return np.stack(frames)


def keypoints_of(track: np.ndarray) -> np.ndarray:
    """(N, 3, 2): the blob, a point outside the crop, an unknown joint."""
    points = np.full((len(track), 3, 2), np.nan)
    points[:, 0] = track
    points[:, 1] = OUTSIDE_CROP
    return points


def write_frame_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


@pytest.fixture
def raw(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A frame folder ``a/`` and a lossless mkv ``b.mkv`` of a moving blob, and a keypoints folder; the raw
    keypoints by video id."""
    tracks = {"a": blob_track(N_RAW, 0), "b": blob_track(N_RAW, 1)}
    root, keypoints = tmp_path / "raw", tmp_path / "keypoints"
    write_frame_folder(root / "a", blob_frames(tracks["a"]))
    write_video(root / "b.mkv", blob_frames(tracks["b"]), codec="ffv1")
    keypoints.mkdir()
    points = {video_id: keypoints_of(track) for video_id, track in tracks.items()}
    for video_id, array in points.items():
        np.save(keypoints / f"{video_id}.npy", array)
    return root, keypoints, points


def centroid(frame: np.ndarray) -> np.ndarray:
    """Intensity-weighted (x, y) of a stored frame (pixel centres at integers)."""
    weights = frame[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def brightest(frame: np.ndarray) -> np.ndarray:
    y, x = np.unravel_index(np.argmax(frame[..., 0]), frame.shape[:2])
    return np.array([x, y], np.float64)


def assert_on_the_blob(frames: np.ndarray, keypoints: np.ndarray) -> None:
    for frame, point in zip(frames, keypoints[:, 0]):
        assert np.abs(brightest(frame) - point).max() <= 1.0
        # The blob's centroid moves exactly with the box filter of INTER_AREA at integer scales: a mapping off by
        # the pixel-centre half pixel (0.33 px here) or by the crop offset fails this.
        np.testing.assert_allclose(point, centroid(frame), atol=0.1)


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_keypoints_land_on_the_blob(raw, tmp_path, resize):
    root, keypoint_dir, points = raw
    result = prepare_dataset(root, tmp_path / "out", size=SIZE, lags=LAGS, resize=resize, keypoints_dir=keypoint_dir,
                             progress=False)
    assert sorted(result.written) == ["a", "b"]
    dataset = PreparedDataset(tmp_path / "out")
    assert dataset.index["settings"]["keypoints"] is True
    for video_id in ("a", "b"):
        video = dataset.video(video_id)
        assert video.meta["has_keypoints"] and video.meta["raw_size"] == [HEIGHT, WIDTH]
        assert video.keypoints.dtype == np.float32 and video.keypoints.shape == (N_RAW, 3, 2)
        assert_on_the_blob(video.frames, video.keypoints)
        assert np.isnan(video.keypoints[:, 2]).all()  # unknown stays unknown
        if resize == "crop":
            assert np.isnan(video.keypoints[:, 1]).all()  # cut off with the crop
        else:
            x, y = OUTSIDE_CROP
            np.testing.assert_allclose(video.keypoints[:, 1], [[(x + 0.5) / 4 - 0.5, (y + 0.5) / 3 - 0.5]] * N_RAW,
                                       rtol=1e-6)
        np.testing.assert_allclose(video.keypoints, resize_points(points[video_id], (HEIGHT, WIDTH), SIZE,
                                                                  mode=resize), rtol=1e-6)


def test_frame_step_and_max_frames_keep_the_rows_of_the_kept_frames(raw, tmp_path):
    root, keypoint_dir, points = raw
    prepare_dataset(root, tmp_path / "out", size=SIZE, lags=LAGS, frame_step=2, keypoints_dir=keypoint_dir,
                    workers=2, progress=False)
    dataset = PreparedDataset(tmp_path / "out")
    for video_id in ("a", "b"):
        video = dataset.video(video_id)
        assert video.keypoints.shape == (N_RAW // 2, 3, 2)
        assert_on_the_blob(video.frames, video.keypoints)
        expected = resize_points(points[video_id][::2], (HEIGHT, WIDTH), SIZE)
        np.testing.assert_allclose(video.keypoints, expected, rtol=1e-6)
    # max_frames cuts the kept rows; the video file is still read to its end to check the row count.
    prepare_dataset(root, tmp_path / "short", size=SIZE, lags=LAGS, frame_step=2, max_frames=3,
                    keypoints_dir=keypoint_dir, progress=False)
    for video_id in ("a", "b"):
        video = PreparedDataset(tmp_path / "short").video(video_id)
        assert video.keypoints.shape == (3, 3, 2)
        assert_on_the_blob(video.frames, video.keypoints)


def test_resize_points_geometry():
    # 80x60 crop keeps x in [10, 70): its edges map to the stored frame's edges, just outside is NaN.
    points = np.array([[9.5, 0.0], [10 - 0.51, 0.0], [69.5, 59.5], [69.51, 30.0], [np.nan, 3.0]])
    mapped = resize_points(points, (60, 80), 30, mode="crop")
    np.testing.assert_allclose(mapped[0], [-0.5, -0.25])
    np.testing.assert_allclose(mapped[2], [29.5, 29.5])
    assert np.isnan(mapped[[1, 3, 4]]).all()
    # An odd extra pixel is cut at the end (as center_crop_square): 81 wide -> left 10.
    np.testing.assert_allclose(resize_points(np.array([10.0, 0.0]), (60, 81), 60, mode="crop"), [0.0, 0.0])
    # Same size: unchanged.
    np.testing.assert_allclose(resize_points(np.array([3.25, 7.5]), (20, 20), 20, mode="squash"), [3.25, 7.5])


def test_keypoint_errors_leave_no_video(raw, tmp_path):
    root, keypoint_dir, points = raw
    out = tmp_path / "out"

    def refused(match: str, keypoints: Path = keypoint_dir, **options) -> None:
        with pytest.raises(PrepareError, match=match):
            prepare_dataset(root, out, size=SIZE, lags=LAGS, keypoints_dir=keypoints, progress=False, **options)
        assert not out.exists()

    refused(r"keypoints folder .*nowhere does not exist", tmp_path / "nowhere")
    (keypoint_dir / "b.npy").unlink()
    refused(r"1 of the 2 videos have no keypoint file .*b\.mkv -> .*keypoints/b\.npy")
    np.save(keypoint_dir / "b.npy", points["b"][:, :, 0])
    refused(r"b\.npy: keypoints must have shape \(N_raw, K, 2\).*got shape \(8, 3\)")
    np.save(keypoint_dir / "b.npy", np.array([["x", "y"]] * N_RAW)[:, None])
    refused(r"b\.npy: keypoints must be numbers")
    # Row counts: the frame folder is checked before decoding, the video file while it is decoded.
    np.save(keypoint_dir / "b.npy", points["b"])
    np.save(keypoint_dir / "a.npy", points["a"][:-1])
    refused(r"a\.npy has 7 rows but video .*a has 8 frames.*before --frame-step")
    np.save(keypoint_dir / "a.npy", points["a"])
    np.save(keypoint_dir / "b.npy", np.concatenate([points["b"], points["b"][:1]]))
    refused(r"b\.npy has 9 rows but video .*b\.mkv has 8 frames", frame_step=2, exclude=["a"])
    # Two files for one video.
    np.save(keypoint_dir / "b.npy", points["b"])
    np.savez(keypoint_dir / "b.npz", keypoints=points["b"])
    refused(r"b\.mkv has several keypoint files")
    (keypoint_dir / "b.npy").unlink()
    np.savez(keypoint_dir / "b.npz", joints=points["b"])
    refused(r"b\.npz: an \.npz keypoint file needs an array named 'keypoints', it has \['joints'\]")
    # With --skip-bad a video with bad row count is left out, the others are written.
    np.savez(keypoint_dir / "b.npz", keypoints=points["b"][:5])
    result = prepare_dataset(root, out, size=SIZE, lags=LAGS, keypoints_dir=keypoint_dir, on_error="skip",
                             progress=False)
    assert result.written == ["a"] and "5 rows" in result.failed["b"]
    assert not (out / "videos" / "b").exists()


def test_npz_mirrored_tree_integers_and_unmatched_files(tmp_path, caplog):
    track = blob_track(N_RAW, 2)
    root, keypoint_dir = tmp_path / "raw", tmp_path / "keypoints"
    write_frame_folder(root / "kitchen" / "door", blob_frames(track))
    write_video(root / "kitchen" / "tap.mkv", blob_frames(track), codec="ffv1")
    (keypoint_dir / "kitchen").mkdir(parents=True)
    np.savez(keypoint_dir / "kitchen" / "door.npz", keypoints=keypoints_of(track))  # the raw tree mirrored
    np.save(keypoint_dir / "kitchen__tap.npy", np.round(track)[:, None].astype(np.int64))  # the video id; integers
    np.save(keypoint_dir / "garden.npy", keypoints_of(track))
    np.save(keypoint_dir / "kitchen" / "old.npy", keypoints_of(track))
    with caplog.at_level(logging.WARNING, logger="ipoke.data.prepare"):
        prepare_dataset(root, tmp_path / "out", size=SIZE, lags=LAGS, keypoints_dir=keypoint_dir, progress=False)
    warnings = [record.getMessage() for record in caplog.records if "match no video" in record.getMessage()]
    assert len(warnings) == 1 and "2 keypoint files" in warnings[0] and "garden.npy" in warnings[0]
    dataset = PreparedDataset(tmp_path / "out")
    assert dataset.video("kitchen__door").keypoints.shape == (N_RAW, 3, 2)
    tap = dataset.video("kitchen__tap")
    assert tap.keypoints.shape == (N_RAW, 1, 2) and tap.keypoints.dtype == np.float32
    np.testing.assert_allclose(tap.keypoints[:, 0], resize_points(np.round(track), (HEIGHT, WIDTH), SIZE), rtol=1e-6)


def test_resume_needs_the_same_keypoint_setting(raw, tmp_path):
    root, keypoint_dir, _ = raw
    out = tmp_path / "out"
    prepare_dataset(root, out, size=SIZE, lags=LAGS, keypoints_dir=keypoint_dir, progress=False)
    with pytest.raises(PrepareError, match=r"keypoints: True -> False"):
        prepare_dataset(root, out, size=SIZE, lags=LAGS, progress=False)
    result = prepare_dataset(root, out, size=SIZE, lags=LAGS, keypoints_dir=keypoint_dir, progress=False)
    assert sorted(result.skipped) == ["a", "b"]
    # A dataset prepared before keypoints could be imported (no such setting) resumes without them.
    plain = tmp_path / "plain"
    prepare_dataset(root, plain, size=SIZE, lags=LAGS, progress=False)
    settings = json.loads((plain / SETTINGS_FILE).read_text())
    del settings["keypoints"]
    (plain / SETTINGS_FILE).write_text(json.dumps(settings))
    assert sorted(prepare_dataset(root, plain, size=SIZE, lags=LAGS, progress=False).skipped) == ["a", "b"]
    with pytest.raises(PrepareError, match=r"keypoints: False -> True"):
        prepare_dataset(root, plain, size=SIZE, lags=LAGS, keypoints_dir=keypoint_dir, progress=False)


def test_command_line_keypoints(raw, tmp_path, capsys):
    root, keypoint_dir, _ = raw
    parser = add_prepare_arguments(argparse.ArgumentParser())
    base = ["--videos", str(root), "--size", str(SIZE), "--lags", "1,2", "--no-progress"]
    assert run_prepare(parser.parse_args([*base, "--out", str(tmp_path / "out"), "--keypoints",
                                          str(keypoint_dir)])) == 0
    assert PreparedDataset(tmp_path / "out").video("a").keypoints is not None
    assert run_prepare(parser.parse_args([*base, "--out", str(tmp_path / "no"), "--keypoints",
                                          str(tmp_path / "missing")])) == 2
    assert "keypoints folder" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_keypoints_of_a_video_with_non_square_pixels_land_on_the_blob(tmp_path):
    """An anamorphic video (pixels 4:3 wide, stored 60x60 and shown 80x60) is stretched to its display shape; the
    keypoints, given in the stored pixels as a pose estimator reading the file with OpenCV sees them, follow."""
    from fractions import Fraction

    import av

    track = blob_track(N_RAW, 2)  # display pixels
    coded_width = 60
    stored = np.stack([cv2.resize(frame, (coded_width, HEIGHT), interpolation=cv2.INTER_AREA)
                       for frame in blob_frames(track)])
    root, keypoint_dir = tmp_path / "raw", tmp_path / "keypoints"
    root.mkdir()
    keypoint_dir.mkdir()
    with av.open(str(root / "v.mkv"), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt = coded_width, HEIGHT, "rgb24"
        stream.options = {"qp": "0"}
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for frame in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    coded = keypoints_of(track)
    coded[..., 0] = (coded[..., 0] + 0.5) * coded_width / WIDTH - 0.5
    np.save(keypoint_dir / "v.npy", coded)
    prepare_dataset(root, tmp_path / "out", size=SIZE, lags=LAGS, keypoints_dir=keypoint_dir, progress=False)
    video = PreparedDataset(tmp_path / "out").video("v")
    assert video.meta["raw_size"] == [HEIGHT, WIDTH]
    np.testing.assert_allclose(video.keypoints[:, 0], resize_points(track, (HEIGHT, WIDTH), SIZE), atol=1e-4)
    for frame, point in zip(video.frames, video.keypoints[:, 0]):
        np.testing.assert_allclose(point, centroid(frame), atol=0.15)
