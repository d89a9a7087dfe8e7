"""Input checks of :func:`ipoke.evaluation.evaluate` (its metrics are tested in tests/test_sampling.py and metrics/)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ipoke.evaluation import copy_first_frame_sampler, evaluate, poker_sampler


@pytest.mark.parametrize("samples", [0, -1, 2.5, 2.0, "3", True, None])
def test_evaluate_refuses_samples_that_are_not_a_positive_integer(samples, tmp_path):
    # samples=0 failed deep in the sampling loop ("stack expects a non-empty TensorList"), 2.5 in a tensor expand;
    # the check comes before the dataset is opened (tmp_path holds none).
    message = r"samples .*must be an integer >= 1, got " + re.escape(repr(samples))
    with pytest.raises(ValueError, match=message):
        evaluate({"static": copy_first_frame_sampler}, tmp_path, samples=samples, progress=False)


def test_evaluate_takes_a_numpy_integer_as_samples(tmp_path):
    # Passes the check and fails only where the dataset is opened (tmp_path holds none).
    with pytest.raises(Exception) as error:
        evaluate({"static": copy_first_frame_sampler}, tmp_path, samples=np.int64(2), progress=False)
    assert "samples" not in str(error.value)


def test_a_models_clip_length_the_data_lacks_says_to_prepare_the_data(make_tiny_poker, synthetic_dataset, tmp_path):
    # With a model, the clip length is the model's: the dataset's message ("choose n_frames * frame_step among
    # them") told sample, evaluate and app users to change what they cannot (evaluate refuses --n-frames with --ckpt).
    from ipoke.cli import main
    from ipoke.data.format import DatasetFormatError

    poker = make_tiny_poker(n_frames=4, frame_step=3)  # lag 12; the synthetic dataset stores lags 1 to 10
    expected = (f"the model cuts clips of 4 frames x frame step 3, which need flow at lag 12, but {synthetic_dataset} "
                f"stores lags {list(range(1, 11))}; prepare the data with 12 among its --lags (ipoke data prepare ... "
                "--lags 1,2,3,4,5,6,7,8,9,10,12)")
    with pytest.raises(DatasetFormatError) as error:
        poker.evaluation_clips(synthetic_dataset)
    assert str(error.value) == expected
    with pytest.raises(DatasetFormatError) as error:
        evaluate({"tiny": poker_sampler(poker)}, synthetic_dataset, metrics=("ssim",), n_clips=2, samples=1,
                 n_frames=4, frame_step=3, progress=False)
    assert str(error.value) == expected
    poker.export(tmp_path / "model")
    assert main(["sample", "--ckpt", str(tmp_path / "model"), "--data", synthetic_dataset, "--n", "1",
                 "--out", str(tmp_path / "samples")]) == 2
    assert not (tmp_path / "samples").exists()
