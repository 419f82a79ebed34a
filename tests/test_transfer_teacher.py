"""The transfer benchmark's source teacher trains, and round-trips through the teacher artifact format."""

import numpy as np

from foprokd_jax import transfer_teacher
from foprokd_jax.data import transfer_tasks as tt
from foprokd_jax.models.resnet import ResNet
from foprokd_jax.models.teachers import build_teacher_module
from foprokd_jax.porting import artifact

ARCH = dict(stage_sizes=(1, 1, 1, 1), block="basic", width=8)


def test_teacher_learns_and_its_artifact_reloads(tmp_path):
    source, _ = tt.task_classes(4, 1, seed=0)
    images, labels = tt.make_split(source, [8] * 4, 16, seed=0)
    variables, losses = transfer_teacher.train_source_teacher(
        images, labels, 4, ARCH, steps=30, batch_size=16, lr=0.05, seed=0
    )
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    path = str(tmp_path / "teacher.npz")
    sidecar = transfer_teacher.save_teacher(path, variables, ARCH, source_accuracy=0.5)
    assert sidecar["sha256"] == artifact.sha256_file(path)
    loaded, meta = artifact.load_artifact(path, expected_arch="transfer_source_resnet")
    module = build_teacher_module(meta)
    x = transfer_teacher.standardise(images[:3])
    reloaded = np.asarray(module.apply(loaded, x, train=False)["pre_logits"])
    original = np.asarray(ResNet(num_classes=4, **ARCH).apply(variables, x, train=False)["pre_logits"])
    np.testing.assert_allclose(reloaded, original, rtol=1e-5, atol=1e-6)
