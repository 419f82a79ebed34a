"""torchvision / MoCo-v2 ResNet state dicts -> Flax variables for ``models/resnet.py``. Pure numpy.

The caller turns torch tensors into numpy arrays first (``launch/convert_teacher.py``), so this module
never imports torch. The mapping is mechanical because the Flax module reuses torchvision's names:

  conv1.weight                      -> params/conv1/kernel            (OIHW -> HWIO)
  bn1.{weight,bias}                 -> params/bn1/{scale,bias}
  bn1.{running_mean,running_var}    -> batch_stats/bn1/{mean,var}
  layer1.0.conv2.weight             -> params/layer1_0/conv2/kernel
  layer1.0.downsample.0.weight      -> params/layer1_0/downsample_conv/kernel
  layer1.0.downsample.1.*           -> .../layer1_0/downsample_bn/*
  fc.{weight,bias}                  -> params/fc/{kernel (transposed), bias}

``num_batches_tracked`` has no Flax counterpart and is skipped. The inverse direction
(``flax_resnet_to_torchvision``, ``ekd_student_to_torchvision``: Flax variables -> torchvision state dict
of numpy arrays) serves parity checks against torch tools, e.g. the Grad-CAM comparison of
tests/test_explain.py; it writes ``num_batches_tracked = 0`` so that ``load_state_dict(strict=True)`` accepts it.
The converted tree is checked against
``jax.eval_shape`` of the Flax model's init, and any unexpected key, missing key or shape mismatch
raises a single error listing all of them (in the spirit of big_vision's ``merge_params``).
"""

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.models.resnet import get_resnet

MOCO_ENCODER_PREFIX = "module.encoder_q."
FORMATS = ("moco_v2", "torchvision")

# Wrapper keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model")

_BN_FIELDS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_MAX_LISTED = 300  # lists every variable of a ResNet-50 (267), caps pathological inputs


def _map_layer_key(layer_path: str, field: str) -> Optional[Tuple[str, str, str, bool]]:
    """Map '<layer>.<field>' to (collection, flax_layer, flax_leaf, is_conv) or None if unknown.

    ``layer_path`` is the torchvision module path inside the model or block (e.g. 'conv1',
    'downsample.0'); the returned flax_layer is the matching Flax module name.
    """
    if layer_path == "downsample.0":
        layer_path = "downsample_conv"
    elif layer_path == "downsample.1":
        layer_path = "downsample_bn"
    if re.fullmatch(r"conv\d|downsample_conv", layer_path) and field == "weight":
        return "params", layer_path, "kernel", True
    if re.fullmatch(r"bn\d|downsample_bn", layer_path) and field in _BN_FIELDS:
        collection, leaf = _BN_FIELDS[field]
        return collection, layer_path, leaf, False
    return None


def _flax_location(torch_key: str):
    """Return (collection, path tuple, kind) for a torchvision key; kind in {'conv','linear','plain'}."""
    match = _BLOCK_KEY.match(torch_key)
    if match:
        stage, index, rest = match.groups()
        scope = (f"layer{stage}_{index}",)
    else:
        rest, scope = torch_key, ()
    if "." not in rest:
        return None
    layer_path, field = rest.rsplit(".", 1)
    if not scope and layer_path == "fc":
        if field == "weight":
            return "params", ("fc", "kernel"), "linear"
        if field == "bias":
            return "params", ("fc", "bias"), "plain"
        return None
    if not scope and layer_path.startswith("downsample"):
        return None  # shortcuts only exist inside blocks
    mapped = _map_layer_key(layer_path, field)
    if mapped is None:
        return None
    collection, flax_layer, leaf, is_conv = mapped
    return collection, scope + (flax_layer, leaf), "conv" if is_conv else "plain"


def to_flax_layout(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        if value.ndim != 4:
            raise ValueError(f"expected a 4-D OIHW conv weight, got shape {value.shape}")
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "linear":
        if value.ndim != 2:
            raise ValueError(f"expected a 2-D Linear weight, got shape {value.shape}")
        return value.T  # (out, in) -> (in, out)
    return value


def _list_for_error(title: str, items, max_listed: int) -> str:
    items = sorted(items)
    shown = "\n    ".join(items[:max_listed])
    more = f"\n    ... and {len(items) - max_listed} more" if len(items) > max_listed else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def raise_if_mismatched(header: str, unexpected, mismatched, missing, max_listed: int = _MAX_LISTED) -> None:
    """One error listing every unexpected key, shape mismatch and missing variable of a conversion
    (shared by the ResNet and DenseNet converters)."""
    if not (unexpected or missing or mismatched):
        return
    parts = [header]
    if unexpected:
        parts.append(_list_for_error("unexpected checkpoint keys", unexpected, max_listed))
    if mismatched:
        parts.append(_list_for_error("shape mismatches", mismatched, max_listed))
    if missing:
        parts.append(_list_for_error("model variables missing from the checkpoint", missing, max_listed))
    raise ValueError("\n".join(parts))


def expected_variable_shapes(arch: str, num_classes: Optional[int]) -> Dict[Tuple[str, ...], Tuple]:
    """Flattened {(collection, *path): shape} of the Flax model's variables, without running init."""
    model = get_resnet(arch, num_classes=num_classes)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32), train=False)
    )
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def torchvision_resnet_to_flax(state_dict: Mapping[str, Any], arch: str, include_fc: bool = True) -> Dict[str, Any]:
    """Convert a torchvision ResNet ``state_dict`` to ``{'params': ..., 'batch_stats': ...}``.

    Args:
      state_dict: torchvision key -> array (numpy, or anything ``np.asarray`` accepts).
      arch: 'resnet18' or 'resnet50'.
      include_fc: keep the ``fc`` classifier (its size is read from ``fc.weight``). With False, every
        ``fc.*`` key is dropped and the result matches ``ResNet(num_classes=None)``.

    Raises:
      ValueError listing unexpected keys, missing keys and shape mismatches, if there are any.
    """
    if include_fc:
        if "fc.weight" not in state_dict:
            raise ValueError(
                f"include_fc=True but the state dict has no 'fc.weight'; keys start with: {sorted(state_dict)[:10]}"
            )
        num_classes = int(np.shape(state_dict["fc.weight"])[0])
    else:
        num_classes = None
    expected = expected_variable_shapes(arch, num_classes)

    converted, unexpected, mismatched, mismatched_keys = {}, [], [], set()
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if not include_fc and (key == "fc" or key.startswith("fc.")):
            continue
        location = _flax_location(key)
        if location is None:
            unexpected.append(key)
            continue
        collection, path, kind = location
        flat_key = (collection,) + path
        if flat_key not in expected:
            unexpected.append(key)
            continue
        array = np.asarray(value, dtype=np.float32)
        try:
            array = to_flax_layout(array, kind)
        except ValueError as error:
            mismatched.append(f"{key}: {error}")
            mismatched_keys.add(flat_key)
            continue
        if array.shape != expected[flat_key]:
            mismatched.append(
                f"{key} -> {'/'.join(flat_key)}: checkpoint {array.shape} "
                f"(after layout change) vs model {expected[flat_key]}"
            )
            mismatched_keys.add(flat_key)
            continue
        converted[flat_key] = np.ascontiguousarray(array)

    # A variable whose checkpoint entry had the wrong shape is reported once, as a mismatch.
    missing = ["/".join(k) for k in expected if k not in converted and k not in mismatched_keys]
    raise_if_mismatched(
        f"state dict does not match Flax {arch} (include_fc={include_fc}):", unexpected, mismatched, missing
    )

    variables = flax.traverse_util.unflatten_dict(converted)
    variables.setdefault("batch_stats", {})
    return variables


def extract_moco_v2_encoder_q(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Keep the MoCo-v2 query encoder as a plain torchvision ResNet state dict.

    MoCo-v2 checkpoints (Chen et al. 2020; ``moco_v2_800ep_pretrain.pth.tar``) hold
    ``module.encoder_q.*`` (the encoder that is kept), ``module.encoder_k.*`` (its momentum copy),
    ``module.queue`` and ``module.queue_ptr``. We keep only the query encoder, strip its prefix, and
    drop its projection MLP (``fc.0.*``, ``fc.2.*``; any other ``fc.*`` too), because the teacher
    feature is the 2048-d pooled output before the MLP (docs/reference_semantics.md §6).
    """
    encoder = {
        key[len(MOCO_ENCODER_PREFIX) :]: value
        for key, value in state_dict.items()
        if key.startswith(MOCO_ENCODER_PREFIX)
    }
    if not encoder:
        raise ValueError(
            f"this is not a MoCo-v2 checkpoint: no '{MOCO_ENCODER_PREFIX}*' keys found; "
            f"first keys are {sorted(state_dict)[:10]}"
        )
    return {key: value for key, value in encoder.items() if not (key == "fc" or key.startswith("fc."))}


def _looks_like_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(hasattr(v, "shape") for v in obj.values())
    )


def unwrap_state_dict(checkpoint_obj: Any) -> Mapping[str, Any]:
    """Return the tensor mapping inside a checkpoint: the object itself, or its 'state_dict'/'model'."""
    if isinstance(checkpoint_obj, Mapping):
        for wrapper in _WRAPPER_KEYS:
            inner = checkpoint_obj.get(wrapper)
            if isinstance(inner, Mapping) and inner:
                return inner
        if _looks_like_state_dict(checkpoint_obj):
            return checkpoint_obj
    kind = type(checkpoint_obj).__name__
    keys = sorted(map(str, checkpoint_obj))[:10] if isinstance(checkpoint_obj, Mapping) else []
    raise ValueError(
        f"unrecognised checkpoint: a {kind} that is neither a state dict nor a dict "
        f"wrapping one under {list(_WRAPPER_KEYS)}; top-level keys: {keys}"
    )


def detect_format(checkpoint_obj: Any) -> str:
    """Return 'moco_v2' if the checkpoint holds ``module.encoder_q.*`` keys, else 'torchvision'.

    The state dict may be the checkpoint itself or nested under 'state_dict' or 'model'.
    """
    state_dict = unwrap_state_dict(checkpoint_obj)
    if any(key.startswith(MOCO_ENCODER_PREFIX) for key in state_dict):
        return "moco_v2"
    return "torchvision"


def strip_data_parallel_prefix(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Remove the 'module.' prefix that nn.DataParallel adds, if every key carries it."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


_FLAX_BN_FIELDS = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_FLAX_BLOCK = re.compile(r"^layer(\d+)_(\d+)$")


def _torch_key(collection: str, path: Tuple[str, ...]) -> Optional[Tuple[str, str]]:
    """(torchvision key, layout kind) of one flattened Flax variable, or None if it has no counterpart."""
    scope, layer, leaf = path[:-2], path[-2], path[-1]
    prefix = ""
    if scope:
        match = _FLAX_BLOCK.match(scope[0]) if len(scope) == 1 else None
        if match is None:
            return None
        prefix = f"layer{match.group(1)}.{match.group(2)}."
    module = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(layer, layer)
    if collection == "params" and leaf == "kernel" and re.fullmatch(r"conv\d|downsample_conv", layer):
        return f"{prefix}{module}.weight", "conv"
    if re.fullmatch(r"bn\d|downsample_bn", layer) and (collection, leaf) in _FLAX_BN_FIELDS:
        return f"{prefix}{module}.{_FLAX_BN_FIELDS[(collection, leaf)]}", "plain"
    if not scope and layer == "fc" and collection == "params" and leaf in ("kernel", "bias"):
        return ("fc.weight", "linear") if leaf == "kernel" else ("fc.bias", "plain")
    return None


def flax_resnet_to_torchvision(variables: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """``models/resnet.py`` variables ({'params', 'batch_stats'}) -> a torchvision ResNet state dict (numpy).

    The inverse of ``torchvision_resnet_to_flax``: HWIO -> OIHW, (in, out) -> (out, in), scale/bias/mean/var
    -> weight/bias/running_mean/running_var, plus ``num_batches_tracked`` (int64 0) for every BatchNorm. An
    ``fc`` in the variables becomes ``fc.*``. Raises ValueError listing every variable without a counterpart.
    """
    flat = flax.traverse_util.flatten_dict(
        flax.core.unfreeze({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    )
    state_dict, unknown = {}, []
    for (collection, *path), value in flat.items():
        mapped = _torch_key(collection, tuple(path)) if len(path) >= 2 else None
        if mapped is None:
            unknown.append("/".join((collection, *path)))
            continue
        key, kind = mapped
        value = np.asarray(value, np.float32)
        if kind == "conv":
            value = np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
        elif kind == "linear":
            value = value.T
        state_dict[key] = np.ascontiguousarray(value)
        if key.endswith(".running_mean"):
            state_dict[key[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    raise_if_mismatched("Flax variables that are not a models/resnet.py ResNet:", unknown, [], [])
    return dict(sorted(state_dict.items()))


def ekd_student_to_torchvision(variables: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """An EKDStudent's trunk + ``fc`` head as a torchvision ``resnet*(num_classes=C)`` state dict (numpy).

    ``z1 = fc(GAP(layer4))`` of the student (the evaluated logits) is exactly torchvision's ResNet forward, so
    the result loads into ``torchvision.models.resnet18(num_classes=C)``; ``p_free``/``fc_free`` are left out.
    The LDAM cosine classifier (no bias, normalised) has no torchvision counterpart and is refused.
    """
    params, stats = variables["params"], variables.get("batch_stats", {})
    if "trunk" not in params or "fc" not in params:
        raise ValueError(f"not an EKDStudent's variables: params hold {sorted(params)}, expected 'trunk' and 'fc'")
    if "bias" not in params["fc"]:
        raise ValueError("the student's fc is the cosine (LDAM) classifier, which torchvision's Linear cannot hold")
    trunk = {"params": {**params["trunk"], "fc": params["fc"]}, "batch_stats": stats.get("trunk", {})}
    return flax_resnet_to_torchvision(trunk)
