"""PokeDataset samples and the data module's batches."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ipoke.data.datasets import PokeDataset, resize_flow, resize_mask
from ipoke.data.format import DatasetFormatError
from ipoke.lightning.datamodule import PokeDataModule


def test_sample_layout_and_values(synthetic_dataset):
    dataset = PokeDataset(synthetic_dataset, split="train", augment=True, zero_poke_fraction=0.0)
    sample = dataset[0]
    assert sample["video"].shape == (11, 3, 64, 64) and sample["video"].dtype == torch.float32
    assert sample["video"].min() >= -1 and sample["video"].max() <= 1
    assert sample["flow"].shape == sample["poke"].shape == (2, 64, 64)
    assert sample["poke_coords"].shape == (5, 4) and 1 <= int(sample["poke_count"]) <= 5
    assert sample["mask"].shape == (64, 64) and bool(sample["has_mask"])
    # Each poke square carries the flow vector at its centre (later pokes overwrite overlaps: check the last).
    x, y, dx, dy = sample["poke_coords"][int(sample["poke_count"]) - 1]
    assert sample["poke"][:, int(y), int(x)].tolist() == pytest.approx([float(dx), float(dy)])
    assert sample["flow"][:, int(y), int(x)].tolist() == pytest.approx([float(dx), float(dy)])


def test_zero_poke_sample_is_static(synthetic_dataset):
    dataset = PokeDataset(synthetic_dataset, split="train", zero_poke_fraction=0.999, deterministic=True)
    sample = dataset[1]
    assert bool(sample["background_poke"])
    assert torch.equal(sample["video"][0], sample["video"][-1])
    assert not sample["flow"].any() and sample["poke"].abs().sum() > 0


def test_deterministic_mode_repeats_and_seed_changes(synthetic_dataset):
    a = PokeDataset(synthetic_dataset, split="val", deterministic=True, seed=1, augment=True)
    b = PokeDataset(synthetic_dataset, split="val", deterministic=True, seed=2, augment=True)
    assert torch.equal(a[0]["video"], a[0]["video"]) and torch.equal(a[0]["poke"], a[0]["poke"])
    assert not torch.equal(a[0]["video"], b[0]["video"])


def test_recorded_pokes_keep_their_position_and_carry_the_clips_motion(synthetic_dataset):
    full = PokeDataset(synthetic_dataset, split="train", poke_source="recorded", zero_poke_fraction=0.0)
    index = next(i for i, (vid, _) in enumerate(full.clips) if not full.data.video(vid).meta["background_poke"])
    stored = np.asarray(full.data.video(full.clips[index][0]).pokes)[0]
    big = full[index]
    # The clip spans the whole video: the stored poke (up to the float16 of the stored flow).
    np.testing.assert_allclose(big["poke_coords"][0].numpy(), stored, rtol=0, atol=2e-3)
    # A shorter clip moves less: its poke carries its own flow at the same place (the stored vector, the
    # displacement over the whole video, was served for every clip length).
    short = PokeDataset(synthetic_dataset, split="train", n_frames=4, poke_source="recorded",
                        zero_poke_fraction=0.0)[index]
    x, y, dx, dy = short["poke_coords"][0].tolist()
    assert (x, y) == pytest.approx(stored[:2].tolist())
    assert (dx, dy) == pytest.approx(short["flow"][:, int(y), int(x)].tolist())
    assert np.hypot(dx, dy) > 0 and (dx, dy) != pytest.approx(stored[2:].tolist(), abs=1e-3)
    # At half the size the position halves (it may move onto the nearest object pixel) and the vector is the
    # resized flow there.
    half = PokeDataset(synthetic_dataset, split="train", size=32, poke_source="recorded", zero_poke_fraction=0.0)
    small = half[index]
    assert small["video"].shape == (11, 3, 32, 32)
    x, y, dx, dy = small["poke_coords"][0].tolist()
    assert abs(x - stored[0] / 2) <= 1.5 and abs(y - stored[1] / 2) <= 1.5
    assert bool(small["mask"][int(y), int(x)])
    assert (dx, dy) == pytest.approx(small["flow"][:, int(y), int(x)].tolist())
    # Recorded pokes sit on the unaugmented frame: augmentation with them is refused, not silently replaced.
    with pytest.raises(ValueError, match="augment=False"):
        PokeDataset(synthetic_dataset, poke_source="recorded", augment=True)
    with pytest.raises(ValueError, match="augment: false"):
        PokeDataModule(data_dir=synthetic_dataset, poke_source="recorded")
    module = PokeDataModule(data_dir=synthetic_dataset, poke_source="recorded", augment=False, num_workers=0,
                            batch_size=2, zero_poke_fraction=0.0)
    module.setup("fit")
    assert module.train_set.poke_source == "recorded" and not module.train_set.augment


def test_dataset_arguments_are_checked_when_it_is_built(synthetic_dataset):
    for name, value in [("poke_size", 0), ("poke_size", -3), ("n_pokes", 0), ("n_frames", 0), ("frame_step", 0),
                        ("size", 0), ("size", -8), ("size", 4), ("seed", -1), ("max_clips", 0), ("max_clips", -1),
                        ("poke_size", 2.5)]:
        with pytest.raises(ValueError, match=f"{name} must be"):
            PokeDataset(synthetic_dataset, **{name: value})
    assert len(PokeDataset(synthetic_dataset, max_clips=1)) == 1


def test_resize_flow_rescales_vectors():
    flow = np.ones((2, 16, 16), np.float32) * np.array([3.0, -1.0], np.float32)[:, None, None]
    small = resize_flow(flow, 8)
    np.testing.assert_allclose(small[:, 4, 4], [1.5, -0.5])


def test_resize_mask_marks_the_pixels_mostly_covered():
    # A 4x4 block at 64 px rows/cols 9-12 covers 9/16 of the 16 px pixel (2, 2) and 1/16 of (3, 3); the frames'
    # area resize shows it at (2, 2). Nearest-neighbour resizing marked (3, 3) alone.
    mask = np.zeros((64, 64), np.uint8)
    mask[9:13, 9:13] = 1
    small = resize_mask(mask, 16)
    assert small.dtype == np.uint8 and small.shape == (16, 16)
    assert np.argwhere(small).tolist() == [[2, 2]]
    # Upscaling keeps each pixel's footprint, centre-aligned.
    tiny = np.zeros((8, 8), np.uint8)
    tiny[3, 5] = 1
    large = resize_mask(tiny, 32)
    assert large.sum() == 16 and np.argwhere(large).min(0).tolist() == [12, 20]


def test_clear_errors(synthetic_dataset):
    # Data that lacks the clips a config asks for (their lag, a split) raises DatasetFormatError, which `ipoke fit`
    # prints as one line (a plain ValueError from the data module's setup came with a 40-line traceback).
    with pytest.raises(DatasetFormatError, match="lag 20"):
        PokeDataset(synthetic_dataset, n_frames=10, frame_step=2)
    with pytest.raises(DatasetFormatError, match="split 'nope'"):
        PokeDataset(synthetic_dataset, split="nope")
    with pytest.raises(ValueError, match="poke_source"):
        PokeDataset(synthetic_dataset, poke_source="magic")


def test_datamodule_batches(synthetic_dataset):
    module = PokeDataModule(data_dir=synthetic_dataset, batch_size=4, num_workers=0, max_val_clips=2)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["video"].shape == (4, 11, 3, 64, 64)
    assert batch["poke_coords"].shape == (4, 5, 4) and batch["poke_count"].shape == (4,)
    assert len(batch["video_id"]) == 4
    val = next(iter(module.val_dataloader()))
    again = next(iter(module.val_dataloader()))
    assert len(module.val_set) == 2
    assert torch.equal(val["poke"], again["poke"]) and torch.equal(val["video"], again["video"])
    assert (val["poke_count"] == 1).all()
    module.setup("test")
    assert len(module.test_set) == 4


@pytest.mark.parametrize("object_weighting", [False, True])
def test_a_resumed_runs_loader_shuffles_and_seeds_its_workers_anew(synthetic_dataset, object_weighting):
    # The training loader draws its clip order and its workers' seeds (pokes, augmentation) when its iterator is
    # made, before any training hook: seeded from the config's seed alone, each resumed job replayed the first one's.
    # Resumed (restored step > 0), it draws from the seed moved on by the step: new, and reproducible.
    from types import SimpleNamespace

    import lightning as L

    module = PokeDataModule(data_dir=synthetic_dataset, batch_size=2, num_workers=0, object_weighting=object_weighting)
    module.setup("fit")

    def draws(step):
        L.seed_everything(0, verbose=False)  # as `ipoke fit` at every start
        module.trainer = SimpleNamespace(global_step=step, world_size=1)
        loader = module.train_dataloader()
        worker_seed = iter(loader)._base_seed
        return worker_seed, list(loader.sampler)

    fresh, resumed, later = draws(0), draws(12), draws(24)
    assert draws(0) == fresh and draws(12) == resumed  # reproducible
    assert resumed[0] != fresh[0] and later[0] != resumed[0]  # the workers' seeds
    assert resumed[1] != fresh[1] and later[1] != resumed[1]  # the clip order
    assert set(resumed[1]) <= set(range(len(module.train_set)))


@pytest.mark.parametrize("step", [0, 12])
def test_each_rank_seeds_its_workers_apart_and_weighs_objects_alike(synthetic_dataset, step):
    # Under DDP every process starts from the same seed: the ranks' workers drew the same pokes and augmentation.
    # The weighted sampler's draws must stay the same on every rank (Lightning hands each rank every
    # world_size-th of them), fresh or resumed.
    from types import SimpleNamespace

    import lightning as L

    module = PokeDataModule(data_dir=synthetic_dataset, batch_size=2, num_workers=0, object_weighting=True)
    module.setup("fit")

    def draws(rank):
        L.seed_everything(0, verbose=False)  # as `ipoke fit` in every process
        module.trainer = SimpleNamespace(global_step=step, global_rank=rank, world_size=2)
        loader = module.train_dataloader()
        return iter(loader)._base_seed, list(loader.sampler)

    rank0, rank1 = draws(0), draws(1)
    assert rank0[0] != rank1[0]  # the workers' seeds
    assert rank0[1] == rank1[1]  # the weighted draws
    assert draws(1) == rank1  # reproducible


def test_datamodule_validates_on_test_when_there_is_no_val_split(tmp_path):
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset

    root = generate_dataset(tmp_path / "d", SyntheticSettings(videos=4, frames=3, size=32, val_fraction=0.0,
                                                              test_fraction=0.5), progress=False)
    module = PokeDataModule(data_dir=str(root), n_frames=3, batch_size=2, num_workers=0)
    with pytest.warns(UserWarning, match="no 'val' split"):
        module.setup("validate")
    assert {vid for vid, _ in module.val_set.clips} == {"test_000000", "test_000001"}


def test_object_weighting_draws_every_object_equally_often(tmp_path):
    """Three videos of plant "a", one of plant "b", two without an object: each of the four objects gets 1/4."""
    from ipoke.data.synthetic import SyntheticSettings, generate_dataset

    root = generate_dataset(tmp_path / "d", SyntheticSettings(videos=6, frames=3, size=32, val_fraction=0.0,
                                                              test_fraction=0.0), progress=False)
    module = PokeDataModule(data_dir=str(root), n_frames=3, batch_size=2, num_workers=0, object_weighting=True,
                            val_split="train")
    module.setup("fit")
    videos = module.train_set.data.videos
    for meta, object_id in zip(videos, ["a", "a", "a", "b", None, None]):
        meta["object_id"] = object_id
    weights = module.train_set.object_balancing_weights()
    by_video = dict(zip((video_id for video_id, _ in module.train_set.clips), weights.tolist()))
    assert [by_video[meta["id"]] for meta in videos] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1, 1, 1])

    torch.manual_seed(0)
    sampler = module.train_dataloader().sampler
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler) and len(sampler) == 6
    objects = {meta["id"]: meta["object_id"] or meta["id"] for meta in videos}
    drawn = [objects[module.train_set.clips[i][0]] for _ in range(400) for i in sampler]
    shares = {name: drawn.count(name) / len(drawn) for name in set(objects.values())}
    assert set(shares) == {"a", "b", videos[4]["id"], videos[5]["id"]}
    assert all(abs(share - 0.25) < 0.03 for share in shares.values()), shares
    # Without it the loader shuffles uniformly: plant "a" then gets half of the draws.
    plain = PokeDataModule(data_dir=str(root), n_frames=3, batch_size=2, num_workers=0, val_split="train")
    plain.setup("fit")
    assert not isinstance(plain.train_dataloader().sampler, torch.utils.data.WeightedRandomSampler)


def test_loader_workers_draw_different_pokes_and_repeat_with_the_seed(synthetic_dataset):
    """Worker seeding: two workers must not repeat each other's pokes; the same seed repeats a whole epoch."""
    import lightning as L

    def epoch_pokes():
        L.seed_everything(7, workers=True, verbose=False)
        module = PokeDataModule(data_dir=synthetic_dataset, batch_size=1, num_workers=2, augment=True,
                                zero_poke_fraction=0.0)
        module.setup("fit")
        module.train_set.clips = [module.train_set.clips[0]] * 4  # the same clip four times
        loader = torch.utils.data.DataLoader(module.train_set, batch_size=1, num_workers=2, shuffle=False)
        return [batch["poke_coords"][0] for batch in loader]

    first, second = epoch_pokes(), epoch_pokes()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # Items 0 and 1 go to different workers: identical pokes would mean both workers share one random stream.
    assert not torch.equal(first[0], first[1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open file descriptors via /proc (Linux)")
def test_open_memory_maps_are_bounded(synthetic_dataset):
    # Every memory-mapped array holds a file descriptor: caching the maps of every video ran a 4000-video dataset out
    # of descriptors in each DataLoader worker. Reading all 18 training videos must keep at most 2 videos open.
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    bounded = PokeDataset(synthetic_dataset, split="train", max_open_videos=2, deterministic=True)
    unbounded = PokeDataset(synthetic_dataset, split="train", max_open_videos=1000, deterministic=True)
    videos = {video_id for video_id, _ in bounded.clips}
    assert len(videos) == 18
    before = open_descriptors()
    first_clips = [bounded[i]["video"] for i in range(len(bounded))]
    bounded_growth = open_descriptors() - before
    assert len(bounded._videos) == 2
    before = open_descriptors()
    for i in range(len(unbounded)):
        unbounded[i]
    unbounded_growth = open_descriptors() - before
    assert unbounded_growth >= 18 * 2  # frames and flow at least, per video
    assert bounded_growth <= 2 * unbounded_growth / 18 + 1
    # Reopening a closed video gives the same clip.
    assert torch.equal(bounded[0]["video"], first_clips[0])


def test_max_open_videos_must_be_positive(synthetic_dataset):
    with pytest.raises(ValueError, match="max_open_videos"):
        PokeDataset(synthetic_dataset, split="train", max_open_videos=0)


def test_keypoint_pokes_drag_moving_joints_by_their_own_motion():
    from ipoke.data.datasets import keypoint_pokes

    start = np.array([[10.0, 10.0], [20.0, 30.0], [40.0, 40.0], [np.nan, 5.0], [70.0, 10.0]])
    end = start + np.array([[0.2, 0.1], [3.0, -4.0], [1.0, 1.0], [1.0, 1.0], [5.0, 0.0]])
    rng = np.random.default_rng(0)
    # Joint 0 barely moves, joint 3 is unknown, joint 4 is outside the 64 px image: only 1 and 2 may be poked.
    pokes = keypoint_pokes(start, end, rng, n_pokes=5, size=64, min_motion=1.0, fixed_count=True)
    assert pokes.shape == (5, 4)
    for x, y, dx, dy in pokes:
        index = int(np.flatnonzero((start[:, 0] == x) & (start[:, 1] == y))[0])
        assert index in (1, 2)
        np.testing.assert_allclose([dx, dy], end[index] - start[index], rtol=1e-6)
    assert keypoint_pokes(start, start, rng, n_pokes=1, size=64).shape == (0, 4)


def test_keypoint_poke_source_pokes_joints_of_the_clip(synthetic_dataset):
    dataset = PokeDataset(synthetic_dataset, split="train", n_pokes=1, fixed_poke_count=True, zero_poke_fraction=0.0,
                          deterministic=True, poke_source="keypoints", size=32)
    scored = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        if not sample["keypoint_poke"]:
            continue
        scored += 1
        video = dataset._video(sample["video_id"])
        start = int(sample["start"])
        # Stored at 64 px, served at 32: pixel centres map as (x + 0.5) / 2 - 0.5.
        joints = (np.asarray(video.keypoints[[start, start + dataset.lag]], np.float64) + 0.5) / 2 - 0.5
        x, y, dx, dy = sample["poke_coords"][0].double().numpy()
        # Poke coordinates count pixel i as [i, i + 1): the joint's pixel-centre position + 0.5, so the poke map
        # covers the pixel nearest to the joint.
        # Sibling branches share their joint in x0, so several joints may start there; one of them is the poke.
        match = np.flatnonzero(np.all(np.isclose(joints[0] + 0.5, [x, y], atol=1e-4), axis=1))
        motions = joints[1, match] - joints[0, match]
        assert np.isclose(motions, [dx, dy], atol=1e-4).all(axis=1).any()
        assert np.hypot(dx, dy) >= 1.0
        assert sample["poke"][:, int(y), int(x)].tolist() == pytest.approx([dx, dy])
    assert scored >= len(dataset) // 2
    with pytest.raises(ValueError, match="augment must be False"):
        PokeDataset(synthetic_dataset, split="train", poke_source="keypoints", augment=True)


def test_keypoints_of_an_older_synthetic_dataset_are_read_in_todays_convention(synthetic_dataset, tmp_path):
    """Generator versions before 4 stored keypoints half a pixel off; the dataset shifts them back."""
    import json
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(synthetic_dataset, legacy)
    index = json.loads((legacy / "ipoke_dataset.json").read_text())
    index["settings"]["generator_version"] = 3
    (legacy / "ipoke_dataset.json").write_text(json.dumps(index))
    options = dict(split="train", n_pokes=1, fixed_poke_count=True, zero_poke_fraction=0.0, deterministic=True,
                   poke_source="keypoints")
    today, older = PokeDataset(synthetic_dataset, **options), PokeDataset(legacy, **options)
    # Version 1 wrote no version number: it was read as current.
    del index["settings"]["generator_version"]
    (legacy / "ipoke_dataset.json").write_text(json.dumps(index))
    assert PokeDataset(legacy, **options)._keypoint_shift == -0.5 == older._keypoint_shift
    assert today._keypoint_shift == 0.0
    compared = 0
    for index in range(len(today)):
        a, b = today[index], older[index]
        if a["keypoint_poke"]:
            assert b["keypoint_poke"]
            np.testing.assert_allclose(b["poke_coords"][0, :2].numpy(), a["poke_coords"][0, :2].numpy() - 0.5,
                                       atol=1e-5)
            np.testing.assert_allclose(b["poke_coords"][0, 2:].numpy(), a["poke_coords"][0, 2:].numpy(), atol=1e-5)
            compared += 1
    assert compared >= len(today) // 2


def test_training_keeps_a_partial_batch_when_each_process_has_less_than_one(synthetic_dataset):
    from types import SimpleNamespace

    module = PokeDataModule(data_dir=synthetic_dataset, batch_size=12, num_workers=0)  # 18 training clips
    module.setup("fit")
    assert module.train_dataloader().drop_last and len(module.train_dataloader()) == 1
    # Two processes get 9 clips each: dropping the partial batch trained nothing on either.
    module.trainer = SimpleNamespace(world_size=2)
    assert not module.train_dataloader().drop_last
    module.trainer = SimpleNamespace(world_size=1)
    assert module.train_dataloader().drop_last
    assert not module.val_dataloader().drop_last
