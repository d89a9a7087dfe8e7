"""Every notebook runs top to bottom on tiny settings (so they cannot rot) and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str, parameters: str, cwd: Path, probe: str | None = None) -> nbformat.NotebookNode:
    """Execute a notebook with its parameters cell replaced; ``probe`` is run after its last cell (see _probed)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} must have exactly one parameters cell"
    tagged[0].source = parameters
    if probe is not None:
        notebook.cells.append(nbformat.v4.new_code_cell(probe))
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def _printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))


def _probed(notebook: nbformat.NotebookNode):
    """What the probe cell printed as ``print('PROBE', json.dumps(...))``."""
    import json

    lines = [line for line in _printed(notebook).splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, lines
    return json.loads(lines[0][len("PROBE "):])


def _code_cell(name: str, marker: str) -> str:
    cells = [cell.source for cell in nbformat.read(NOTEBOOKS / name, as_version=4).cells
             if cell.cell_type == "code" and marker in cell.source]
    assert len(cells) == 1, f"{name}: {len(cells)} code cells hold {marker!r}"
    return cells[0]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
            assert "sys.path" not in cell.source and "pip install" not in cell.source


def test_the_notebooks_extra_opens_them():
    # The README's `pip install -e ".[notebooks]"` gave no Jupyter to open them with, and without ipywidgets the
    # progress bar of 02's generation printed "IProgress not found. Please update jupyter and ipywidgets".
    # (CI installs only the test extra, which executes them with nbclient.)
    import configparser

    config = configparser.ConfigParser()
    config.read(NOTEBOOKS.parent / "setup.cfg")
    extra = {line.split(">")[0].split("=")[0].strip()
             for line in config["options.extras_require"]["notebooks"].splitlines() if line.strip()}
    assert {"jupyterlab", "ipywidgets", "ipykernel", "matplotlib"} <= extra
    assert '`pip install -e ".[notebooks]"`' in (NOTEBOOKS.parent / "README.md").read_text()


def test_model_notebooks_cut_clips_with_the_models_poke_size():
    """A model's clips must be cut with its own poke size (03 evaluated every model with the default 5)."""
    import ast

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
        if "Poker.from_checkpoint" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"evaluate", "evaluation_clips",
                                                                                  "PokeDataset"}:
                keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}
                assert keywords.get("poke_size") == "poker.poke_size", f"{path.name}: {ast.unparse(node)}"


@pytest.mark.notebook
@pytest.mark.parametrize("interrupted", [False, True], ids=["new", "interrupted"])
def test_data_and_pokes_notebook(interrupted, tmp_path, monkeypatch):
    data = tmp_path / "data"
    if interrupted:
        # A generation stopped after 3 of 8 videos (its index says incomplete): the notebook skipped it because an
        # index existed, and PreparedDataset refused it as incomplete.
        import ipoke.data.synthetic as synthetic
        from ipoke.data.format import read_index
        from ipoke.data.synthetic import SyntheticSettings, generate_dataset

        worker, finished = synthetic._worker, []

        def stopped_after_three(job):
            if len(finished) == 3:
                raise KeyboardInterrupt
            finished.append(worker(job))

        monkeypatch.setattr(synthetic, "_worker", stopped_after_three)
        with pytest.raises(KeyboardInterrupt):
            generate_dataset(data, SyntheticSettings(videos=8, size=32, seed=0), workers=1, progress=False)
        assert read_index(data)["complete"] is False
    # The pokes cell draws training clips (random pokes and augmentation from torch's generator): run again, it must
    # draw the same ones (it was not seeded).
    probe = ("import json\nfirst = (sample['poke_coords'].tolist(), sample['video'].sum().item())\n"
             f"exec({_code_cell('02_data_and_pokes.ipynb', 'PokeDataset(')!r})\n"
             "print('PROBE', json.dumps(first == (sample['poke_coords'].tolist(), sample['video'].sum().item())))")
    notebook = _run("02_data_and_pokes.ipynb", f'DATA = "{data}"\nVIDEOS = 8\nSIZE = 32\nSEED = 0', tmp_path, probe)
    assert "8 videos" in _printed(notebook)
    assert _probed(notebook) is True, "the pokes cell drew other pokes when run again"


@pytest.mark.notebook
@pytest.mark.parametrize("name, samples", [("01_quickstart.ipynb", 2), ("01_quickstart.ipynb", 1),
                                           ("03_evaluate.ipynb", 2)])
def test_model_notebooks(name, samples, tmp_path, tiny_model, synthetic_dataset):
    # 03's per-frame curves: x is the generated frame 1..T (integer ticks), and PSNR is what `ipoke evaluate`
    # averages (psnr_per_frame, capped at MAX_PSNR_DB); the plot clamped it at 60 dB and counted frames from 0.
    # 01 pokes the clip's poked pixel: Poker.prepare must make the clip's own poke map of it (the clip's coordinate
    # is the pixel's centre, which prepare, taking pixels, moved one model pixel right and down).
    probe = ("import json\nmapped = poker.prepare(image, [poke])[1][0]\n"
             "print('PROBE', json.dumps({'same': bool(torch.allclose(mapped, clip['poke'], atol=1e-5)), "
             "'moved': bool(clip['poke'].abs().sum() > 0)}))") if name.startswith("01") else (

        "import json\nlines = [line for ax in axes for line in ax.lines]\n"
        "print('PROBE', json.dumps({'labels': [ax.get_xlabel() for ax in axes], "
        "'x': [[float(x) for x in line.get_xdata()] for line in lines], "
        "'ticks': [float(tick) for ax in axes for tick in ax.get_xticks()], "
        "'psnr': {line.get_label(): [float(y) for y in line.get_ydata()] for line in axes[1].lines}, "
        "'expected': psnr_per_frame(static[:, 1:], batch['video'][:, 1:]).mean(0).tolist(), "
        "'copied': psnr_per_frame(static[:, 1:], static[:, 1:]).mean(0).tolist(), 'frames': poker.n_frames}))")
    notebook = _run(name, f'MODEL = "{tiny_model}"\nDATA = "{synthetic_dataset}"\nN_SAMPLES = {samples}\nSEED = 0\n'
                          'N_CLIPS = 4\nSAMPLES = 2', tmp_path, probe)
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images, f"{name} drew no figure"
    printed = _printed(notebook)
    if name.startswith("01"):  # one sample has no spread (it printed nan with a torch warning)
        assert _probed(notebook) == {"same": True, "moved": True}
        assert ("n/a (one sample)" in printed) == (samples == 1) and "nan" not in printed
    if name.startswith("03"):
        from ipoke.metrics.image_quality import MAX_PSNR_DB

        probed = _probed(notebook)
        frames = [float(t) for t in range(1, probed["frames"] + 1)]
        assert probed["labels"] == ["generated frame"] * 2
        assert probed["x"] == [frames] * 4
        assert all(tick.is_integer() for tick in probed["ticks"])
        assert probed["psnr"]["copy x0"] == pytest.approx(probed["expected"], abs=1e-4)
        assert probed["copied"] == pytest.approx([MAX_PSNR_DB] * probed["frames"], abs=1e-4)  # the cap, no clamp


@pytest.mark.notebook
@pytest.mark.parametrize("background", [("test",), ("test", "val")], ids=["test", "test+val"])
def test_quickstart_notebook_when_every_test_clip_is_a_background_poke(background, tmp_path, tiny_model,
                                                                       synthetic_dataset):
    # With few videos every test clip can be a background poke: `next(...)` over them raised StopIteration. As the
    # quickstart's example image: the val split's first object poke, else a background poke with a note.
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    index_path = data / "ipoke_dataset.json"
    index = json.loads(index_path.read_text())
    for meta in index["videos"]:
        if meta["split"] in background:
            meta["background_poke"] = True
    index_path.write_text(json.dumps(index))
    probe = "import json\nprint('PROBE', json.dumps([split, bool(clip['background_poke'])]))"
    notebook = _run("01_quickstart.ipynb", f'MODEL = "{tiny_model}"\nDATA = "{data}"\nN_SAMPLES = 1\nSEED = 0',
                    tmp_path, probe)
    split, is_background = _probed(notebook)
    noted = "every held-out clip is a background poke" in _printed(notebook)
    if background == ("test",):
        assert (split, is_background, noted) == ("val", False, False)
    else:
        assert is_background and noted


def test_default_paths_point_at_the_repository_roots_quickstart():
    # Jupyter runs a notebook in its own folder: "quickstart/model" pointed at notebooks/quickstart/model, which the
    # README's main command never writes.
    import ast

    repo = NOTEBOOKS.parent
    expected = {"MODEL": repo / "quickstart" / "model", "DATA": repo / "quickstart" / "data"}
    for name in ("01_quickstart.ipynb", "03_evaluate.ipynb"):
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
        values = {node.targets[0].id: node.value.value for node in ast.parse(cell.source).body
                  if isinstance(node, ast.Assign)}
        for key, path in expected.items():
            assert (NOTEBOOKS / values[key]).resolve() == path.resolve(), (name, key)


@pytest.mark.notebook
def test_data_and_pokes_notebook_on_a_prepared_dataset(tmp_path):
    # Its intro offers a dataset from `ipoke data prepare`, which has no recorded pokes and no masks: it failed.
    import cv2
    import numpy as np

    from ipoke.data.prepare import prepare_dataset

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (40, 60, 3)).astype(np.uint8), (0, 0), 1.5)
    for name in ("walk", "jump"):
        (tmp_path / "raw" / name).mkdir(parents=True)
        for t in range(6):
            cv2.imwrite(str(tmp_path / "raw" / name / f"{t}.png"), texture[:, 10 - t:50 - t])
    prepare_dataset(tmp_path / "raw", tmp_path / "prepared", size=32, lags=(2, 4), test_fraction=0.0,
                    progress=False)
    notebook = _run("02_data_and_pokes.ipynb", f'DATA = "{tmp_path / "prepared"}"\nVIDEOS = 8\nSIZE = 32\nSEED = 0',
                    tmp_path)
    assert "2 videos" in _printed(notebook)
