"""Shared settings of the cINN tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    # Hundreds of tiny ops per flow pass: on a shared 2-core CI machine intra-op threads only add contention
    # (measured: 0.12 s per tiny MaCow step single-threaded vs several seconds with oversubscribed threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
