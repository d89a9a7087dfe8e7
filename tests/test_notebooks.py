"""Every notebook runs top to bottom on tiny settings (so they cannot rot) and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str, parameters: str, cwd: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} must have exactly one parameters cell"
    tagged[0].source = parameters
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
            assert "sys.path" not in cell.source and "pip install" not in cell.source


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
def test_data_and_pokes_notebook(tmp_path):
    notebook = _run("02_data_and_pokes.ipynb", f'DATA = "{tmp_path / "data"}"\nVIDEOS = 8\nSIZE = 32\nSEED = 0',
                    tmp_path)
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "8 videos" in printed


@pytest.mark.notebook
@pytest.mark.parametrize("name, samples", [("01_quickstart.ipynb", 2), ("01_quickstart.ipynb", 1),
                                           ("03_evaluate.ipynb", 2)])
def test_model_notebooks(name, samples, tmp_path, tiny_model, synthetic_dataset):
    notebook = _run(name, f'MODEL = "{tiny_model}"\nDATA = "{synthetic_dataset}"\nN_SAMPLES = {samples}\nSEED = 0\n'
                          'N_CLIPS = 4\nSAMPLES = 2', tmp_path)
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images, f"{name} drew no figure"
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    if name.startswith("01"):  # one sample has no spread (it printed nan with a torch warning)
        assert ("n/a (one sample)" in printed) == (samples == 1) and "nan" not in printed


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
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "2 videos" in printed
