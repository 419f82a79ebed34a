"""torchvision DenseNet state dicts -> Flax variables for ``models/densenet.py``. Pure numpy.

The caller turns torch tensors into numpy arrays first (``launch/convert_teacher.py``), so this module
never imports torch. The Flax module reuses torchvision's module names, so the mapping is '.' -> '/':

  features.conv0.weight                               -> params/features/conv0/kernel (OIHW -> HWIO)
  features.denseblock1.denselayer1.norm1.weight       -> params/features/denseblock1/denselayer1/norm1/scale
  features.denseblock1.denselayer1.norm1.running_mean -> batch_stats/.../denselayer1/norm1/mean
  features.transition1.conv.weight                    -> params/features/transition1/conv/kernel
  features.norm5.{weight,bias,running_mean,running_var}
  classifier.{weight,bias}                            -> params/classifier/{kernel (transposed), bias}

torchvision's published checkpoints (``densenet121-a639ec97.pth``) predate the ban on '.' in module
names and spell dense-layer members ``norm.1``, ``conv.2``, ...; ``remap_legacy_keys`` applies the same
regex torchvision's ``_load_state_dict`` uses, so both spellings convert. ``num_batches_tracked`` has no
Flax counterpart and is skipped. The result is checked against ``jax.eval_shape`` of the Flax model's
init; unexpected keys, missing variables and shape mismatches are all reported in one error.
"""

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.models.densenet import DenseNet
from foprokd_jax.porting import artifact
from foprokd_jax.porting.resnet_weights import raise_if_mismatched, to_flax_layout

FAMILY = "densenet"
FEATURE_KEY = "features"
# torchvision constructor arguments per architecture (models/densenet.py: densenet121, ...).
ARCHS: Dict[str, Dict[str, Any]] = {
    "densenet121": {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64, "bn_size": 4},
}

# torchvision ``_load_state_dict``: 'features.denseblock1.denselayer1.norm.1.weight' -> '...norm1.weight'.
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_BN_FIELDS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_MAX_LISTED = 700  # lists every variable of a DenseNet-121 (606), caps pathological inputs


def remap_legacy_keys(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename old-style ``denselayerN.norm.1.*`` keys to ``denselayerN.norm1.*``; other keys pass through.

    Raises ValueError if a legacy key and its modern spelling are both present (ambiguous checkpoint).
    """
    out: Dict[str, Any] = {}
    for key, value in state_dict.items():
        match = _LEGACY_KEY.match(key)
        new_key = match.group(1) + match.group(2) if match else key
        if new_key in out:
            raise ValueError(f"state dict holds both {key!r} and its modern spelling {new_key!r}")
        out[new_key] = value
    return out


def is_legacy_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether any key uses torchvision's pre-0.3 ``norm.1`` / ``conv.2`` spelling."""
    return any(_LEGACY_KEY.match(key) for key in state_dict)


def build_model(
    arch: str, num_classes: Optional[int] = None, model_kwargs: Optional[Mapping[str, Any]] = None, **kwargs
) -> DenseNet:
    """The Flax DenseNet for a torchvision arch name, or for explicit torchvision constructor arguments
    (``model_kwargs``: growth_rate, block_config, num_init_features, bn_size), e.g. a reduced test net."""
    if model_kwargs is None:
        if arch not in ARCHS:
            raise ValueError(f"unknown DenseNet arch {arch!r}; expected one of {sorted(ARCHS)}")
        model_kwargs = ARCHS[arch]
    return DenseNet(**model_kwargs, num_classes=num_classes, **kwargs)


def expected_variable_shapes(
    arch: str, num_classes: Optional[int], model_kwargs: Optional[Mapping[str, Any]] = None
) -> Dict[Tuple[str, ...], Tuple]:
    """Flattened {(collection, *path): shape} of the Flax model's variables, without running init."""
    model = build_model(arch, num_classes, model_kwargs)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32), train=False)
    )
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _flax_location(torch_key: str) -> Optional[Tuple[Tuple[str, ...], str]]:
    """(flax path with collection first, kind in {'conv', 'linear', 'plain'}) or None if unknown."""
    parts = torch_key.split(".")
    if len(parts) < 2:
        return None
    *modules, field = parts
    layer = modules[-1]
    if modules == ["classifier"]:
        leaf = {"weight": "kernel", "bias": "bias"}.get(field)
        return (("params", "classifier", leaf), "linear" if leaf == "kernel" else "plain") if leaf else None
    if modules[0] != "features":
        return None
    if re.fullmatch(r"conv\d?", layer) and field == "weight":
        return ("params", *modules, "kernel"), "conv"
    if re.fullmatch(r"norm\d?", layer) and field in _BN_FIELDS:
        collection, leaf = _BN_FIELDS[field]
        return (collection, *modules, leaf), "plain"
    return None


def torch_to_flax(
    state_dict: Mapping[str, Any],
    arch: str = "densenet121",
    include_classifier: Optional[bool] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Convert a torchvision DenseNet ``state_dict`` (either key spelling) to Flax variables.

    Args:
      state_dict: torchvision key -> array (numpy, or anything ``np.asarray`` accepts).
      arch: 'densenet121'.
      include_classifier: keep ``classifier`` (its size is read from ``classifier.weight``). None keeps
        it when the state dict has one; False drops every ``classifier.*`` key, matching
        ``DenseNet(num_classes=None)``.
      model_kwargs: torchvision constructor arguments for a non-standard DenseNet (then ``arch`` only
        names it in errors).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` as float32 numpy arrays.

    Raises:
      ValueError listing unexpected keys, missing variables and shape mismatches, if there are any.
    """
    state_dict = remap_legacy_keys(state_dict)
    if include_classifier is None:
        include_classifier = "classifier.weight" in state_dict
    if include_classifier:
        if "classifier.weight" not in state_dict:
            raise ValueError(
                "include_classifier=True but the state dict has no 'classifier.weight'; "
                f"keys start with: {sorted(state_dict)[:10]}"
            )
        num_classes = int(np.shape(state_dict["classifier.weight"])[0])
    else:
        num_classes = None
    expected = expected_variable_shapes(arch, num_classes, model_kwargs)

    converted, unexpected, mismatched, mismatched_keys = {}, [], [], set()
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if not include_classifier and key.startswith("classifier."):
            continue
        location = _flax_location(key)
        if location is None or location[0] not in expected:
            unexpected.append(key)
            continue
        flat_key, kind = location
        try:
            array = to_flax_layout(np.asarray(value, dtype=np.float32), kind)
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

    missing = ["/".join(k) for k in expected if k not in converted and k not in mismatched_keys]
    raise_if_mismatched(
        f"state dict does not match Flax {arch} (include_classifier={include_classifier}):",
        unexpected,
        mismatched,
        missing,
        max_listed=_MAX_LISTED,
    )
    return flax.traverse_util.unflatten_dict(converted)


def load_densenet_variables(path: str, arch: str = "densenet121", keep_classifier: bool = True) -> Dict[str, Any]:
    """``{'params', 'batch_stats'}`` of a converted DenseNet artifact, after checking sha256 and arch.

    ``keep_classifier=False`` drops the ImageNet ``classifier`` (CRCKD replaces it, docs/crckd.md §R2), so
    the result fits ``DenseNet(num_classes=None)`` and can be copied into a larger model's backbone.
    """
    variables, meta = artifact.load_artifact(path, expected_arch=arch)
    if meta.get("family", FAMILY) != FAMILY:
        raise ValueError(f"artifact {path} declares family {meta.get('family')!r}, not {FAMILY!r}")
    variables = {k: variables.get(k, {}) for k in ("params", "batch_stats")}
    if not keep_classifier:
        variables["params"] = {k: v for k, v in variables["params"].items() if k != "classifier"}
    return variables
