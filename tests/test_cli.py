"""The ipoke command: help texts and the data subcommands end to end."""

from __future__ import annotations

import pytest

from ipoke.cli import main
from ipoke.data.format import PreparedDataset


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("fit", "validate", "test", "data"):
        assert command in text


@pytest.mark.parametrize("command", [["data", "synth"], ["data", "info"], ["data", "index"]])
def test_subcommand_help_explains_options(capsys, command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    assert "usage: ipoke" in text
    if command[1] == "synth":
        for option in ("--out", "--videos", "--frames", "--size", "--seed", "--workers"):
            assert option in text


def test_data_synth_info_and_index(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--videos", "5", "--frames", "3", "--size", "32",
                 "--workers", "1", "--test-fraction", "0.2", "--val-fraction", "0.2"]) == 0
    data = PreparedDataset(out)
    assert data.splits() == {"train": 3, "val": 1, "test": 1}
    assert main(["data", "index", str(out)]) == 0
    assert main(["data", "info", str(out)]) == 0
    assert "5 videos" in capsys.readouterr().out


def test_data_errors_are_clear(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path / "taken"), "--videos", "2", "--size", "32"]) == 2
    assert "not an ipoke dataset" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
