"""Input checks of :func:`ipoke.evaluation.evaluate` (its metrics are tested in tests/test_sampling.py and metrics/)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ipoke.evaluation import copy_first_frame_sampler, evaluate


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
