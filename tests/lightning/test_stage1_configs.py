"""Every stage-1 config builds against the current signatures; the tiny ones train through ``ipoke fit``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipoke.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAGES = ("autoencoder", "image_encoder", "poke_encoder")
STAGE1_CONFIGS = sorted(p for stage in STAGES for p in (CONFIGS / stage).glob("*.yaml"))


def _cli(args: list[str], instantiate: bool = True):
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    class ParseOnlyCLI(LightningCLI):
        def instantiate_classes(self) -> None:
            pass

    cls = LightningCLI if instantiate else ParseOnlyCLI
    return cls(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
               run=False, args=args, save_config_callback=None)


def test_every_stage_has_all_configs():
    expected = {"tiny.yaml"} | {f"{name}_{size}.yaml" for name in ("synthetic", "plants", "iper", "h36m", "taichi")
                                for size in (64, 128)}
    for stage in STAGES:
        assert {p.name for p in (CONFIGS / stage).glob("*.yaml")} == expected, stage


@pytest.mark.parametrize("path", STAGE1_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_against_signatures(path):
    config = _cli(["--config", str(path)], instantiate=False).config
    network_spec = next(iter(vars(config.model.init_args).values()))
    assert network_spec.init_args.spatial_size == config.data.init_args.size
    best, last = config.trainer.callbacks[:2]
    assert best.init_args.monitor == "val/loss" and not best.init_args.save_last
    stage, name = path.parent.name, path.stem
    assert last.class_path == "ipoke.lightning.callbacks.LastCheckpoint"
    assert best.init_args.dirpath == last.init_args.dirpath == f"runs/{stage}/{name}/checkpoints"


INSTANTIATED = [CONFIGS / stage / name for stage in STAGES for name in ("tiny.yaml", "synthetic_128.yaml")]


@pytest.mark.parametrize("path", INSTANTIATED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_instantiates(path, tmp_path):
    # Full-size networks are built on the meta device: the check is the signature and shape logic, not the weights.
    with torch.device("meta"):
        cli = _cli(["--config", str(path), f"--trainer.default_root_dir={tmp_path}",
                    f"--trainer.logger.init_args.save_dir={tmp_path}"])
    network = next(iter(cli.model.children()))
    assert network.spatial_size == cli.datamodule.hparams.size
    if path.parent.name == "autoencoder":
        assert network.n_frames == cli.datamodule.hparams.n_frames


def test_wrong_key_fails_before_training_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "autoencoder" / "tiny.yaml"), "--model.init_args.l1_wieght=3",
              f"--trainer.default_root_dir={tmp_path}"])
    assert "l1_wieght" in capsys.readouterr().err


@pytest.mark.parametrize("stage", STAGES)
def test_tiny_config_fast_dev_run(stage, synthetic_dataset, tmp_path):
    torch.set_num_threads(1)
    assert main(["fit", "--config", str(CONFIGS / stage / "tiny.yaml"),
                 f"--data.init_args.data_dir={synthetic_dataset}", "--trainer.fast_dev_run=true",
                 f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"]) == 0


def test_constructor_errors_print_their_own_message_without_a_traceback(tmp_path, capsys):
    # Raised inside a network's constructor, wrapped by jsonargparse's type resolution: the user sees the original.
    code = main(["fit", "--config", str(CONFIGS / "autoencoder" / "tiny.yaml"),
                 "--model.init_args.temporal_discriminator.init_args.channels=[8, 8]",
                 f"--trainer.default_root_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ipoke: error: the config could not be built: ValueError: channels must list 4 stage widths" in err
    assert "jsonargparse" not in err  # (pytest may add logging noise from an earlier test's closed stream)
    # 0 for these crashed after the first batch with a traceback (modulo by zero; an empty frame draw).
    for option in ("lr_decay_every", "spatial_frames"):
        assert main(["fit", "--config", str(CONFIGS / "autoencoder" / "tiny.yaml"), f"--model.init_args.{option}=0",
                     f"--trainer.default_root_dir={tmp_path}"]) == 2
        assert f"ValueError: {option} must be a whole number >= 1, got 0" in capsys.readouterr().err
    # Bad data-module values failed at setup or in the loader with a traceback.
    for option in ("n_frames", "frame_step", "batch_size", "n_pokes", "eval_n_pokes"):
        assert main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"), f"--data.init_args.{option}=0",
                     f"--trainer.default_root_dir={tmp_path}"]) == 2
        assert f"data.init_args.{option} must be a whole number >= 1, got 0" in capsys.readouterr().err
    for option, value, message in (("max_val_clips", "0", ">= 1 or null, got 0"), ("size", "4", ">= 8 or null, got 4")):
        assert main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
                     f"--data.init_args.{option}={value}", f"--trainer.default_root_dir={tmp_path}"]) == 2
        assert f"data.init_args.{option} must be a whole number {message}" in capsys.readouterr().err


def test_missing_checkpoint_and_dataset_are_named(tmp_path, capsys):
    code = main(["fit", "--config", str(CONFIGS / "cinn" / "tiny.yaml"),
                 f"--model.init_args.autoencoder_checkpoint={tmp_path / 'missing.ckpt'}"])
    assert code == 2
    assert f"FileNotFoundError: checkpoint {tmp_path / 'missing.ckpt'} does not exist" in capsys.readouterr().err
    text = tmp_path / "notes.yaml"  # not a checkpoint: unpickling raised UnpicklingError naming neither file nor flag
    text.write_text("# my notes\n")
    code = main(["fit", "--config", str(CONFIGS / "cinn" / "tiny.yaml"),
                 f"--model.init_args.autoencoder_checkpoint={text}"])
    assert code == 2
    assert f"{text} is not a readable checkpoint" in capsys.readouterr().err
    code = main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
                 f"--data.init_args.data_dir={tmp_path / 'nodata'}", f"--trainer.default_root_dir={tmp_path}",
                 f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert code == 2
    assert f"dataset folder {tmp_path / 'nodata'} does not exist" in capsys.readouterr().err
    # Each failed start left an empty logs/version_N folder (the real run's logs then landed in version_4).
    assert not list((tmp_path / "logs").glob("version_*"))
    (tmp_path / "logs" / "version_0").mkdir(parents=True)  # an earlier run's, with its metrics, is kept
    (tmp_path / "logs" / "version_0" / "metrics.csv").write_text("step\n")
    assert main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
                 f"--data.init_args.data_dir={tmp_path / 'nodata'}", f"--trainer.default_root_dir={tmp_path}",
                 f"--trainer.logger.init_args.save_dir={tmp_path}"]) == 2
    assert [path.name for path in (tmp_path / "logs").glob("version_*")] == ["version_0"]



def test_data_without_the_clips_a_config_cuts_is_one_line(synthetic_dataset, tmp_path, capsys):
    # Clips of 4 frames 3 apart need flow at lag 12, which the data lacks (like tiny.yaml's lag 4 on real data
    # prepared with the default --lags 10,20): the message came at the end of a traceback from the data module.
    code = main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
                 f"--data.init_args.data_dir={synthetic_dataset}", "--data.init_args.frame_step=3",
                 f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ipoke: error: clips of n_frames=4 x frame_step=3 need flow at lag 12" in err
    assert "Traceback" not in err

def test_shipped_configs_default_to_fp32():
    # bf16 autocast on a CPU made the cVAE config's steps ~40x slower (127 s per step at batch 2); bf16 is a GPU
    # option that each config names in a comment.
    offenders = [str(path.relative_to(CONFIGS)) for path in sorted(CONFIGS.glob("*/*.yaml"))
                 if "precision:" in path.read_text() and "precision: 32-true" not in path.read_text()]
    assert not offenders


@pytest.mark.parametrize("dataset", ["synthetic", "plants", "iper", "h36m", "taichi"])
@pytest.mark.parametrize("size", [64, 128])
def test_the_stages_of_a_dataset_cut_the_same_clips(dataset, size):
    """The poke encoder regresses the flow at the lag the autoencoder's clips end on, and the cINN pokes with it.

    Clip spacing as the original's datasets: a subsample step of 1 for iPER, 2 for Plants, TaiChi and Human3.6M
    (the synthetic data stores its 10 simulated frames, step 1); only Poking Plants balances its objects.
    """
    import yaml

    data = {stage: yaml.safe_load((CONFIGS / stage / f"{dataset}_{size}.yaml").read_text())["data"]["init_args"]
            for stage in (*STAGES, "cinn")}
    clip = {stage: (args["size"], args["n_frames"], args["frame_step"], args["data_dir"])
            for stage, args in data.items()}
    assert len(set(clip.values())) == 1, clip
    assert clip["cinn"][:3] == (size, 10, 1 if dataset in ("synthetic", "iper") else 2)
    assert {args.get("object_weighting", False) for args in data.values()} == {dataset == "plants"}


def test_data_that_does_not_fit_the_networks_is_one_line(synthetic_dataset, tmp_path, capsys):
    # Clip length or frame size of the data different from the networks': crashed in a loss, or trained silently on
    # clips the autoencoder was not built for (and its checkpoint claimed the other length).
    common = [f"--data.init_args.data_dir={synthetic_dataset}", f"--trainer.default_root_dir={tmp_path}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_epochs=1"]
    code = main(["fit", "--config", str(CONFIGS / "autoencoder" / "tiny.yaml"), *common,
                 "--model.init_args.autoencoder.init_args.n_frames=6"])
    assert code == 2
    err = capsys.readouterr().err
    assert ("ipoke: error: clips of 4 frames after x0 in the data (data.init_args.n_frames) against 6 in the video "
            "autoencoder") in err and "Traceback" not in err
    code = main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"), *common, "--data.init_args.size=32"])
    assert code == 2
    assert "32 px frames in the data (data.init_args.size) against 64 px in the poke encoder" in capsys.readouterr().err



def test_contradicting_trainer_options_are_one_line(tmp_path, capsys):
    code = main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"), "--trainer.enable_checkpointing=false",
                 f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "MisconfigurationException: Trainer was configured with `enable_checkpointing=False`" in err
    assert "Traceback" not in err
