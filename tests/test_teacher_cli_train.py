"""The new teachers train through the real CLI: a checkpoint in the real format -> `launch/convert_teacher.py`
-> `launch/train.py --config=configs/isic.py:method=ekd,runlocal,teacher=<name>` on synthetic ISIC data.

One teacher per new code path: DINOv3 (RoPE, registers, CLS pooling), RETFound (mean pooling + fc_norm, no
LayerScale, RETFound's {'model': ...} container) and ConvNeXt (torchvision layout). The ViTs keep the registry's
width (so the registry's feature-width check applies) with one block; weights are random.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from foprokd_jax.porting.torch_compat import import_torchvision
from tests import cli_runs

torchvision = import_torchvision()
import timm  # noqa: E402  (after the torchvision shim: timm imports torchvision)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32  # 2x2 patches of 16 px; config.input.image_size is set to it (runlocal's 28 is for 14-px DINOv2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return cli_runs.write_tiny_isic(str(tmp_path_factory.mktemp("isic_teachers")))


def _checkpoint(name, folder):
    """(src, arch, --shape as JSON or None) of a random checkpoint for registry teacher `name`."""
    torch.manual_seed(0)
    if name == "dinov3_s16":
        model = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0, depth=1)
        src = os.path.join(folder, "dinov3.pth")
        torch.save(model.state_dict(), src)
        return src, "dinov3_vits16", {"depth": 1}
    if name == "retfound_l16":
        model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, global_pool="avg", depth=1)
        src = os.path.join(folder, "RETFound.pth")
        torch.save({"model": model.state_dict()}, src)
        return src, "retfound_vitl16", {"depth": 1}
    model = torchvision.models.convnext_tiny(weights=None)
    src = os.path.join(folder, "convnext_tiny.pth")
    torch.save(model.state_dict(), src)
    return src, "convnext_tiny", None


@pytest.mark.parametrize("name", ["dinov3_s16", "retfound_l16", "imagenet_convnext_t"])
def test_converted_teacher_trains_through_the_cli(dataset, tmp_path, tmp_path_factory, name):
    from foprokd_jax.cli import convert_teacher

    src, arch, shape = _checkpoint(name, str(tmp_path))
    artifact = str(tmp_path / f"{name}.npz")
    # The reduced depth needs the Python API (the CLI converts the registry's full shapes only).
    convert_teacher.convert(src, artifact, arch=arch, image_size=SIZE, shape=shape)
    workdir = str(tmp_path / "work")
    command = [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        f"--config=configs/isic.py:method=ekd,runlocal,teacher={name}",
        f"--config.input.image_root={dataset}",
        f"--config.input.split_dir={dataset}/splits",
        f"--config.input.prepared_dir={dataset}/tfds",
        f"--config.teacher.artifact={artifact}",
        f"--config.input.image_size={SIZE}",
        "--config.total_steps=2",
        "--config.eval_every_steps=2",
        f"--workdir={workdir}",
    ]
    env = cli_runs.cli_env(tmp_path_factory, 1, PYTHONPATH=ROOT)
    run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    teacher = results["method_info"]["teacher"]
    assert results["teacher"] == name and teacher["arch"] == arch
    assert teacher["feature_dim"] == (1024 if name == "retfound_l16" else 768 if "convnext" in name else 384)
    assert 0.0 <= results["report"]["bacc"] <= 1.0
