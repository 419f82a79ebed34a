"""Grad-CAM and Grad-CAM++ heat maps of a Flax classifier, computed in JAX.

* Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017, arXiv:1610.02391): with A (h, w, K) the target layer's activation and
  G = d y_c / d A the gradient of the class-c logit, alpha_k = mean_ij G_ijk and the map is
  relu(sum_k alpha_k A_k).
* Grad-CAM++ (Chattopadhay, Sarkar, Howlader, Balasubramanian, WACV 2018, arXiv:1710.11063, eq. 19 with the
  exponential-output approximation that expresses the higher derivatives through powers of G):
  a_ijk = G^2 / (2 G^2 + sum_ab A_abk G^3 + 1e-6), 0 where G = 0; w_k = sum_ij relu(G_ijk) a_ijk; the map is
  relu(sum_k w_k A_k).

The gradient is `jax.vjp` of the logits with respect to a zero perturbation added to the target layer's
output: `flax.linen.intercept_methods` wraps every module call, and the call of the module at
`target_path` (e.g. ('trunk', 'layer4_1'), the last block of the student's last convolutional stage)
returns `activation + delta`, so d logits / d delta = d logits / d activation. The model code is not
touched, and any Flax module (the student, or export.InferenceStudent around it) works.

Maps are brought to the image size as the `grad-cam` package does (github.com/jacobgil/pytorch-grad-cam,
`scale_cam_image` and `BaseCAM.aggregate_multi_layers`): per image x -> (x - min) / (max(x - min) + 1e-7),
bilinear resize with half-pixel centres (cv2.resize INTER_LINEAR there, jax.image.resize here), then the
same min-max scaling once more. tests/test_explain.py checks the maps against that package on the same
weights converted to torch (porting.resnet_weights.ekd_student_to_torchvision). Docs: docs/evaluation.md.
"""

import functools
import re
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("gradcam", "gradcam_pp")
GRADCAM_PP_EPS = 1e-6  # the grad-cam package's (and the Grad-CAM++ reference code's) denominator guard
NORMALIZE_EPS = 1e-7  # grad-cam's scale_cam_image
_BLOCK_NAME = re.compile(r"^layer(\d+)_(\d+)$")


def _module_calls(module: nn.Module, variables, inputs, apply_kwargs) -> list:
    """Paths of every module called in one forward pass (abstractly evaluated, nothing is computed)."""
    paths = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            paths.append(tuple(context.module.path))
        return next_fun(*args, **kwargs)

    def run(variables, inputs):
        with nn.intercept_methods(record):
            return module.apply(variables, inputs, **apply_kwargs)

    jax.eval_shape(run, variables, inputs)
    return paths


def last_stage_path(module: nn.Module, variables, inputs, **apply_kwargs) -> Tuple[str, ...]:
    """Path of the last block of the last ResNet stage (`layer<S>_<B>` with the largest S, then B)."""
    blocks = []
    for path in _module_calls(module, variables, inputs, apply_kwargs):
        match = _BLOCK_NAME.match(path[-1]) if path else None
        if match:
            blocks.append(((int(match.group(1)), int(match.group(2))), path))
    if not blocks:
        raise ValueError("the model calls no module named layer<stage>_<block>: give target_path explicitly")
    return max(blocks)[1]


def _forward(module, variables, inputs, target_path, delta, apply_kwargs, logits_key):
    """(logits, target activation) with `delta` added to the output of the module at `target_path`."""
    captured = {}

    def perturb(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == target_path:
            captured["activation"] = out
            out = out + delta.astype(out.dtype)
        return out

    with nn.intercept_methods(perturb):
        out = module.apply(variables, inputs, **apply_kwargs)
    if "activation" not in captured:
        raise ValueError(f"no module at path {'/'.join(target_path)} was called")
    logits = out[logits_key] if logits_key is not None else out
    return logits.astype(jnp.float32), captured["activation"].astype(jnp.float32)


def _vjp_pass(module, target_path, logits_key, apply_items):
    """The jitted forward + backward pass; `apply_items` is `apply_kwargs` as sorted (key, value) pairs."""
    apply_kwargs = dict(apply_items)

    def run(variables, inputs, requested):
        def logits_of(delta):
            return _forward(module, variables, inputs, target_path, delta, apply_kwargs, logits_key)

        shape = jax.eval_shape(logits_of, jnp.zeros((), jnp.float32))[1].shape
        logits, pullback, activation = jax.vjp(logits_of, jnp.zeros(shape, jnp.float32), has_aux=True)
        classes = jnp.where(requested >= 0, requested, jnp.argmax(logits, axis=-1))
        (gradient,) = pullback(jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype))
        return {"logits": logits, "classes": classes, "activations": activation, "gradients": gradient}

    return jax.jit(run)


# Compiled passes by (module, path, logits key, apply kwargs): batches of one shape compile once.
_compiled_vjp_pass = functools.lru_cache(maxsize=8)(_vjp_pass)


def activations_and_gradients(
    module: nn.Module,
    variables,
    inputs,
    target_path: Sequence[str],
    target_classes=None,
    logits_key: Optional[str] = None,
    **apply_kwargs,
) -> dict:
    """Forward and one backward pass: {"logits" (N, C), "classes" (N,), "activations" (N, h, w, K),
    "gradients" (N, h, w, K) = d logits[n, classes[n]] / d activations[n]}.

    `target_classes` (N,) ints, -1 or None meaning the predicted class. `apply_kwargs` go to `module.apply`
    (e.g. train=False for an EKDStudent); the model must be in inference mode (BatchNorm running statistics),
    so that examples do not interact and one backward pass of the summed target logits gives every
    example's own gradient.
    """
    target_path = tuple(target_path)
    names = {tuple(p) for p in _module_calls(module, variables, inputs, apply_kwargs)}
    if target_path not in names:
        raise ValueError(
            f"no module at path {'/'.join(target_path)!r}; modules called: "
            f"{sorted('/'.join(p) for p in names if p)[:40]}"
        )
    num = int(np.shape(inputs)[0])
    requested = np.full((num,), -1, np.int32) if target_classes is None else np.asarray(target_classes, np.int32)
    if requested.shape != (num,):
        raise ValueError(f"target_classes must have shape ({num},), got {requested.shape}")
    key = (module, target_path, logits_key, tuple(sorted(apply_kwargs.items())))
    try:
        run = _compiled_vjp_pass(*key)
    except TypeError:  # an unhashable module field: compile for this call only
        run = _vjp_pass(*key)
    out = jax.device_get(run(variables, inputs, requested))
    if out["activations"].ndim != 4:
        raise ValueError(f"the target layer's output must be (N, h, w, K) feature maps, got {out['activations'].shape}")
    return {key: np.asarray(value) for key, value in out.items()}


def gradcam_weights(activations: np.ndarray, gradients: np.ndarray, method: str) -> np.ndarray:
    """(N, K) channel weights of 'gradcam' (mean gradient) or 'gradcam_pp' (Grad-CAM++ eq. 19), NHWC inputs."""
    if method == "gradcam":
        return gradients.mean(axis=(1, 2))
    if method == "gradcam_pp":
        g2 = gradients**2
        g3 = g2 * gradients
        total_activation = activations.sum(axis=(1, 2), keepdims=True)
        alpha = g2 / (2.0 * g2 + total_activation * g3 + GRADCAM_PP_EPS)
        alpha = np.where(gradients != 0, alpha, 0.0)
        return (np.maximum(gradients, 0.0) * alpha).sum(axis=(1, 2))
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def raw_maps(activations: np.ndarray, gradients: np.ndarray, method: str) -> np.ndarray:
    """(N, h, w) relu(sum_k w_k A_k) at the target layer's resolution."""
    weights = gradcam_weights(activations, gradients, method)
    return np.maximum(np.einsum("nhwk,nk->nhw", activations, weights), 0.0)


def _min_max(maps: np.ndarray) -> np.ndarray:
    shifted = maps - maps.min(axis=(1, 2), keepdims=True)
    return shifted / (NORMALIZE_EPS + shifted.max(axis=(1, 2), keepdims=True))


def upsample_maps(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) in [0, 1]: min-max, bilinear resize (half-pixel centres), min-max (grad-cam's order)."""
    scaled = _min_max(np.asarray(maps, np.float32))
    resized = jax.image.resize(jnp.asarray(scaled), (scaled.shape[0], *size), method="linear", antialias=False)
    return _min_max(np.asarray(resized, np.float32))


def class_activation_maps(
    module: nn.Module,
    variables,
    inputs,
    target_path: Optional[Sequence[str]] = None,
    target_classes=None,
    logits_key: Optional[str] = None,
    methods: Sequence[str] = METHODS,
    **apply_kwargs,
) -> dict:
    """Grad-CAM / Grad-CAM++ maps at the input's resolution.

    Returns {"target_path", "logits", "classes", "probs", and per method "<method>" (N, H, W) float32 in [0, 1]
    and "<method>_raw" (N, h, w) before scaling}. `target_path` defaults to `last_stage_path`.
    """
    if target_path is None:
        target_path = last_stage_path(module, variables, inputs, **apply_kwargs)
    grads = activations_and_gradients(
        module, variables, inputs, target_path, target_classes, logits_key, **apply_kwargs
    )
    size = tuple(np.shape(inputs)[1:3])
    logits = grads["logits"].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    out = {
        "target_path": tuple(target_path),
        "logits": grads["logits"],
        "classes": grads["classes"],
        "probs": probs / probs.sum(axis=1, keepdims=True),
    }
    for method in methods:
        raw = raw_maps(grads["activations"], grads["gradients"], method)
        out[f"{method}_raw"] = raw
        out[method] = upsample_maps(raw, size)
    return out


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """(..., ) in [0, 1] -> (..., 3) float RGB in [0, 1], matplotlib's 'jet'."""
    from matplotlib import colormaps

    return colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3]


def overlay(image_uint8: np.ndarray, heat: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """uint8 RGB of (1 - w) * jet(heat) + w * image, rescaled so its maximum is 255 (grad-cam's show_cam_on_image)."""
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must lie in [0, 1], got {image_weight}")
    image = np.asarray(image_uint8, np.float32) / 255.0
    mixed = (1.0 - image_weight) * jet_colormap(heat) + image_weight * image
    return np.uint8(255 * mixed / max(float(mixed.max()), 1e-12))


def worst_classified(probs: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the `per_class` examples of every class with the lowest probability of their true class,
    class by class (class 0 first), worst first; a class with fewer examples gives all of them."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    true_prob = probs[np.arange(len(labels)), labels]
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.extend(members[np.argsort(true_prob[members], kind="stable")[:per_class]].tolist())
    return np.asarray(chosen, np.int64)
