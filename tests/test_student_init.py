"""The student's ImageNet initialisation from a converted torchvision ResNet-18 artifact."""

import jax
import numpy as np
import pytest
import torch

from configs import isic
from foprokd_jax.cli import convert_teacher
from foprokd_jax.methods import resnet_student
from foprokd_jax.models import build
from foprokd_jax.porting.torch_compat import import_torchvision


def test_student_trunk_loads_converted_torchvision_resnet18(tmp_path):
    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    src, out = str(tmp_path / "resnet18.pth"), str(tmp_path / "resnet18.npz")
    torch.save(model.state_dict(), src)
    convert_teacher.convert(src, out, arch="resnet18")

    config = isic.get_config("method=bsm")
    config.unlock()
    config.student.init = out
    config.input.image_size = 32
    student = resnet_student.build_student(config, 8)
    variables = jax.device_get(build.init_student(student, config, jax.random.PRNGKey(0)))
    conv1 = model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(variables["params"]["trunk"]["conv1"]["kernel"], conv1)
    np.testing.assert_array_equal(
        variables["batch_stats"]["trunk"]["layer4_1"]["bn2"]["var"], model.layer4[1].bn2.running_var.numpy()
    )
    # The 8-way head stays randomly initialised (torchvision's 1000-way fc is not loaded).
    assert variables["params"]["fc"]["kernel"].shape == (512, 8)

    config.student.init = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        build.init_student(student, config, jax.random.PRNGKey(0))
