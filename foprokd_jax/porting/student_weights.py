"""ImageNet state dicts of the student backbones -> Flax variables of ``models/students.py``. Pure numpy.

Sources (the caller turns torch tensors into numpy first, so this module never imports torch):

* torchvision ``mobilenet_v3_large`` / ``efficientnet_b0`` (https://github.com/pytorch/vision), e.g. the
  ``IMAGENET1K_V1`` files ``mobilenet_v3_large-8738ca79.pth`` / ``efficientnet_b0_rwightman-7f5810bc.pth``;
* timm ``vit_tiny_patch16_224`` (https://github.com/huggingface/pytorch-image-models), the
  ``augreg_in21k_ft_in1k`` state dict;
* torchvision ResNet-18/50, delegated to ``porting/resnet_weights.py``.

The mapping is generated from the Flax side: every variable of the model (``jax.eval_shape`` of its init)
names the one torch key it comes from, so a missing key, an unexpected key and a shape mismatch are all
found and reported in one error (``resnet_weights.raise_if_mismatched``). Module names mirror torch's
(``models/mobilenet_v3.py``, ``models/efficientnet.py``, ``models/vit_student.py``):

  features_0/conv/kernel              <- features.0.0.weight                 (OIHW -> HWIO)
  features_0/bn/{scale,bias,mean,var} <- features.0.1.{weight,bias,running_mean,running_var}
  features_4/se/fc1/kernel            <- features.4.block.2.fc1.weight       (MobileNetV3 block 4)
  features_2_1/project/conv/kernel    <- features.2.1.block.3.0.weight       (EfficientNet stage 2, block 1)
  classifier_3/kernel                 <- classifier.3.weight                 (transposed)
  blocks_3/attn/qkv/kernel            <- blocks.3.attn.qkv.weight            (ViT, transposed)
  pos_embed                           <- pos_embed   (resampled to the model's grid if needed)

Inside a torchvision block the ``block.{k}`` index counts the sub-layers that exist, in the order
expand, depthwise, squeeze-excitation, project (an expansion-1 block has no ``expand``).
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.models import students
from foprokd_jax.porting import dinov2_weights, resnet_weights

BLOCK_ROLES = ("expand", "depthwise", "se", "project")
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
# The classifier of each backbone, as torch key prefixes (dropped with include_classifier=False).
CLASSIFIER_PREFIXES = {
    "mobilenet_v3_large": ("classifier.",),
    "efficientnet_b0": ("classifier.",),
    "vit_tiny_patch16": ("head.",),
    "resnet18": ("fc.",),
    "resnet50": ("fc.",),
}
# The torch key whose first dimension is the class count.
CLASSIFIER_WEIGHT = {
    "mobilenet_v3_large": "classifier.3.weight",
    "efficientnet_b0": "classifier.1.weight",
    "vit_tiny_patch16": "head.weight",
}
VIT_SOURCE_GRID = 14  # timm vit_tiny_patch16_224: 224 / 16


def _conv_bn_key(torch_prefix: str, rest: Tuple[str, ...]) -> Tuple[str, str]:
    """(torch key, layout kind) of a ConvBNAct variable: rest = ('conv', 'kernel') or ('bn', leaf)."""
    layer, leaf = rest
    if layer == "conv" and leaf == "kernel":
        return f"{torch_prefix}.0.weight", "conv"
    if layer == "bn" and leaf in _BN_LEAVES:
        return f"{torch_prefix}.1.{_BN_LEAVES[leaf]}", "plain"
    raise KeyError((torch_prefix,) + rest)


def _block_key(torch_block: str, roles_present, rest: Tuple[str, ...]) -> Tuple[str, str]:
    role, inner = rest[0], rest[1:]
    index = [r for r in BLOCK_ROLES if r in roles_present].index(role)
    prefix = f"{torch_block}.block.{index}"
    if role == "se":
        layer, leaf = inner  # fc1/fc2, kernel/bias
        return f"{prefix}.{layer}.{'weight' if leaf == 'kernel' else 'bias'}", "conv" if leaf == "kernel" else "plain"
    return _conv_bn_key(prefix, inner)


def _dense_key(torch_layer: str, leaf: str) -> Tuple[str, str]:
    return (f"{torch_layer}.weight", "linear") if leaf == "kernel" else (f"{torch_layer}.bias", "plain")


def _torchvision_cnn_key(path: Tuple[str, ...], roles_of) -> Tuple[str, str]:
    """Torch key of a MobileNetV3 / EfficientNet variable path (without the collection)."""
    top, rest = path[0], path[1:]
    if top.startswith("classifier_"):
        return _dense_key(top.replace("_", "."), rest[-1])
    parts = top.split("_")  # features_{i} (a ConvBNAct or MobileNetV3 block) or features_{s}_{b}
    torch_module = ".".join(parts)
    if rest[0] in BLOCK_ROLES:
        return _block_key(torch_module, roles_of(top), rest)
    return _conv_bn_key(torch_module, rest)


def _vit_key(path: Tuple[str, ...]) -> Tuple[str, str]:
    top, rest = path[0], path[1:]
    if top == "patch_embed":
        return ("patch_embed.proj.weight", "conv") if rest[-1] == "kernel" else ("patch_embed.proj.bias", "plain")
    if top in ("cls_token", "pos_embed"):
        return top, "plain"
    if top == "head":
        return _dense_key("head", rest[-1])
    torch_module = ".".join([top.replace("_", ".")] + list(rest[:-1]))
    leaf = rest[-1]
    if rest[0] in ("norm1", "norm2") or top == "norm":
        return f"{torch_module}.{'weight' if leaf == 'scale' else 'bias'}", "plain"
    return _dense_key(torch_module, leaf)


def expected_variable_shapes(
    arch: str, num_classes: Optional[int], image_size: int = 224
) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Flattened {(collection, *path): shape} of backbone `arch`, without running init."""
    module, _ = students.build_backbone(arch, num_classes, image_size=image_size)
    size = image_size if arch == "vit_tiny_patch16" else 64
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _is_classifier_key(arch: str, key: str) -> bool:
    return key.startswith(CLASSIFIER_PREFIXES[arch])


def to_flax(
    state_dict: Mapping[str, Any], arch: str, include_classifier: bool = False, image_size: int = 224
) -> Dict[str, Any]:
    """Convert an ImageNet state dict of student backbone `arch` to ``{'params', 'batch_stats'}``.

    Args:
      state_dict: torch key -> array (numpy or anything ``np.asarray`` accepts), in the source library's
        layout (torchvision for the CNNs, timm for ``vit_tiny_patch16``).
      arch: a ``models/students.py`` arch.
      include_classifier: keep the source classifier (its class count read from the checkpoint); without
        it every classifier key is dropped and the result matches ``build_backbone(arch, None)``.
      image_size: input size of the ViT; its 14x14 positional grid is resampled to ``image_size / 16``
        like timm's ``resample_abs_pos_embed`` (bicubic, antialiased). Ignored by the CNNs.

    Raises:
      ValueError listing unexpected keys, missing keys and shape mismatches, if there are any.
    """
    students.check_arch(arch)
    if arch in students.RESNET_ARCHS:
        return resnet_weights.torchvision_resnet_to_flax(state_dict, arch, include_fc=include_classifier)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    num_classes = None
    if include_classifier:
        weight_key = CLASSIFIER_WEIGHT[arch]
        if weight_key not in state_dict:
            raise ValueError(f"include_classifier=True but the state dict has no {weight_key!r}")
        num_classes = int(np.shape(state_dict[weight_key])[0])
    else:
        state_dict = {k: v for k, v in state_dict.items() if not _is_classifier_key(arch, k)}
    expected = expected_variable_shapes(arch, num_classes, image_size)

    children: Dict[str, set] = {}
    for path in expected:
        if len(path) > 2:
            children.setdefault(path[1], set()).add(path[2])

    converted, mismatched, missing, used = {}, [], [], set()
    for flat_key, shape in expected.items():
        path = flat_key[1:]
        torch_key, kind = (
            _vit_key(path) if arch == "vit_tiny_patch16" else _torchvision_cnn_key(path, lambda top: children[top])
        )
        if torch_key not in state_dict:
            missing.append(f"{'/'.join(flat_key)} (from {torch_key})")
            continue
        used.add(torch_key)
        array = np.asarray(state_dict[torch_key], dtype=np.float32)
        if torch_key == "pos_embed" and array.shape != shape:
            array = dinov2_weights.resize_pos_embed(
                array, image_size // 16, interpolate_offset=0.0, interpolate_antialias=True
            )
        try:
            array = resnet_weights.to_flax_layout(array, kind)
        except ValueError as error:
            mismatched.append(f"{torch_key}: {error}")
            continue
        if array.shape != shape:
            mismatched.append(
                f"{torch_key} -> {'/'.join(flat_key)}: checkpoint {array.shape} (after layout change) vs model {shape}"
            )
            continue
        converted[flat_key] = np.ascontiguousarray(array)
    unexpected = [k for k in state_dict if k not in used]
    resnet_weights.raise_if_mismatched(
        f"state dict does not match Flax {arch} (include_classifier={include_classifier}):",
        unexpected,
        mismatched,
        missing,
    )
    variables = flax.traverse_util.unflatten_dict(converted)
    variables.setdefault("batch_stats", {})
    return variables
