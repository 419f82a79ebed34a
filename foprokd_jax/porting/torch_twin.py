"""The torchvision/timm twin of a trained EKD student, for the ONNX export (``deploy.py``). Needs torch.

Why a twin: the students *are* torchvision/timm architectures (``models/students.py``, parity with them
≤ 1e-5 in tests/test_students.py), so the ONNX graph is produced by torch's own exporter from the reference
model carrying the trained weights, rather than by a JAX->ONNX tracer (docs/deployment.md gives the reasons;
``deploy.py`` checks the ONNX Runtime output against JAX on every export in the tests).

The twin is: uint8 NHWC images -> x / 255 -> ImageNet mean/std -> NCHW -> the backbone's pooled feature
(torchvision ``resnet18``/``resnet50``/``mobilenet_v3_large``/``efficientnet_b0`` with the classifier
removed, timm ``vit_tiny_patch16_224`` with ``num_classes=0``) -> the student's ``fc`` head (a Linear, or
LDAM's cosine classifier) -> softmax. Only the inference path of the EKD student is exported: ``z1 = fc(h)``.

Weights go JAX -> torch by *inverting* ``porting/student_weights.to_flax`` instead of writing a second
mapping: the torch state dict is filled with each entry's global index (split into two base-4096 digits so
every value is exact in float32), converted, and the index found at each Flax leaf position says where that
Flax value goes. This is exact for every converter that only transposes/reshapes/renames, which the student
converters do (the ViT's positional embedding is converted at the model's own grid, so it is not resampled).
"""

import functools
from typing import Dict, Tuple

import flax
import numpy as np

from foprokd_jax.models import students
from foprokd_jax.porting import student_weights
from foprokd_jax.porting.torch_compat import import_torchvision

_DIGIT = 4096  # base of the index digits: every digit (< 2**12) is exact in float32; 3 digits index 2**36 entries
# Standard ResNet trunks the torchvision twin can represent: (stage_sizes, block) at base width 64.
_TORCHVISION_RESNETS = {"resnet18": ((2, 2, 2, 2), "basic"), "resnet50": ((3, 4, 6, 3), "bottleneck")}


def check_exportable(student) -> str:
    """The arch of an EKDStudent the twin can reproduce; ValueError naming what is not (custom test trunks)."""
    arch = students.check_arch(student.trunk)
    if arch in students.RESNET_ARCHS:
        stages = tuple(student.stage_sizes or ())
        standard_stages, standard_block = _TORCHVISION_RESNETS[arch]
        custom = (stages and (stages != standard_stages or student.block != standard_block)) or student.width != 64
        if custom:
            raise ValueError(
                f"ONNX export needs a torchvision {arch} trunk; this student has stage_sizes={stages}, "
                f"block={student.block!r}, width={student.width} (export it as stablehlo instead)"
            )
    return arch


def torch_backbone(arch: str, image_size: int):
    """The reference model of `arch` returning its pooled feature (classifier removed), in eval mode."""
    import torch

    torchvision = import_torchvision()
    if arch == "vit_tiny_patch16":
        import timm  # after import_torchvision: timm imports torchvision

        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image_size, num_classes=0)
    else:
        model = getattr(torchvision.models, arch)()
        if arch in students.RESNET_ARCHS:
            model.fc = torch.nn.Identity()
        else:
            model.classifier = torch.nn.Identity()  # avgpool + flatten stay: the 960/1280-d pooled feature
    return model.eval()


def _index_state_dict(shapes: Dict[str, Tuple[int, ...]], digit: int) -> Dict[str, np.ndarray]:
    """Each entry's global index (keys in order), keeping only base-4096 digit `digit` (0 = lowest)."""
    out, offset = {}, 0
    for key, shape in shapes.items():
        count = int(np.prod(shape, dtype=np.int64))
        index = np.arange(offset, offset + count, dtype=np.int64)
        out[key] = ((index // _DIGIT**digit) % _DIGIT).astype(np.float32).reshape(shape)
        offset += count
    return out


def flax_to_torch_state_dict(trunk_variables: dict, arch: str, shapes: Dict[str, Tuple[int, ...]], image_size: int):
    """{torch key: float32 array} such that ``student_weights.to_flax`` of it gives `trunk_variables`."""
    converted = [
        flax.traverse_util.flatten_dict(
            student_weights.to_flax(_index_state_dict(shapes, d), arch, image_size=image_size)
        )
        for d in (0, 1, 2)
    ]
    values = flax.traverse_util.flatten_dict(
        {k: v for k, v in trunk_variables.items() if k in ("params", "batch_stats") and v}
    )
    total = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    flat = np.zeros(total, np.float32)
    hits = np.zeros(total, np.int64)
    if set(values) != set(converted[0]):
        raise ValueError(
            f"student trunk variables do not match the {arch} layout: {sorted(set(values) ^ set(converted[0]))[:3]}"
        )
    for path, value in values.items():
        index = sum(np.asarray(c[path], np.int64) * _DIGIT**d for d, c in enumerate(converted)).ravel()
        flat[index] = np.asarray(value, np.float32).ravel()
        np.add.at(hits, index, 1)
    if not np.all(hits == 1):
        raise ValueError(f"the {arch} converter is not a one-to-one relayout: cannot invert it")
    out, offset = {}, 0
    for key, shape in shapes.items():
        count = int(np.prod(shape, dtype=np.int64))
        out[key] = flat[offset : offset + count].reshape(shape)
        offset += count
    return out


def deployed_twin(student, variables: dict, image_size: int):
    """torch module: uint8 (N, S, S, 3) -> softmax probabilities of EKDStudent `student` with `variables`."""
    import torch

    arch = check_exportable(student)
    backbone = torch_backbone(arch, image_size)
    state = backbone.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    trunk = {c: variables[c]["trunk"] for c in ("params", "batch_stats") if c in variables and "trunk" in variables[c]}
    weights = flax_to_torch_state_dict(trunk, arch, shapes, image_size)
    state.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
    backbone.load_state_dict(state)
    fc = variables["params"]["fc"]
    return _deployed_student_class()(
        backbone,
        torch.from_numpy(np.array(fc["kernel"], np.float32)),
        torch.from_numpy(np.array(fc["bias"], np.float32)) if "bias" in fc else None,
        cosine=student.classifier == "cosine",
    ).eval()


@functools.lru_cache(maxsize=None)
def _deployed_student_class():
    """The torch.nn.Module class of the twin, defined on first use so that importing this module needs no torch."""
    import torch

    from foprokd_jax import image_norm

    class DeployedStudent(torch.nn.Module):
        """uint8 NHWC -> ImageNet normalisation -> backbone -> fc (linear or cosine) -> softmax."""

        def __init__(self, backbone, kernel, bias, cosine):
            super().__init__()
            self.backbone = backbone
            self.register_buffer("kernel", kernel)  # (F, C): the Flax layout, used as h @ kernel
            self.register_buffer("bias", bias if bias is not None else torch.zeros(kernel.shape[1]))
            self.cosine = cosine
            self.register_buffer("mean", torch.tensor(image_norm.IMAGENET_MEAN, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(image_norm.IMAGENET_STD, dtype=torch.float32))

        def forward(self, images):
            x = (images.to(torch.float32) / 255.0 - self.mean) / self.std
            h = self.backbone(x.permute(0, 3, 1, 2))
            if self.cosine:  # LDAM's ClassifierLDAM: cosine of feature and class column, no bias
                kernel = torch.nn.functional.normalize(self.kernel, dim=0)
                logits = torch.nn.functional.normalize(h, dim=-1) @ kernel
            else:
                logits = h @ self.kernel + self.bias
            return torch.softmax(logits, dim=-1)

    return DeployedStudent


def onnx_bytes(student, variables: dict, image_size: int, opset: int, input_name: str, output_name: str) -> bytes:
    """ONNX of the twin (batch dimension dynamic), via torch's TorchScript-based exporter (no onnxscript)."""
    import io
    import warnings

    import torch

    twin = deployed_twin(student, variables, image_size)
    example = torch.zeros((2, image_size, image_size, 3), dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice (docs/deployment.md)
        torch.onnx.export(
            twin,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )
    return buffer.getvalue()
