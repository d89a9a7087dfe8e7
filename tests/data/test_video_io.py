"""Video I/O: exact lossless round trips, natural frame order, writers' input layouts, resize geometry, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ipoke.data.video_io import (
    VideoReadError,
    iter_frames,
    natural_sort_key,
    read_frames,
    read_gif,
    resize_frame,
    to_uint8_frames,
    video_fps,
    write_video,
)


@pytest.fixture
def noise_clip() -> np.ndarray:
    """uint8 (6, 18, 22, 3) random frames: any lossy step would change them."""
    return np.random.default_rng(1).integers(0, 256, (6, 18, 22, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, codec, crf", [("clip.mkv", "ffv1", 18), ("clip.avi", None, 18),
                                              ("clip_rgb.mkv", "libx264rgb", 0)])
def test_lossless_video_round_trip_is_exact(tmp_path, noise_clip, name, codec, crf):
    path = write_video(tmp_path / name, noise_clip, fps=12, codec=codec, crf=crf)
    frames = read_frames(path)
    assert frames.dtype == np.uint8 and frames.shape == noise_clip.shape
    np.testing.assert_array_equal(frames, noise_clip)
    assert video_fps(path) == pytest.approx(12)


def test_mp4_is_h264_and_close_for_smooth_content(tmp_path):
    import av

    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    frames = np.stack([np.stack([np.add.outer(ramp, ramp * 0) * 0.5 + 10 * t, np.add.outer(ramp * 0, ramp) * 0.8,
                                 np.full((32, 32), 100.0)], -1) for t in range(5)]).clip(0, 255).astype(np.uint8)
    path = write_video(tmp_path / "smooth.mp4", frames)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    back = read_frames(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 3.0


def test_mp4_falls_back_to_opencv_without_pyav_and_other_formats_say_what_is_missing(tmp_path, monkeypatch):
    import sys

    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    frames = np.stack([np.stack([np.add.outer(ramp, ramp * 0) * 0.5 + 20 * t, np.add.outer(ramp * 0, ramp) * 0.8,
                                 np.full((32, 32), 100.0)], -1) for t in range(5)]).clip(0, 255).astype(np.uint8)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.warns(UserWarning, match="PyAV is not importable"):
        path = write_video(tmp_path / "fallback.mp4", frames, fps=8)
    capture = cv2.VideoCapture(str(path))
    back = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        back.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    assert np.stack(back).shape == frames.shape
    assert np.abs(np.stack(back).astype(int) - frames).mean() < 6.0  # lossy, but these frames, not others
    with pytest.raises(ImportError, match="PyAV"):
        write_video(tmp_path / "clip.mkv", frames)
    assert not (tmp_path / "clip.mkv").exists()


def test_writers_accept_float_channel_first_torch_and_pad_odd_sides(tmp_path, noise_clip):
    as_float = torch.from_numpy(noise_clip).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (T, 3, H, W) in [-1, 1]
    np.testing.assert_array_equal(to_uint8_frames(as_float), noise_clip)
    np.testing.assert_array_equal(to_uint8_frames(noise_clip.transpose(0, 3, 1, 2)), noise_clip)
    np.testing.assert_array_equal(to_uint8_frames(noise_clip.astype(np.int64)), noise_clip)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        to_uint8_frames(noise_clip.astype(np.int64) * 2)
    odd = noise_clip[:, :17, :21]
    back = read_frames(write_video(tmp_path / "odd.mp4", odd))
    assert back.shape == (6, 18, 22, 3)  # 4:2:0 needs even sides: padded by one repeated row/column
    with pytest.raises(ValueError, match="channels"):
        to_uint8_frames(np.zeros((2, 5, 8, 8), np.uint8))


def test_gif_round_trip_keeps_length_and_approximate_colours(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    for t in range(4):
        frames[t, :, 4 * t:4 * t + 4] = (255, 40, 0)  # a red bar moving right
    path = write_video(tmp_path / "bar.gif", frames, fps=5)
    back = read_gif(path)
    assert back.shape == frames.shape
    np.testing.assert_allclose(back.astype(int), frames.astype(int), atol=8)
    np.testing.assert_array_equal(read_frames(path).shape, frames.shape)


def test_fast_gif_palette_keeps_frames_and_colours_close(tmp_path):
    from ipoke.data.video_io import gif_bytes

    ramp = np.linspace(0, 255, 48)
    frames = np.stack([np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((48, 48), 40.0 * t)), -1)
                       for t in range(6)]).round().astype(np.uint8)  # 48x48 colour gradients: many colours
    fast, default = gif_bytes(frames, fps=5, fast=True), gif_bytes(frames, fps=5)
    assert fast != default
    errors = {}
    for name, data in (("fast", fast), ("default", default)):
        path = tmp_path / f"{name}.gif"
        path.write_bytes(data)
        back = read_gif(path)
        assert back.shape == frames.shape
        errors[name] = np.abs(back.astype(int) - frames.astype(int)).mean()
    assert errors["fast"] < 4 and errors["default"] < 4


def test_gif_frames_held_longer_are_repeated_at_a_constant_rate(tmp_path):
    # A poke video as GIF writers store it: the still start (5 identical frames) merged into one frame shown 5 times
    # as long. Read at a constant rate, frame index means time again, and the rate is the shortest delay's.
    from PIL import Image

    frames = np.zeros((8, 16, 16, 3), np.uint8)
    for t in range(8):
        frames[t, :, 2 * t:2 * t + 2] = (255, 40, 0)
    images = [Image.fromarray(frame) for frame in frames]
    path = tmp_path / "held.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=[500] + [100] * 7, loop=0)
    back = read_frames(path)
    assert back.shape == (12, 16, 16, 3)
    for t in range(5):
        np.testing.assert_allclose(back[t].astype(int), frames[0].astype(int), atol=8)
    np.testing.assert_allclose(back[5:].astype(int), frames[1:].astype(int), atol=8)
    assert read_gif(path).shape == back.shape
    assert video_fps(path) == pytest.approx(10.0)
    # Written by ipoke (one delay for every frame, identical frames merged by Pillow): the same length comes back.
    still = np.repeat(frames[:1], 3, axis=0)
    path = write_video(tmp_path / "still_then_move.gif", np.concatenate([still, frames[1:4]]), fps=5)
    assert read_frames(path).shape[0] == 6 and video_fps(path) == pytest.approx(5.0)


def test_frame_folder_natural_order_step_and_limit(tmp_path, noise_clip):
    for index in range(len(noise_clip)):  # frame_2 must come before frame_10
        cv2.imwrite(str(tmp_path / f"frame_{index * 4}.png"), cv2.cvtColor(noise_clip[index], cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not a frame")
    np.testing.assert_array_equal(read_frames(tmp_path), noise_clip)
    np.testing.assert_array_equal(read_frames(tmp_path, frame_step=2), noise_clip[::2])
    np.testing.assert_array_equal(np.stack(list(iter_frames(tmp_path, frame_step=2, max_frames=2))), noise_clip[:4:2])
    assert sorted(["f10", "f2", "f1"], key=natural_sort_key) == ["f1", "f2", "f10"]


def test_video_frame_step_matches_every_kth_frame(tmp_path, noise_clip):
    path = write_video(tmp_path / "clip.mkv", noise_clip)
    np.testing.assert_array_equal(read_frames(path, frame_step=3), noise_clip[::3])
    assert video_fps(tmp_path) is None


def test_read_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(VideoReadError, match="broken.mp4"):
        read_frames(broken)
    with pytest.raises(VideoReadError, match="does not exist"):
        read_frames(tmp_path / "missing.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="contains no images"):
        read_frames(empty)
    (empty / "frame_0.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match="frame_0.png"):
        read_frames(empty)


def test_names_that_are_not_utf8_or_hold_a_colon_are_read_and_written(tmp_path, noise_clip, monkeypatch):
    import os

    from ipoke.data.video_io import decode_image_file, write_image_file

    # cv2.imread/imwrite crashed the process (segmentation fault) on a name that is not valid UTF-8.
    latin = os.fsdecode(b"fr\xe9mes")
    folder = tmp_path / latin
    folder.mkdir()
    for index, frame in enumerate(noise_clip):
        write_image_file(folder / os.fsdecode(b"im\xe9_%d.png" % index), frame)
    np.testing.assert_array_equal(read_frames(folder), noise_clip)
    np.testing.assert_array_equal(decode_image_file(str(folder / os.fsdecode(b"im\xe9_0.png"))), noise_clip[0])
    assert decode_image_file(write_video(tmp_path / "clip.mkv", noise_clip)) is None  # not an image: None
    # FFmpeg read `cam1:take2.mp4` given without a folder as the protocol `cam1` ("damaged or not a video").
    monkeypatch.chdir(tmp_path)
    write_video("cam1:take2.mkv", noise_clip, codec="ffv1")
    np.testing.assert_array_equal(read_frames("cam1:take2.mkv"), noise_clip)
    assert video_fps("cam1:take2.mkv") is not None


@pytest.mark.parametrize("name", ["clip.avi", "clip.mkv", "clip.mp4"])
def test_a_video_cut_short_is_refused_not_read_short(tmp_path, name):
    # FFmpeg stops early without an error on a truncated file (and an AVI's last frame came half garbage); the
    # container's frame count (avi, mp4) or duration (mkv) says how many frames there should be.
    frames = np.random.default_rng(0).integers(0, 256, (30, 32, 40, 3), dtype=np.uint8)
    path = write_video(tmp_path / name, frames, fps=10)
    assert len(read_frames(path)) == 30
    whole = path.read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])
    with pytest.raises(VideoReadError, match=rf"cut_{name}.* damaged"):  # mp4 without faststart: no index
        read_frames(cut)
    assert len(read_frames(path, max_frames=5)) == 5  # stopping early on purpose is no damage


def test_valid_videos_with_fewer_frames_than_rate_times_duration_are_read_whole(tmp_path):
    # A check by frame counts refused these (regression of the cut-short check): a variable frame rate, an mp4 cut by
    # stream copy (its edit list keeps 20 of 100 stored frames) and an AVI with empty chunks for dropped frames.
    from fractions import Fraction

    import av

    def frame(i):
        return av.VideoFrame.from_ndarray(np.full((32, 32, 3), 2 * i % 256, np.uint8), format="rgb24")

    vfr = tmp_path / "pause.mkv"  # 30 frames at 25 fps, 10 s of nothing, 5 more frames; nominal rate 25
    with av.open(str(vfr), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, pts in enumerate([i * 40 for i in range(30)] + [11200 + i * 40 for i in range(5)]):
            picture = frame(i)
            picture.pts, picture.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    assert len(read_frames(vfr)) == 35
    source = tmp_path / "source.mp4"  # one keyframe every 100 frames
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "100", "keyint_min": "100", "sc_threshold": "0", "bf": "0"}
        for i in range(120):
            picture = frame(i)
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    cut = tmp_path / "cut.mp4"  # `ffmpeg -ss 3.2 -t 0.8 -c copy`: packets from the keyframe before, frame 80 at t = 0
    with av.open(str(source)) as reader, av.open(str(cut), "w") as writer:
        original = reader.streams.video[0]
        copy = writer.add_stream_from_template(original)
        ticks = int(1 / (original.time_base * 25))
        for packet in reader.demux(original):
            if packet.dts is None or packet.pts >= 100 * ticks:
                continue
            packet.pts, packet.dts, packet.stream = packet.pts - 80 * ticks, packet.dts - 80 * ticks, copy
            writer.mux(packet)
    assert len(read_frames(cut)) == 20
    dropped = tmp_path / "dropped.avi"  # every third frame an empty chunk, as capture tools write dropped frames
    with av.open(str(dropped), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for i in range(40):
            if i % 3 == 2:
                empty = av.Packet(b"")
                empty.pts = empty.dts = i
                empty.stream = stream
                container.mux(empty)
                continue
            picture = frame(i)
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    assert len(read_frames(dropped)) == 27


@pytest.mark.parametrize("suffix", ["mp4", "mkv", "mov"])
def test_a_last_frame_held_for_seconds_is_no_damage(tmp_path, suffix):
    # Screen recordings and paused phone clips hold their last frame; the container's duration includes that hold,
    # so the cut-short check refused these complete files ("announces 6.97 s but the frames stop after 1.20 s").
    from fractions import Fraction

    import av

    path = tmp_path / f"hold_end.{suffix}"
    # faststart: the mp4/mov index comes first, so a cut file still opens and the frame-count check is what finds it
    options = {} if suffix == "mkv" else {"movflags": "faststart"}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        packets = []
        for i in range(30):
            picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i, np.uint8), format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, 30)
            packets += stream.encode(picture)
        packets += stream.encode()
        for packet in packets:
            if packet.pts == 29:
                packet.duration = int(6 / packet.time_base)
            container.mux(packet)
    frames = read_frames(path)
    assert len(frames) == 30
    np.testing.assert_allclose(frames[:, 16, 16, 0].astype(float), 8 * np.arange(30), atol=6)
    whole = path.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])
    with pytest.raises(VideoReadError, match="damaged"):  # opens (faststart), then the reading finds the cut
        read_frames(cut)  # still caught when the file is really cut short


def test_non_square_pixels_are_stretched_to_the_shape_a_player_shows(tmp_path):
    # HDV/AVCHD and DVD store pixels wider than tall (here 4:3: 192x144 shown as 256x144). Read as stored, a circle
    # round on screen came out 27 px wide and 36 px tall in the prepared frames.
    from fractions import Fraction

    import av

    from ipoke.data.video_io import video_sample_aspect

    path = tmp_path / "hdv.mkv"
    frames = []
    for t in range(6):
        shown = np.full((144, 256, 3), 40, np.uint8)
        cv2.circle(shown, (128 + 4 * t, 72), 40, (255, 255, 255), -1)
        frames.append(cv2.resize(shown, (192, 144), interpolation=cv2.INTER_AREA))  # what the camera stores
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt = 192, 144, "rgb24"
        stream.options = {"qp": "0"}
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert video_sample_aspect(path) == Fraction(4, 3)
    read = read_frames(path)
    assert read.shape == (6, 144, 256, 3)
    ys, xs = np.nonzero(read[0, ..., 0] > 128)
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 2  # round again
    assert abs(xs.mean() - 128) < 1 and abs(ys.mean() - 72) < 1


def test_frame_folder_with_mixed_frame_sizes_is_refused(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for index in range(4):
        width = 80 if index < 2 else 100
        cv2.imwrite(str(folder / f"frame_{index}.png"), np.full((60, width, 3), 40 * index, np.uint8))
    with pytest.raises(VideoReadError, match=r"clip mixes frame sizes: frame_0.png is 80x60 but frame_2.png is 100x60"):
        list(iter_frames(folder))
    assert len(list(iter_frames(folder, max_frames=2))) == 2  # the first frames alone are fine


def test_resize_crop_keeps_centre_and_squash_keeps_everything():
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 20:60] = 255  # the centre square is white, the sides black
    cropped = resize_frame(frame, 20, mode="crop")
    assert cropped.shape == (20, 20, 3) and cropped.min() == 255
    squashed = resize_frame(frame, 20, mode="squash")
    assert squashed.shape == (20, 20, 3)
    assert squashed[:, 0].max() == 0 and squashed[:, 10].min() == 255  # black sides survive, squeezed
    same = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_frame(same, 20, mode="crop"), same[:, 2:22])  # no resampling at size S
    with pytest.raises(ValueError, match="resize mode"):
        resize_frame(frame, 20, mode="stretch")


def test_video_whose_resolution_changes_mid_stream_is_refused(tmp_path):
    # A raw MJPEG stream is a concatenation of JPEGs, so its frames can change size (as concatenated recordings do).
    path = tmp_path / "joined.mjpeg"
    with open(path, "wb") as stream:
        for index in range(4):
            width = 80 if index < 2 else 96
            ok, jpeg = cv2.imencode(".jpg", np.full((64, width, 3), 40 * index, np.uint8))
            stream.write(jpeg.tobytes())
    with pytest.raises(VideoReadError, match=r"video .*joined.mjpeg mixes frame sizes: frame 0 is 80x64 but frame 2 "
                                             r"is 96x64 .*split it where the resolution changes"):
        read_frames(path)
    assert read_frames(path, max_frames=2).shape == (2, 64, 80, 3)


@pytest.mark.parametrize(("fps", "delay"), [(15, 70), (7.3, 140), (5, 200), (4, 250), (50, 20)])
def test_gif_frame_delay_is_the_nearest_centisecond(tmp_path, fps, delay):
    # Pillow truncates milliseconds to centiseconds: 15 fps (67 ms) played as 60 ms, faster than the sample's mp4.
    from PIL import Image

    from ipoke.data.video_io import write_gif

    frames = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    with Image.open(write_gif(tmp_path / "a.gif", frames, fps=fps)) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations == [delay] * 3
