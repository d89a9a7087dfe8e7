"""Every cINN config parses and matches its stage-1 configs; the tiny one trains through ``ipoke fit``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ipoke.cli import main
from ipoke.models.base import instantiate, save_pretrained

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CINN_CONFIGS = sorted((CONFIGS / "cinn").glob("*.yaml"))
STAGE1 = ("autoencoder", "image_encoder", "poke_encoder")


def _parse(path: Path):
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    class ParseOnlyCLI(LightningCLI):
        def instantiate_classes(self) -> None:
            pass

    return ParseOnlyCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        run=False, args=["--config", str(path)], save_config_callback=None).config


def _stage1_network_spec(stage: str, name: str) -> dict:
    model = yaml.safe_load((CONFIGS / stage / f"{name}.yaml").read_text())["model"]["init_args"]
    return model[stage]


def test_every_dataset_has_a_config():
    expected = {"tiny.yaml", "synthetic_64_coupling.yaml", "synthetic_128_coupling.yaml"} | {
        f"{name}_{size}.yaml" for name in ("synthetic", "plants", "iper", "h36m", "taichi") for size in (64, 128)}
    assert {p.name for p in CINN_CONFIGS} == expected


@pytest.mark.parametrize("path", [p for p in CINN_CONFIGS if p.name != "tiny.yaml"], ids=lambda p: p.name)
def test_config_parses_and_matches_its_stage1_configs(path):
    config = _parse(path)
    init = config.model.init_args
    flow = init.flow.init_args
    name = path.stem.removesuffix("_coupling")
    autoencoder = _stage1_network_spec("autoencoder", name)["init_args"]
    embeddings = sum(_stage1_network_spec(stage, name).get("init_args", {}).get("embedding_channels", 64)
                     for stage in ("image_encoder", "poke_encoder"))
    assert flow.z_dim == autoencoder["z_dim"]
    assert flow.condition_channels == embeddings
    assert config.data.init_args.size == autoencoder["spatial_size"]
    assert config.data.init_args.n_frames == autoencoder.get("n_frames", 10)
    for stage in STAGE1:
        assert f"/{stage}/{name}/" in getattr(init, f"{stage}_checkpoint")
    checkpoint = config.trainer.callbacks[0].init_args
    assert checkpoint.monitor == "val/nll" and not checkpoint.save_last  # LastCheckpoint writes last.ckpt
    assert checkpoint.dirpath == f"{config.trainer.default_root_dir}/checkpoints"  # beside logs/, as in stage 1
    last = config.trainer.callbacks[1]
    assert last.class_path == "ipoke.lightning.callbacks.LastCheckpoint"
    assert last.init_args.dirpath == checkpoint.dirpath
    for stage in STAGE1:  # where the stage-1 configs keep their last.ckpt, whichever run wrote it
        assert getattr(init, f"{stage}_checkpoint") == f"runs/{stage}/{name}/checkpoints/last.ckpt"


def test_reference_config_builds_the_released_flow():
    spec = yaml.safe_load((CONFIGS / "cinn" / "iper_64.yaml").read_text())["model"]["init_args"]["flow"]
    with torch.device("meta"):
        flow = instantiate(spec)
    assert round(sum(p.numel() for p in flow.parameters()) / 1e6, 1) == 1054.4


def test_tiny_config_fast_dev_run(synthetic_dataset, tmp_path):
    torch.set_num_threads(1)
    overrides = []
    for stage in STAGE1:
        network = instantiate(_stage1_network_spec(stage, "tiny"))
        folder = save_pretrained(network, tmp_path / stage)
        overrides.append(f"--model.init_args.{stage}_checkpoint={folder}")
    config = yaml.safe_load((CONFIGS / "cinn" / "tiny.yaml").read_text())
    for callback in config["trainer"]["callbacks"][:2]:
        callback["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    config_file = tmp_path / "tiny_cinn.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(config_file), *overrides,
                 f"--data.init_args.data_dir={synthetic_dataset}", "--trainer.fast_dev_run=true",
                 f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"]) == 0
