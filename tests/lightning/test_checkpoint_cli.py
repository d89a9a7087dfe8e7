"""The configs' checkpoints through `ipoke fit/validate --ckpt_path`: last.ckpt is the latest state, the flags win over
what a checkpoint stored, and a checkpoint that does not fit the config is named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipoke.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def poke_encoder_run(synthetic_dataset, tmp_path, monkeypatch):
    """Train the tiny poke encoder 3 epochs, validating only every second epoch (so epoch 2 is never validated)."""
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    base = ["--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"), f"--data.init_args.data_dir={synthetic_dataset}"]
    assert main(["fit", *base, "--trainer.check_val_every_n_epoch=2", "--trainer.max_epochs=3",
                 "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"]) == 0
    return base, tmp_path / "runs" / "poke_encoder" / "tiny" / "checkpoints"


def _epoch_and_step(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint["epoch"], checkpoint["global_step"]


def test_last_checkpoint_is_the_latest_state_and_resumes(poke_encoder_run):
    base, folder = poke_encoder_run
    # Lightning's save_last wrote last.ckpt only beside a new top-k file: here it stayed at epoch 1 (step 8).
    assert _epoch_and_step(folder / "last.ckpt") == (2, 12)
    assert sorted(path.name for path in folder.iterdir()) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    assert main(["fit", *base, "--trainer.max_epochs=4", "--ckpt_path=last"]) == 0
    assert _epoch_and_step(folder / "last.ckpt") == (3, 16)  # went on from step 12, not from the best checkpoint


def test_ckpt_path_flags_win_and_a_checkpoint_that_does_not_fit_is_named(poke_encoder_run, capsys, monkeypatch):
    from ipoke import cli

    base, folder = poke_encoder_run
    last = str(folder / "last.ckpt")
    # The checkpoint's stored hyperparameters used to override the config and the command line (Lightning issue
    # #20801): the module was built with the checkpoint's learning rate, not the flag's.
    built = {}
    check = cli.check_checkpoint_networks
    monkeypatch.setattr(cli, "check_checkpoint_networks",
                        lambda path, model, **kwargs: (built.update(model.hparams), check(path, model, **kwargs)))
    assert main(["validate", *base, f"--ckpt_path={last}", "--model.init_args.learning_rate=0.25"]) == 0
    assert built["learning_rate"] == 0.25
    capsys.readouterr()
    assert main(["validate", *base, "--ckpt_path=runs/nowhere/last.ckpt"]) == 2
    assert "--ckpt_path runs/nowhere/last.ckpt does not exist" in capsys.readouterr().err
    assert main(["validate", *base, f"--ckpt_path={last}",
                 "--model.init_args.poke_encoder.init_args.embedding_channels=8"]) == 2
    assert "poke_encoder.init_args.embedding_channels: 16 in the checkpoint, 8 in the config" in capsys.readouterr().err
    # The same with --ckpt_path last, the form the docs give for resuming (it was not checked: a network built
    # differently trained on, or failed in load_state_dict).
    assert main(["fit", *base, "--ckpt_path=last", "--trainer.max_epochs=4",
                 "--model.init_args.poke_encoder.init_args.norm_groups=2"]) == 2
    assert "poke_encoder.init_args.norm_groups: 4 in the checkpoint, 2 in the config" in capsys.readouterr().err
    image_config = ["--config", str(CONFIGS / "image_encoder" / "tiny.yaml"), base[-1]]
    assert main(["validate", *image_config, f"--ckpt_path={last}"]) == 2
    error = capsys.readouterr().err
    assert "holds the networks ['poke_encoder'], but this config builds ['discriminator', 'image_encoder']" in error


def test_ckpt_path_best_and_last_name_a_file_or_are_refused(poke_encoder_run, capsys, monkeypatch):
    from ipoke import cli

    base, folder = poke_encoder_run
    checked = []
    check = cli.check_checkpoint_networks
    monkeypatch.setattr(cli, "check_checkpoint_networks",
                        lambda path, model, **kwargs: (checked.append(path), check(path, model, **kwargs)))
    # `best` is Lightning's only inside the process that trained (a new one raised "not configured to save the best
    # model"): it is the monitored callback's best file, recorded in the newest checkpoint.
    assert main(["validate", *base, "--ckpt_path=best"]) == 0
    assert [Path(path).name for path in checked] == ["epoch=1-step=8.ckpt"]
    # Chosen by the scores the top-k files record, not by modification time or the absolute paths Lightning stored:
    # a run folder copied elsewhere loads its own files. A newer top-k file with a worse score is not the best one.
    import shutil

    copied = folder.parents[3] / "copied"
    shutil.copytree(folder.parents[2], copied / "runs")
    checkpoint = torch.load(folder / "epoch=1-step=8.ckpt", map_location="cpu", weights_only=False)
    (key, state), = ((key, state) for key, state in checkpoint["callbacks"].items() if "val/loss" in key)
    for score, name in ((state["current_score"] + 1, "epoch=9-step=99.ckpt"), (state["current_score"] - 1, "z.ckpt")):
        state["best_k_models"] = {f"/elsewhere/{name}": score}
        torch.save(checkpoint, copied / "runs" / "poke_encoder" / "tiny" / "checkpoints" / name)
    monkeypatch.chdir(copied)
    checked.clear()
    assert main(["validate", *base, "--ckpt_path=best"]) == 0
    assert checked == [str(copied / "runs" / "poke_encoder" / "tiny" / "checkpoints" / "z.ckpt")]
    (copied / "runs" / "poke_encoder" / "tiny" / "checkpoints" / "z.ckpt").unlink()
    checked.clear()
    assert main(["validate", *base, "--ckpt_path=best"]) == 0
    assert checked == [str(copied / "runs" / "poke_encoder" / "tiny" / "checkpoints" / "epoch=1-step=8.ckpt")]
    # In a folder without the run (the configs' paths are relative), `last` validated the untrained networks, exit 0.
    elsewhere = folder.parents[3] / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    missing = elsewhere / "runs" / "poke_encoder" / "tiny" / "checkpoints"
    for command in ("validate", "test"):
        assert main([command, *base, "--ckpt_path=last"]) == 2
        assert f"--ckpt_path last: no last.ckpt in {missing}; {command} would score" in capsys.readouterr().err
    assert main(["validate", *base, "--ckpt_path=best"]) == 2
    assert f"--ckpt_path best: no top-k checkpoint of the monitored 'val/loss' in {missing}" in capsys.readouterr().err
    assert len(checked) == 1 and not (elsewhere / "runs" / "poke_encoder" / "tiny" / "logs").exists()


def test_last_of_a_checkpoint_callback_without_a_folder_is_left_to_lightning(synthetic_dataset, tmp_path,
                                                                             monkeypatch):
    # A user's config whose ModelCheckpoint has no `dirpath` (Lightning picks the folder when the run starts): the
    # refusal of a missing last.ckpt refused the file Lightning would have found.
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    base = ["--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"), f"--data.init_args.data_dir={synthetic_dataset}",
            "--trainer.logger=false", "--trainer.default_root_dir=runs/nodir",
            '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
            '"init_args": {"monitor": "val/loss", "save_last": true}}]']
    assert main(["fit", *base, "--trainer.max_epochs=1"]) == 0
    assert (tmp_path / "runs" / "nodir" / "checkpoints" / "last.ckpt").is_file()
    assert main(["validate", *base, "--ckpt_path=last"]) == 0


def test_the_network_check_reads_checkpoints_holding_objects_or_in_the_old_format(tmp_path):
    import argparse

    from ipoke.cli import UserError, check_checkpoint_networks
    from ipoke.models.base import NETWORKS_KEY, network_specs
    from ipoke.models.encoders import PokeEncoder

    class Module(torch.nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.poke_encoder = PokeEncoder(spatial_size=64, base_channels=8, max_channels=16,
                                            embedding_channels=channels, norm_groups=4)

    # A callback's state may be any object (not loadable with weights_only); torch's older format cannot be mapped.
    for name, zipped in (("objects.ckpt", True), ("old.ckpt", False)):
        path = tmp_path / name
        torch.save({NETWORKS_KEY: network_specs(Module(16)), "callbacks": {"mine": argparse.Namespace(steps=3)}},
                   path, _use_new_zipfile_serialization=zipped)
        check_checkpoint_networks(path, Module(16))
        with pytest.raises(UserError, match="embedding_channels: 16 in the checkpoint, 8 in the config"):
            check_checkpoint_networks(path, Module(8))
    (tmp_path / "notes.ckpt").write_text("# not a checkpoint")
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        check_checkpoint_networks(tmp_path / "notes.ckpt", Module(16))


def test_the_network_check_fills_in_defaults_on_both_sides(tmp_path):
    # A network built in Python records only the arguments passed, one built from a config every default: a
    # Python-trained checkpoint was refused by --ckpt_path for identical networks ("latent_size: None in the
    # checkpoint, 8 in the config"), and a real difference came with such false ones.
    import inspect

    from ipoke.cli import UserError, check_checkpoint_networks
    from ipoke.models.base import NETWORKS_KEY, network_specs
    from ipoke.models.encoders import PokeEncoder

    given = dict(spatial_size=64, base_channels=8, max_channels=16, norm_groups=4)
    defaults = {name: parameter.default for name, parameter in inspect.signature(PokeEncoder).parameters.items()
                if parameter.default is not inspect.Parameter.empty and name not in given}
    assert {"latent_size", "spectral_norm", "embedding_channels"} <= set(defaults)

    class Module(torch.nn.Module):
        def __init__(self, **arguments) -> None:
            super().__init__()
            self.poke_encoder = PokeEncoder(**arguments)

    path = tmp_path / "python.ckpt"
    torch.save({NETWORKS_KEY: network_specs(Module(**given))}, path)
    check_checkpoint_networks(path, Module(**given, **defaults))  # the config's way: every default passed
    other = {**defaults, "embedding_channels": defaults["embedding_channels"] * 2}
    with pytest.raises(UserError) as refused:
        check_checkpoint_networks(path, Module(**given, **other))
    message = str(refused.value)
    assert (f"embedding_channels: {defaults['embedding_channels']} in the checkpoint, "
            f"{other['embedding_channels']} in the config") in message
    assert "latent_size" not in message and "spectral_norm" not in message


def test_a_validation_interval_longer_than_the_epoch_is_one_line(synthetic_dataset, tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
                 f"--data.init_args.data_dir={synthetic_dataset}", "--trainer.val_check_interval=1000",
                 "--trainer.max_steps=1"]) == 2
    error = capsys.readouterr().err
    assert any(line.startswith("ipoke: error: `val_check_interval` (1000) must be less than or equal to")
               for line in error.splitlines()) and "Traceback" not in error


def test_ddp_spawn_is_refused_in_one_line(synthetic_dataset, tmp_path, monkeypatch, capsys):
    # Every stage's networks use spectral norm, which cannot be pickled: ddp_spawn died in PyTorch's RuntimeError.
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
                 f"--data.init_args.data_dir={synthetic_dataset}", "--trainer.strategy=ddp_spawn",
                 "--trainer.devices=2", "--trainer.accelerator=cpu"]) == 2
    error = capsys.readouterr().err
    assert "starts its processes with 'spawn' (ddp_spawn)" in error and "--trainer.strategy ddp" in error
    assert not (tmp_path / "runs" / "poke_encoder" / "tiny" / "checkpoints").exists()


def test_a_terminated_or_interrupted_fit_does_not_exit_0(synthetic_dataset, tmp_path, monkeypatch, capsys):
    # Lightning ends a SIGTERM'd run with SIGTERMException, a SystemExit without a code (status 0: `ipoke fit a &&
    # ipoke fit b` went on with a half-trained stage), and Ctrl-C with sys.exit(1) while handling it.
    import sys

    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def terminated(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SIGTERMException

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    monkeypatch.chdir(tmp_path)
    command = ["fit", "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
               f"--data.init_args.data_dir={synthetic_dataset}"]
    # The hint named "checkpoints/last.ckpt" whether or not an epoch had finished (and the cINN's is elsewhere).
    nothing = "no epoch of this run had finished, so it wrote no checkpoint: run the same command again"
    for fit, status, line in ((terminated, 143, f"ipoke: terminated (SIGTERM); {nothing}"),
                              (interrupted, 130, f"ipoke: interrupted; {nothing}")):
        monkeypatch.setattr(L.Trainer, "fit", fit)
        assert main(command) == status
        assert line in capsys.readouterr().err
    last = tmp_path / "runs" / "poke_encoder" / "tiny" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")  # written before this run started
    import os
    import time

    os.utime(last, (time.time() - 100, time.time() - 100))
    monkeypatch.setattr(L.Trainer, "fit", terminated)
    assert main(command) == 143
    assert "checkpoints/last.ckpt is from an earlier run): run the same command again" in capsys.readouterr().err

    def an_epoch_then_terminated(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        last.write_bytes(b"")
        raise SIGTERMException

    monkeypatch.setattr(L.Trainer, "fit", an_epoch_then_terminated)
    assert main(command) == 143
    assert ("runs/poke_encoder/tiny/checkpoints/last.ckpt holds the state at the end of its last finished epoch: "
            "resume with the same command and --ckpt_path last") in capsys.readouterr().err


def test_a_stopped_resume_says_to_resume_again(poke_encoder_run, monkeypatch, capsys):
    # It said "no epoch of this run had finished ... run the same command again to start over" for a resumed run.
    import os
    import time

    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    base, folder = poke_encoder_run
    os.utime(folder / "last.ckpt", (time.time() - 100, time.time() - 100))

    import functools

    @functools.wraps(L.Trainer.fit)  # the CLI reads fit's signature for --ckpt_path
    def terminated(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SIGTERMException

    monkeypatch.setattr(L.Trainer, "fit", terminated)
    assert main(["fit", *base, "--trainer.max_epochs=4", "--ckpt_path=last"]) == 143
    assert ("last.ckpt is unchanged since this run started: run the same command again to resume from it"
            in capsys.readouterr().err)


def test_a_resume_names_checkpoints_left_in_the_folder_the_configs_used_before(poke_encoder_run, capsys):
    # Until session 20 the cINN and cVAE configs kept their checkpoints in runs/<stage>/<name>/, not in its
    # checkpoints/ folder: a resume with --ckpt_path last found none there and quietly trained from step 0.
    base, folder = poke_encoder_run
    for path in folder.glob("*.ckpt"):
        path.rename(folder.parent / path.name)
    for command in ("fit", "validate"):
        assert main([command, *base, "--trainer.max_epochs=4", "--ckpt_path=last"]) == 2
        err = capsys.readouterr().err
        assert f"no last.ckpt in {folder}, but {folder.parent / 'last.ckpt'} is there" in err
        assert f"mv {folder.parent}/*.ckpt {folder}/" in err
    assert not list(folder.glob("*.ckpt"))  # nothing trained


def test_a_stopped_multi_process_run_reports_once(poke_encoder_run, monkeypatch, capsys):
    # Under DDP every process is stopped by the terminal's Ctrl-C, and each printed the same line.
    import functools

    import lightning as L
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    base, _ = poke_encoder_run

    @functools.wraps(L.Trainer.fit)  # the CLI reads fit's signature for --ckpt_path
    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(L.Trainer, "fit", interrupted)
    for rank, printed in ((1, False), (0, True)):
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        assert main(["fit", *base, "--trainer.max_epochs=4"]) == 130
        assert ("ipoke: interrupted" in capsys.readouterr().err) == printed


def test_an_old_coupling_checkpoint_loads_but_does_not_resume(tmp_path):
    # The coupling subnets' output layers gained a gain parameter: the old optimizer state has fewer parameters, and
    # Lightning's resume failed with a raw "parameter group that doesn't match" traceback.
    from torch import nn

    from ipoke.cli import UserError, check_checkpoint_networks
    from ipoke.models.base import NETWORKS_KEY, network_specs
    from ipoke.models.cinn import ConditionalINN

    module = nn.Module()
    module.flow = ConditionalINN(z_dim=4, condition_channels=8, architecture="coupling", num_blocks=2,
                                 hidden_channels=8)
    state = {f"flow.{key}": value for key, value in module.flow.state_dict().items() if not key.endswith(".gain")}
    path = tmp_path / "old.ckpt"
    torch.save({NETWORKS_KEY: network_specs(module), "state_dict": state}, path)
    check_checkpoint_networks(path, module)  # validate / test: the weights convert
    with pytest.raises(UserError, match="optimizer state cannot resume training"):
        check_checkpoint_networks(path, module, resume=True)
    torch.save({NETWORKS_KEY: network_specs(module), "state_dict": {f"flow.{key}": value for key, value in
                                                                   module.flow.state_dict().items()}}, path)
    check_checkpoint_networks(path, module, resume=True)


def test_validate_or_test_without_a_checkpoint_is_refused(synthetic_dataset, tmp_path, monkeypatch, capsys):
    # Lightning scored the untrained networks and exited 0.
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "test"):
        assert main([command, "--config", str(CONFIGS / "poke_encoder" / "tiny.yaml"),
                     f"--data.init_args.data_dir={synthetic_dataset}"]) == 2
        assert f"{command} needs --ckpt_path" in capsys.readouterr().err


def test_last_checkpoint_every_n_epochs_still_writes_the_final_state(synthetic_dataset, tmp_path, monkeypatch):
    # With every_n_epochs 2 and 3 epochs, last.ckpt stayed at epoch 1 (step 8): the last epoch was lost.
    import yaml

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((CONFIGS / "poke_encoder" / "tiny.yaml").read_text())
    last = next(callback for callback in config["trainer"]["callbacks"] if callback["class_path"].endswith("Last"
                                                                                                         "Checkpoint"))
    last["init_args"]["every_n_epochs"] = 2
    (tmp_path / "every2.yaml").write_text(yaml.safe_dump(config))
    command = ["fit", "--config", str(tmp_path / "every2.yaml"), f"--data.init_args.data_dir={synthetic_dataset}",
               "--trainer.check_val_every_n_epoch=3"]
    assert main([*command, "--trainer.max_epochs=3"]) == 0
    last_file = tmp_path / "runs" / "poke_encoder" / "tiny" / "checkpoints" / "last.ckpt"
    assert _epoch_and_step(last_file)[1] == 12  # written when training ended (Lightning counts 3 epochs done)
    assert main([*command, "--trainer.max_epochs=4", "--ckpt_path=last"]) == 0
    assert _epoch_and_step(last_file)[1] == 16  # one more epoch, not two


def test_ckpt_path_best_keeps_to_the_run_of_the_newest_last_checkpoint(poke_encoder_run, capsys, monkeypatch):
    # A second fit from scratch into the same folder left the first run's better top-k file beside its own: `best`
    # took the first run's file with no word, while `last` was the second run's.
    from ipoke import cli

    base, folder = poke_encoder_run
    assert main(["fit", *base, "--trainer.max_epochs=1", "--model.init_args.learning_rate=1e-12"]) == 0
    first, second = folder / "epoch=1-step=8.ckpt", folder / "epoch=0-step=4.ckpt"
    key = next(key for key in torch.load(first, weights_only=False)["callbacks"] if "val/loss" in key)
    scores = [torch.load(path, weights_only=False)["callbacks"][key]["current_score"] for path in (first, second)]
    assert scores[0] < scores[1]  # the earlier run's file is the better one
    checked = []
    check = cli.check_checkpoint_networks
    monkeypatch.setattr(cli, "check_checkpoint_networks",
                        lambda path, model, **kwargs: (checked.append(path), check(path, model, **kwargs)))
    capsys.readouterr()
    assert main(["validate", *base, "--ckpt_path=best"]) == 0
    assert [Path(path).name for path in checked] == [second.name]
    printed = capsys.readouterr().err
    assert f"--ckpt_path best: {second}" in printed and f"not considered ({first.name})" in printed
