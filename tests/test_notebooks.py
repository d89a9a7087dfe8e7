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
@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "03_evaluate.ipynb"])
def test_model_notebooks(name, tmp_path, tiny_model, synthetic_dataset):
    notebook = _run(name, f'MODEL = "{tiny_model}"\nDATA = "{synthetic_dataset}"\nN_SAMPLES = 2\nSEED = 0\n'
                          'N_CLIPS = 4\nSAMPLES = 2', tmp_path)
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images, f"{name} drew no figure"
