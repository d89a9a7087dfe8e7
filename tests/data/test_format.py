"""The prepared dataset format: exact round trip, atomic writes, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ipoke.data.format import DatasetFormatError, DatasetWriter, PreparedDataset, write_index


def _arrays(n=5, size=16, lags=(1, 2)):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    starts = np.arange(n - max(lags))
    flow = rng.normal(size=(len(starts), len(lags), 2, size, size)).astype(np.float16)
    return frames, flow, starts


def test_round_trip_is_exact(tmp_path):
    frames, flow, starts = _arrays()
    masks = (frames[..., 0] > 128).astype(np.uint8)
    writer = DatasetWriter(tmp_path / "d", size=16, flow_lags=[1, 2], source="test")
    writer.write_video("vid-1", split="train", frames=frames, flow=flow, flow_starts=starts, masks=masks,
                       object_id="thing")
    writer.write_index()
    data = PreparedDataset(tmp_path / "d")
    video = data.video("vid-1")
    np.testing.assert_array_equal(video.frames, frames)
    np.testing.assert_array_equal(video.flow, flow)
    np.testing.assert_array_equal(video.masks, masks)
    assert video.keypoints is None and video.pokes is None
    assert data.splits() == {"train": 1}
    assert video.meta["object_id"] == "thing" and video.meta["n_frames"] == 5
    np.testing.assert_array_equal(video.flow_between(int(starts[1]), 2, data.flow_lags), flow[1, 1].astype(np.float32))
    with pytest.raises(KeyError, match="no flow"):
        video.flow_between(4, 1, data.flow_lags)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    frames, flow, starts = _arrays()
    writer = DatasetWriter(tmp_path / "d", size=16, flow_lags=[1, 2], source="test")
    with pytest.raises(DatasetFormatError):
        writer.write_video("v", split="train", frames=frames, flow=flow[:, :1], flow_starts=starts)
    real_save = np.save

    def failing_save(path, array, *args, **kwargs):
        if str(path).endswith("masks.npy"):  # fail half way through the video
            raise OSError("disk full")
        return real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        writer.write_video("v", split="train", frames=frames, flow=flow, flow_starts=starts,
                           masks=np.zeros((5, 16, 16), np.uint8))
    assert not writer.has_video("v")
    assert list((tmp_path / "d" / "videos").iterdir()) == []


@pytest.mark.parametrize("bad, message", [
    (dict(frames=np.zeros((1, 16, 16, 3), np.uint8)), "at least 2 frames"),
    (dict(frames=np.zeros((5, 16, 8, 3), np.uint8)), "uint8 \\(N, S, S, 3\\)"),
    (dict(frames=np.zeros((5, 16, 16, 3), np.float32)), "uint8"),
    (dict(flow_starts=np.array([0, 1, 2, 3])), "reach past"),
    (dict(masks=np.zeros((5, 8, 8), np.uint8)), "masks"),
])
def test_malformed_videos_are_rejected(tmp_path, bad, message):
    frames, flow, starts = _arrays()
    kwargs = dict(frames=frames, flow=flow, flow_starts=starts)
    kwargs.update(bad)
    if "flow_starts" in bad:
        kwargs["flow"] = np.zeros((4, 2, 2, 16, 16), np.float16)
    writer = DatasetWriter(tmp_path / "d", size=16, flow_lags=[1, 2], source="test")
    with pytest.raises(DatasetFormatError, match=message):
        writer.write_video("v", split="train", **kwargs)


def test_writer_refuses_foreign_or_mismatched_folders(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetFormatError, match="not an ipoke dataset"):
        DatasetWriter(tmp_path / "foreign", size=16, flow_lags=[1], source="test")
    DatasetWriter(tmp_path / "d", size=16, flow_lags=[1], source="test").write_index()
    with pytest.raises(DatasetFormatError, match="size 16"):
        DatasetWriter(tmp_path / "d", size=32, flow_lags=[1], source="test")
    with pytest.raises(DatasetFormatError, match="not allowed"):
        DatasetWriter(tmp_path / "d", size=16, flow_lags=[1], source="test").write_video(
            "../escape", split="train", frames=np.zeros((2, 16, 16, 3), np.uint8),
            flow=np.zeros((1, 1, 2, 16, 16)), flow_starts=[0])


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        PreparedDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="ipoke data synth"):
        PreparedDataset(tmp_path / "empty")
    writer = DatasetWriter(tmp_path / "d", size=16, flow_lags=[1, 2], source="test")
    writer.write_index(complete=False)
    with pytest.raises(DatasetFormatError, match="incomplete"):
        PreparedDataset(tmp_path / "d")
    index = json.loads((tmp_path / "d" / "ipoke_dataset.json").read_text())
    index.update(complete=True, format_version=99)
    (tmp_path / "d" / "ipoke_dataset.json").write_text(json.dumps(index))
    with pytest.raises(DatasetFormatError, match="version 99"):
        PreparedDataset(tmp_path / "d")


def test_index_is_rebuilt_from_videos(tmp_path):
    frames, flow, starts = _arrays()
    writer = DatasetWriter(tmp_path / "d", size=16, flow_lags=[1, 2], source="test")
    for name in ("a", "b"):
        writer.write_video(name, split="test", frames=frames, flow=flow, flow_starts=starts)
    writer.write_index()
    (tmp_path / "d" / "ipoke_dataset.json").unlink()
    # `ipoke data index DIR` cannot pass size and flow_lags: the message names what works instead.
    with pytest.raises(DatasetFormatError, match=r"only rebuilds an existing one\. From Python, pass them: .*"
                                                 r"write_index\(root, size=\.\.\., flow_lags=\[\.\.\.\]\); or "
                                                 r"re-run .* also makes again any video you deleted"):
        write_index(tmp_path / "d")
    index = write_index(tmp_path / "d", size=16, flow_lags=[1, 2])
    assert [v["id"] for v in index["videos"]] == ["a", "b"]
    assert PreparedDataset(tmp_path / "d").ids("test") == ["a", "b"]


@pytest.mark.parametrize("content, message", [
    ("{\"format\": ", "not valid JSON"),
    ("[1, 2]", "JSON array, not the index object"),
    ("\"text\"", "JSON string"),
])
def test_damaged_index_is_reported_by_name(tmp_path, content, message):
    frames, flow, starts = _arrays()
    writer = DatasetWriter(tmp_path / "d", size=16, flow_lags=[1, 2], source="test")
    writer.write_video("a", split="train", frames=frames, flow=flow, flow_starts=starts)
    writer.write_index()
    (tmp_path / "d" / "ipoke_dataset.json").write_text(content)
    for action in (lambda: PreparedDataset(tmp_path / "d"), lambda: write_index(tmp_path / "d"),
                   lambda: DatasetWriter(tmp_path / "d", size=16, flow_lags=[1, 2], source="test")):
        with pytest.raises(DatasetFormatError, match=message) as error:
            action()
        assert "ipoke_dataset.json" in str(error.value) and "delete it" in str(error.value)
