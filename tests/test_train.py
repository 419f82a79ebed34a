"""End to end: the training loop on synthetic ISIC-layout data and the CLI's error paths.

Exact resume after real kills is tested in test_resume.py; bad inputs through the CLI in test_cli_bad_inputs.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import isic
from foprokd_jax import demo, train
from foprokd_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("isic"))
    synthetic.write_synthetic_isic(
        root,
        n_max=24,
        val_per_class=2,
        test_per_class=3,
        image_sizes=((40, 30), (32, 32)),
        folds=(1,),
        imbs=("0.01",),
        seed=0,
    )
    return root


def _config(dataset, method="ekd", total_steps=6):
    config = isic.get_config(f"method={method},runlocal")
    config.unlock()
    config.input.image_root = dataset
    config.input.split_dir = os.path.join(dataset, "splits")
    config.input.prepared_dir = os.path.join(dataset, "tfds")
    teacher = os.path.join(dataset, "teacher.npz")
    if "teacher" in config:  # bsm has no teacher keys
        config.teacher.artifact = teacher
        config.teacher.arch = "demo_random_resnet"
        demo.ensure_demo_teacher(config)
    config.total_steps = total_steps
    config.eval_every_steps = 2
    config.lock()
    return config


def test_run_writes_results_metrics_and_figures(dataset, tmp_path):
    config = _config(dataset, method="bsm", total_steps=2)
    workdir = str(tmp_path / "bsm")
    results = train.train_and_evaluate(config, workdir)
    for name in (
        "config.json",
        "metrics.jsonl",
        "results.json",
        "curves.png",
        "confusion_matrix.png",
        "per_class_recall.png",
        "reliability_diagram.png",
    ):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert os.listdir(os.path.join(workdir, "tb"))
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved["protocol"] == {"select_on": "val", "report_on": "test", "name": "val_test"}
    # Every test example is counted exactly once (3 per class in this synthetic split).
    assert np.asarray(saved["report"]["confusion"]).sum(1).tolist() == [3] * 8
    assert 0.0 <= results["report"]["bacc"] <= 1.0
    # Calibration with temperature scaling fitted on val, and bootstrap intervals, of the report split.
    calib, boot = saved["report"]["calibration"], saved["report"]["bootstrap"]
    assert calib["temperature_scaling"]["fitted_on"] == "val" and 0.0 <= calib["ece"] <= 1.0
    assert abs(boot["bacc"]["estimate"] - saved["report"]["bacc"]) < 1e-9
    assert boot["bacc"]["low"] <= boot["bacc"]["high"]
    # Rerunning a finished run is idempotent, but a different config in the same workdir is refused.
    train.train_and_evaluate(config, workdir)
    other = _config(dataset, method="bsm", total_steps=3)
    with pytest.raises(ValueError, match="different config"):
        train.train_and_evaluate(other, workdir)


def _cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_cli_rejects_unknown_config_key(tmp_path):
    r = _cli("--config=configs/isic.py:method=bsm", "--config.input.bach_size=8", f"--workdir={tmp_path}")
    assert r.returncode != 0
    assert "bach_size" in r.stderr


def test_cli_names_the_missing_split_file(tmp_path):
    r = _cli(
        "--config=configs/isic.py:method=bsm,runlocal",
        f"--config.input.split_dir={tmp_path}/nope",
        f"--workdir={tmp_path}/w",
    )
    assert r.returncode != 0
    assert f"{tmp_path}/nope" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_demo_trains_fopro_end_to_end(tmp_path):
    """The CLI with the demo config, run from an empty folder: synthetic data, demo teacher, FoPro-KD."""
    config = os.path.join(ROOT, "configs", "demo.py") + ":methods=fopro,steps=4"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "train.py"), f"--config={config}", "--workdir=demo"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fopro" in r.stdout and "Demo results" in r.stdout
    with open(tmp_path / "demo" / "fopro" / "results.json") as f:
        results = json.load(f)
    assert results["method"] == "fopro" and results["best_step"] == 4
    assert (tmp_path / "demo" / "fopro" / "images" / "fpg_gain_spectrum_4.png").exists()
    assert (tmp_path / "demo" / "comparison.png").exists()
