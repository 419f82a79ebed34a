"""The student backbones a run can train, by name: `build_backbone(arch, ...) -> (module, feature_dim)`.

| arch                  | source layout                         | pooled feature | module                     |
|-----------------------|---------------------------------------|----------------|----------------------------|
| resnet18 (default)    | torchvision ``resnet18`` (the paper)  | 512            | models/resnet.py           |
| resnet50              | torchvision ``resnet50``              | 2048           | models/resnet.py           |
| mobilenet_v3_large    | torchvision ``mobilenet_v3_large``    | 960            | models/mobilenet_v3.py     |
| efficientnet_b0       | torchvision ``efficientnet_b0``       | 1280           | models/efficientnet.py     |
| vit_tiny_patch16      | timm ``vit_tiny_patch16_224``         | 192 (CLS)      | models/vit_student.py      |

Every backbone takes an ImageNet-normalised NHWC batch and `train`, and returns a dict whose
``'pre_logits'`` is the pooled float32 feature the EKD heads sit on (``models/ekd_student.py``);
``num_classes`` adds the source model's own classifier (``'logits'``), used for parity and ImageNet checks.
docs/students.md lists parameters, FLOPs and CPU throughput.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from foprokd_jax.models.efficientnet import EfficientNetB0
from foprokd_jax.models.mobilenet_v3 import MobileNetV3Large
from foprokd_jax.models.resnet import get_resnet
from foprokd_jax.models.vit_student import vit_tiny_patch16

RESNET_ARCHS = ("resnet18", "resnet50")
ARCHS = RESNET_ARCHS + ("mobilenet_v3_large", "efficientnet_b0", "vit_tiny_patch16")
FEATURE_DIMS = {
    "resnet18": 512,
    "resnet50": 2048,
    "mobilenet_v3_large": 960,
    "efficientnet_b0": 1280,
    "vit_tiny_patch16": 192,
}
# Where each backbone's ImageNet weights come from (porting/student_weights.py converts them).
SOURCES = {
    "resnet18": "torchvision",
    "resnet50": "torchvision",
    "mobilenet_v3_large": "torchvision",
    "efficientnet_b0": "torchvision",
    "vit_tiny_patch16": "timm:vit_tiny_patch16_224",
}


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown student arch {arch!r}; expected one of {list(ARCHS)}")
    return arch


def build_backbone(
    arch: str,
    num_classes: Optional[int] = None,
    dtype: Any = jnp.float32,
    *,
    bn_axis_name: Optional[str] = None,
    image_size: int = 224,
    resnet_width: int = 64,
    name: Optional[str] = None,
) -> Tuple[nn.Module, int]:
    """(module, pooled feature width) of student backbone `arch`.

    `image_size` only matters for the ViT (its positional embedding is baked for one grid);
    `resnet_width` is the ResNets' base width (64 in torchvision; tests shrink it) and is ignored by the
    other architectures, whose widths and depths are fixed by their published configuration.
    `bn_axis_name` synchronises BatchNorm over a mesh axis (the ViT has no BatchNorm).
    """
    check_arch(arch)
    if arch in RESNET_ARCHS:
        module = get_resnet(
            arch, width=resnet_width, num_classes=num_classes, bn_axis_name=bn_axis_name, dtype=dtype, name=name
        )
        return module, module.feature_dim
    if arch == "mobilenet_v3_large":
        module = MobileNetV3Large(num_classes=num_classes, bn_axis_name=bn_axis_name, dtype=dtype, name=name)
    elif arch == "efficientnet_b0":
        module = EfficientNetB0(num_classes=num_classes, bn_axis_name=bn_axis_name, dtype=dtype, name=name)
    else:
        module = vit_tiny_patch16(image_size=image_size, num_classes=num_classes, dtype=dtype, name=name)
    return module, module.feature_dim
