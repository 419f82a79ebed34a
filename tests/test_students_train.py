"""Training every new student backbone, one method each: MobileNetV3 with fopro and EfficientNet-B0 with ekd
through the training loop (train.train_and_evaluate), ViT-Ti/16 with bsm through `launch/train.py`, so that
bsm, ekd and fopro all run on a non-ResNet student (the ResNets train in the rest of the suite). The runs
are 2 steps on 32-px synthetic ISIC-layout images (a smoke test of the wiring: the EKD heads on the
backbone's pooled feature, BatchNorm statistics, the optimiser and the checkpoint).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import isic
from foprokd_jax import demo, evaluation, train
from foprokd_jax.data import synthetic
from foprokd_jax.models import students
from tests import cli_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("isic"))
    synthetic.write_synthetic_isic(
        root,
        n_max=12,
        val_per_class=1,
        test_per_class=1,
        image_sizes=((40, 30), (32, 32)),
        folds=(1,),
        imbs=("0.01",),
        seed=0,
    )
    return root


def _config(dataset, arch, method):
    config = isic.get_config(f"method={method},runlocal")
    config.unlock()
    config.input.image_root = dataset
    config.input.split_dir = os.path.join(dataset, "splits")
    config.input.prepared_dir = os.path.join(dataset, "tfds")
    if "teacher" in config:  # the distilling methods; bsm has no teacher subtree
        config.teacher.artifact = os.path.join(dataset, "teacher.npz")
        config.teacher.arch = "demo_random_resnet"
    config.student.name = arch
    config.total_steps = 2
    config.eval_every_steps = 2
    config.lock()
    if "teacher" in config:
        demo.ensure_demo_teacher(config)
    return config


@pytest.mark.parametrize("arch,method", [("mobilenet_v3_large", "fopro"), ("efficientnet_b0", "ekd")])
def test_each_backbone_trains_with_a_method(dataset, tmp_path, arch, method):
    config = _config(dataset, arch, method)
    workdir = str(tmp_path / f"{arch}_{method}")
    results = train.train_and_evaluate(config, workdir)
    assert 0.0 <= results["report"]["bacc"] <= 1.0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [json.loads(line) for line in f]
    train_losses = [r["train/loss"] for r in losses if "train/loss" in r]
    assert train_losses and np.all(np.isfinite(train_losses))
    run = evaluation.restore_run(workdir, "latest")
    trunk = run.state.params["trunk"]
    expected_top = {"mobilenet_v3_large": "features_16", "efficientnet_b0": "features_8"}[arch]
    assert expected_top in trunk
    assert run.state.params["fc"]["kernel"].shape == (students.FEATURE_DIMS[arch], 8)
    assert run.state.params["p_free"]["linear1"]["kernel"].shape == (students.FEATURE_DIMS[arch],) * 2


def test_vit_student_trains_through_the_cli(dataset, tmp_path, tmp_path_factory):
    """`launch/train.py --config.student.name=vit_tiny_patch16` (bsm): the config key selects the backbone."""
    workdir = str(tmp_path / "vit_bsm")
    command = [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        "--config=configs/isic.py:method=bsm,runlocal",
        f"--config.input.image_root={dataset}",
        f"--config.input.split_dir={dataset}/splits",
        f"--config.input.prepared_dir={dataset}/tfds",
        "--config.input.image_size=32",
        "--config.student.name=vit_tiny_patch16",
        "--config.total_steps=2",
        "--config.eval_every_steps=2",
        f"--workdir={workdir}",
    ]
    env = cli_runs.cli_env(tmp_path_factory, 1, PYTHONPATH=ROOT)
    run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as handle:
        assert 0.0 <= json.load(handle)["report"]["bacc"] <= 1.0
    restored = evaluation.restore_run(workdir, "latest")
    assert "pos_embed" in restored.state.params["trunk"] and restored.config.student.name == "vit_tiny_patch16"
    assert restored.state.params["fc"]["kernel"].shape == (students.FEATURE_DIMS["vit_tiny_patch16"], 8)
