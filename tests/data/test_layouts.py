"""Raw dataset layouts on small fake trees: ids, splits, object ids, and clear errors for trees that do not fit.

Layouts look only at paths, so most trees here hold empty placeholder video files; frame folders get one tiny PNG.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ipoke.data.layouts import LayoutError, discover_videos, find_media, sanitize_id


def touch(root: Path, *relative_paths: str) -> None:
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def frame_folder(root: Path, relative: str, n_frames: int = 1) -> None:
    import cv2

    folder = root / relative
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n_frames):
        cv2.imwrite(str(folder / f"{index:04d}.png"), np.full((4, 4, 3), index, np.uint8))


def by_id(sources):
    return {source.video_id: source for source in sources}


def test_plain_finds_videos_and_frame_folders_recursively(tmp_path):
    touch(tmp_path, "b.mp4", "sub/a.MKV", "sub/.hidden.mp4", "sub/readme.txt", "x10.webm", "x2.avi")
    frame_folder(tmp_path, "sub/frames_dir")
    sources = discover_videos(tmp_path)
    assert [s.video_id for s in sources] == ["b", "sub__a", "sub__frames_dir", "x2", "x10"]
    assert by_id(sources)["sub__frames_dir"].path == tmp_path / "sub" / "frames_dir"
    assert all(source.split is None and source.object_id is None for source in sources)
    assert by_id(sources)["sub__a"].relative_path == "sub/a.MKV"


def test_a_lone_preview_image_beside_videos_is_no_video(tmp_path, caplog):
    # A stray preview.jpg made its folder a one-frame "video": the plants layout refused it as misnamed ('plants').
    import cv2

    touch(tmp_path, "plants/VID_0_0.mp4", "plants/VID_0_1.mp4")
    frame_folder(tmp_path, "taichi/train/abc.mp4", n_frames=3)
    for preview in ("plants/preview.jpg", "taichi/train/sample.png"):
        cv2.imwrite(str(tmp_path / preview), np.zeros((4, 4, 3), np.uint8))
    with caplog.at_level("WARNING"):
        assert sorted(by_id(discover_videos(tmp_path / "plants", "plants"))) == ["VID_0_0", "VID_0_1"]
        assert [s.video_id for s in discover_videos(tmp_path / "taichi", "taichi")] == ["abc"]
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert "preview.jpg" in warnings and "train/sample.png" in warnings


def test_a_video_reached_through_two_links_is_read_once(tmp_path, caplog):
    # raw/a/c*.mkv link to store/c*.mkv and raw/b links to store/: each clip was prepared twice, and a random split
    # put a0 in train and b0 in test.
    touch(tmp_path, "store/c0.mkv", "store/c1.mkv")
    (tmp_path / "raw" / "a").mkdir(parents=True)
    for name in ("c0.mkv", "c1.mkv"):
        (tmp_path / "raw" / "a" / name).symlink_to(tmp_path / "store" / name)
    (tmp_path / "raw" / "b").symlink_to(tmp_path / "store", target_is_directory=True)
    touch(tmp_path, "raw/b2.mkv")
    with caplog.at_level("WARNING"):
        assert [s.video_id for s in discover_videos(tmp_path / "raw")] == ["a__c0", "a__c1", "b2"]
    assert "b/c0.mkv (= a/c0.mkv)" in caplog.text


def test_plain_errors_for_empty_folder_missing_folder_and_id_collisions(tmp_path):
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "empty", "notes.txt")
    with pytest.raises(LayoutError, match="no videos found"):
        discover_videos(tmp_path / "empty")
    with pytest.raises(LayoutError, match="does not exist"):
        discover_videos(tmp_path / "missing")
    touch(tmp_path / "clash", "a b.mp4", "a_b.mkv")
    with pytest.raises(LayoutError, match="both map to the video id 'a_b'"):
        discover_videos(tmp_path / "clash")
    with pytest.raises(LayoutError, match="unknown layout"):
        discover_videos(tmp_path / "clash", "kinetics")


def test_sanitize_id_makes_valid_ids():
    assert sanitize_id("-4oGk3HnQ0A#000123#000456") == "v-4oGk3HnQ0A_000123_000456"
    assert sanitize_id("Directions 1.54138969") == "Directions_1.54138969"
    # Names that differ only in non-ASCII characters became the same id (日本 and 中国: 'v__').
    ids = {sanitize_id(name) for name in ("日本", "中国", "café", "cafè", "caf_")}
    assert len(ids) == 5 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", i) for i in ids)
    assert sanitize_id("cafe\u0301") == sanitize_id("café") and sanitize_id("café").startswith("caf_-")  # NFD, NFC


def test_plants_object_ids_and_bad_names(tmp_path):
    touch(tmp_path, "VID_0_3_1024x1024.mkv", "VID_0_5.mkv", "VID_12_0.mkv")
    frame_folder(tmp_path, "VID_3_1")
    sources = by_id(discover_videos(tmp_path, "plants"))
    assert set(sources) == {"VID_0_3_1024x1024", "VID_0_5", "VID_12_0", "VID_3_1"}
    assert sources["VID_0_5"].object_id == "plant0" and sources["VID_12_0"].meta == {"plant": 12, "take": 0}
    assert all(source.split is None for source in sources.values())  # split by takes during preparation
    touch(tmp_path, "holiday.mp4")
    with pytest.raises(LayoutError, match="holiday.mp4"):
        discover_videos(tmp_path, "plants")


def test_iper_train_list_in_raw_folder_both_name_forms(tmp_path):
    touch(tmp_path, "001_1_1.mp4", "001_1_2.mp4", "002_3_2.mp4")
    frame_folder(tmp_path, "003/1/1")  # the image release's nested frame folders
    (tmp_path / "train.txt").write_text("001/1/1\n003_1_1\n\n")
    sources = by_id(discover_videos(tmp_path, "iper"))
    assert {vid: s.split for vid, s in sources.items()} == {
        "001_1_1": "train", "001_1_2": "test", "002_3_2": "test", "003_1_1": "train"}
    assert sources["002_3_2"].object_id == "002_3"
    assert sources["002_3_2"].meta == {"actor": 2, "outfit": 3, "action": 2}
    elsewhere = tmp_path.parent / "lists" / "train.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("002/3/2\n")
    assert by_id(discover_videos(tmp_path, "iper", train_list=elsewhere))["002_3_2"].split == "train"
    # The image release one folder further down (as unpacked from its archive) was refused as misnamed.
    nested = tmp_path.parent / "nested"
    frame_folder(nested, "iPER_256_image_release/001/1/1")
    frame_folder(nested, "iPER_256_image_release/001/1/2")
    (nested / "train.txt").write_text("001/1/1\n")
    assert {vid: s.split for vid, s in by_id(discover_videos(nested, "iper")).items()} == {"001_1_1": "train",
                                                                                           "001_1_2": "test"}


def test_iper_errors(tmp_path):
    touch(tmp_path, "001_1_1.mp4")
    with pytest.raises(LayoutError, match="train.txt"):
        discover_videos(tmp_path, "iper")
    (tmp_path / "train.txt").write_text("999/9/9\n")
    with pytest.raises(LayoutError, match="none of the 1 videos"):
        discover_videos(tmp_path, "iper")
    touch(tmp_path, "random.mp4")
    (tmp_path / "train.txt").write_text("001/1/1\n")
    with pytest.raises(LayoutError, match="random.mp4"):
        discover_videos(tmp_path, "iper")


def test_h36m_subject_split_for_trees_and_official_names(tmp_path):
    frame_folder(tmp_path, "S1/Walking-1/54138969")
    touch(tmp_path, "S9/Directions/cam2.mp4", "S11/Videos/Sitting Down 1.55011271.mp4",
          "S5/Videos/_ALL 1.54138969.mp4", "S7/Videos/Eating.60457274.mp4")
    sources = by_id(discover_videos(tmp_path, "h36m"))
    assert {vid: s.split for vid, s in sources.items()} == {
        "S1__Walking-1__54138969": "train", "S7__Eating__60457274": "train", "S9__Directions__cam2": "test",
        "S11__Sitting-Down-1__55011271": "test"}
    meta = sources["S11__Sitting-Down-1__55011271"].meta
    assert meta == {"subject": "S11", "action": "Sitting", "sequence": "Sitting Down 1", "camera": "55011271"}
    assert sources["S1__Walking-1__54138969"].object_id == "S1"
    touch(tmp_path, "S2/Walking/cam.mp4")
    with pytest.raises(LayoutError, match="subject S2"):
        discover_videos(tmp_path, "h36m")


def test_taichi_train_test_folders_and_folders_named_like_videos(tmp_path):
    frame_folder(tmp_path, "train/-abc#0001#0100.mp4")
    touch(tmp_path, "train/xyz#0002#0050.mp4", "test/-abc#0200#0300.mp4")
    sources = by_id(discover_videos(tmp_path, "taichi"))
    assert {vid: (s.split, s.object_id) for vid, s in sources.items()} == {
        "v-abc_0001_0100": ("train", "v-abc"), "xyz_0002_0050": ("train", "xyz"),
        "v-abc_0200_0300": ("test", "v-abc")}
    assert sources["v-abc_0001_0100"].path.is_dir()
    touch(tmp_path, "extra/stray.mp4")
    with pytest.raises(LayoutError, match="outside train/ and test/"):
        discover_videos(tmp_path, "taichi")
    with pytest.raises(LayoutError, match="train/ and test/"):
        discover_videos(tmp_path / "extra", "taichi")


def test_find_media_treats_a_raw_folder_of_frames_as_one_video(tmp_path):
    frame_folder(tmp_path, "only", n_frames=3)
    assert find_media(tmp_path / "only") == [tmp_path / "only"]
