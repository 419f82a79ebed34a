"""The Colab notebook: the .ipynb matches its py:percent twin, and the .ipynb itself runs end to end under nbclient
(run-local: synthetic data, the install cell skipped because the package is importable, no Drive outside Colab)."""

import importlib.util
import json
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "reproduce_isic.ipynb")
# notebooks/ is not a package: load its builder by path (no sys.path change).
_spec = importlib.util.spec_from_file_location("build_ipynb", os.path.join(ROOT, "notebooks", "build_ipynb.py"))
build_ipynb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_ipynb)


def test_ipynb_is_in_sync_with_its_twin():
    with open(NOTEBOOK) as f:
        committed = json.load(f)
    assert committed == build_ipynb.build(os.path.join(ROOT, "notebooks", "reproduce_isic.py")), (
        "run `python notebooks/build_ipynb.py` after editing notebooks/reproduce_isic.py"
    )


def test_ipynb_executes_with_nbclient_on_synthetic_data(tmp_path, monkeypatch):
    # The kernel inherits this environment: the checkout's package, CPU, run-local mode.
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.setenv("FOPROKD_NOTEBOOK_RUNLOCAL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "test balanced accuracy:" in text
    assert "jax before:" not in text  # the install branch did not run: foprokd_jax was importable
    assert "storage: " + str(tmp_path) in text  # no Drive outside Colab: everything under the working folder
    results = tmp_path / "workdirs" / "notebook_fopro_runlocal" / "results.json"
    assert json.loads(results.read_text())["report"]["bacc"] >= 0
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 3  # curves, confusion matrix, per-class recall (and the FPG figures)
