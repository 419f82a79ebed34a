"""The Colab notebook: its .ipynb matches the py:percent twin, and the twin runs end to end (run-local)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import build_ipynb  # noqa: E402


def test_ipynb_is_in_sync_with_its_twin():
    with open(os.path.join(ROOT, "notebooks", "reproduce_isic.ipynb")) as f:
        committed = json.load(f)
    assert committed == build_ipynb.build(os.path.join(ROOT, "notebooks", "reproduce_isic.py")), \
        "run `python notebooks/build_ipynb.py` after editing notebooks/reproduce_isic.py"


def test_notebook_runs_on_synthetic_data(tmp_path):
    env = dict(os.environ, FOPROKD_NOTEBOOK_RUNLOCAL="1", PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "notebooks", "reproduce_isic.py")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test balanced accuracy" in r.stdout
    assert (tmp_path / "workdirs" / "notebook_fopro_runlocal" / "results.json").exists()
