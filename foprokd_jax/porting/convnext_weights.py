"""torchvision / timm ConvNeXt state dicts -> Flax variables for ``models/convnext.py``. Pure numpy.

torchvision (``convnext_tiny-983f1562.pth``, ``convnext_small-0c510722.pth``)::

  features.0.{0 conv, 1 LayerNorm2d}                      -> stem_conv, stem_norm
  features.{1,3,5,7}.{j}.block.{0 dwconv, 2 norm, 3 fc1, 5 fc2}, .layer_scale (d,1,1)
                                                           -> stages_{s}_blocks_{j}/{dwconv,norm,fc1,fc2,gamma}
  features.{2,4,6}.{0 LayerNorm2d, 1 conv}                 -> stages_{s}_downsample_{norm,conv}
  classifier.0 (LayerNorm2d)                               -> head_norm      classifier.2 (Linear): dropped

timm (``convnext_tiny.*`` ``pytorch_model.bin`` / ``model.safetensors``)::

  stem.{0,1}  stages.{s}.downsample.{0,1}  stages.{s}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}
  head.norm -> head_norm     head.fc: dropped

The classifier is never part of a teacher (its feature is the pooled, normalised trunk output).
"""

import re
from typing import Any, Dict, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.models.convnext import CONVNEXT_CONFIGS, get_convnext

FORMATS = ("torchvision", "timm")
FAMILY = "convnext"
_MAX_LISTED = 60
_NORM = {"weight": "scale", "bias": "bias"}
_CONV = {"weight": "kernel", "bias": "bias"}
_TV_STAGE = re.compile(r"^features\.(\d+)\.(.+)$")
_TV_BLOCK = {"block.0": "dwconv", "block.2": "norm", "block.3": "fc1", "block.5": "fc2"}
_TIMM_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")
_TIMM_DOWN = re.compile(r"^stages\.(\d+)\.downsample\.([01])\.(weight|bias)$")
_TIMM_BLOCK_MODULES = {"conv_dw": "dwconv", "norm": "norm", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}


def detect_format(state_dict: Mapping[str, Any]) -> str:
    if "features.0.0.weight" in state_dict:
        return "torchvision"
    if "stem.0.weight" in state_dict:
        return "timm"
    raise ValueError(
        "not a torchvision (features.0.0.weight) or timm (stem.0.weight) ConvNeXt state dict; "
        f"first keys: {sorted(state_dict)[:8]}"
    )


def _leaf(module: str, field: str, value):
    """(flax leaf, array in flax layout) for a conv / linear / norm field of a module named by its flax name."""
    value = np.asarray(value)
    if module.endswith(("norm",)):
        return _NORM.get(field), value
    if module in ("fc1", "fc2"):
        return _CONV.get(field), (value.T if field == "weight" else value)
    if field == "weight":  # conv OIHW -> HWIO (depthwise: (d,1,7,7) -> (7,7,1,d))
        return "kernel", np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
    return _CONV.get(field), value


def _block_entry(stage: int, index: int, module: str, field: str, value):
    scope = f"stages_{stage}_blocks_{index}"
    if module == "gamma":
        return (scope, "gamma"), np.asarray(value).reshape(-1)
    leaf, array = _leaf(module, field, value)
    return ((scope, module, leaf), array) if leaf else None


def _torchvision_entry(key: str, value):
    if key.startswith("classifier.2."):
        return "drop"
    if key.startswith("classifier.0."):
        leaf, array = _leaf("head_norm", key.rsplit(".", 1)[1], value)
        return (("head_norm", leaf), array) if leaf else None
    match = _TV_STAGE.match(key)
    if not match:
        return None
    position, rest = int(match.group(1)), match.group(2)
    if position == 0:
        sub, _, field = rest.partition(".")
        module = {"0": "stem_conv", "1": "stem_norm"}.get(sub)
        leaf, array = _leaf(module, field, value) if module else (None, None)
        return ((module, leaf), array) if leaf else None
    if position % 2 == 0:  # downsampling layer before stage position / 2
        sub, _, field = rest.partition(".")
        module = {"0": "downsample_norm", "1": "downsample_conv"}.get(sub)
        leaf, array = _leaf(module, field, value) if module else (None, None)
        return ((f"stages_{position // 2}_{module}", leaf), array) if leaf else None
    stage = (position - 1) // 2
    index, _, inner = rest.partition(".")
    if inner == "layer_scale":
        return _block_entry(stage, int(index), "gamma", "", value)
    module, _, field = inner.rpartition(".")
    if module not in _TV_BLOCK:
        return None
    return _block_entry(stage, int(index), _TV_BLOCK[module], field, value)


def _timm_entry(key: str, value):
    if key.startswith("head.fc."):
        return "drop"
    if key.startswith(("head.norm.", "stem.")):
        module = {"head.norm": "head_norm", "stem.0": "stem_conv", "stem.1": "stem_norm"}.get(key.rsplit(".", 1)[0])
        leaf, array = _leaf(module, key.rsplit(".", 1)[1], value) if module else (None, None)
        return ((module, leaf), array) if leaf else None
    match = _TIMM_DOWN.match(key)
    if match:
        stage, sub, field = match.groups()
        module = "downsample_norm" if sub == "0" else "downsample_conv"
        leaf, array = _leaf(module, field, value)
        return (f"stages_{stage}_{module}", leaf), array
    match = _TIMM_BLOCK.match(key)
    if not match:
        return None
    stage, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    if rest == "gamma":
        return _block_entry(stage, index, "gamma", "", value)
    module, _, field = rest.rpartition(".")
    if module not in _TIMM_BLOCK_MODULES:
        return None
    return _block_entry(stage, index, _TIMM_BLOCK_MODULES[module], field, value)


def expected_param_shapes(arch: str) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    model = get_convnext(arch)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)))
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _listing(title, items):
    items = sorted(items)
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def convnext_to_flax(state_dict: Mapping[str, Any], arch: str, fmt: str = "auto") -> Tuple[Dict[str, Any], str]:
    """(``{'params': ...}``, detected format) of a torchvision or timm ConvNeXt state dict; every unexpected key,
    missing parameter and shape mismatch is listed in one ValueError."""
    if arch not in CONVNEXT_CONFIGS:
        raise ValueError(f"unknown ConvNeXt arch {arch!r}; expected one of {sorted(CONVNEXT_CONFIGS)}")
    fmt = detect_format(state_dict) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"ConvNeXt format {fmt!r} is not one of {FORMATS}")
    entry_fn = _torchvision_entry if fmt == "torchvision" else _timm_entry
    expected = expected_param_shapes(arch)
    converted, sources, unexpected = {}, {}, []
    for key, value in state_dict.items():
        entry = entry_fn(key, value)
        if entry == "drop":
            continue
        if entry is None:
            unexpected.append(key)
            continue
        path, array = entry
        converted[path], sources[path] = np.asarray(array, np.float32), key
    missing = ["params/" + "/".join(p) for p in expected if p not in converted]
    unexpected += [f"{sources[p]} (-> {'/'.join(p)})" for p in converted if p not in expected]
    bad = [
        f"{sources[p]} -> params/{'/'.join(p)}: checkpoint gives {converted[p].shape}, {arch} needs {shape}"
        for p, shape in expected.items()
        if p in converted and converted[p].shape != shape
    ]
    if missing or unexpected or bad:
        parts = [f"the {fmt} state dict does not match {arch}:"]
        for title, items in (
            ("unexpected checkpoint keys", unexpected),
            ("missing from the checkpoint", missing),
            ("shape mismatches", bad),
        ):
            if items:
                parts.append(_listing(title, items))
        raise ValueError("\n".join(parts))
    return {"params": flax.traverse_util.unflatten_dict(converted)}, fmt
