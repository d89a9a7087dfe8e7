from pathlib import Path

import pytest
import torch

from ipoke.weights import WeightsNotFoundError, cache_dir, find_torch_hub_checkpoint, sha256_of


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IPOKE_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("IPOKE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "ipoke"


def test_finds_files_in_the_ipoke_cache_then_the_torch_hub_cache(tmp_path):
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / "vgg19-dcbb9e9d.pth"
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"hub")
    assert find_torch_hub_checkpoint("vgg19-dcbb9e9d.pth") == hub_file
    cached = cache_dir() / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cache")
    assert find_torch_hub_checkpoint("vgg19-dcbb9e9d.pth") == cached
    given = tmp_path / "mine.pth"
    given.write_bytes(b"mine")
    assert find_torch_hub_checkpoint("vgg19-dcbb9e9d.pth", path=given) == given
    assert sha256_of(given) == "3fd30542fe3f61b14bd4a4b2dc0b6fb30fa6f63ebce52dd1778aaa8c4dc02cff"


def test_missing_file_names_the_download(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="download.pytorch.org/models/vgg19-dcbb9e9d.pth"):
        find_torch_hub_checkpoint("vgg19-dcbb9e9d.pth")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        find_torch_hub_checkpoint("vgg19-dcbb9e9d.pth", path=tmp_path / "missing.pth")
