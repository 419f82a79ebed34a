"""A trained student as a standalone artifact: weights + architecture + class names, no training code extras.

    export_student(path, run)            # a restored run (evaluation.restore_run) -> student.npz (+ .json)
    module, variables, class_names = load_student(path)
    probs = predict_probs(module, variables, images_uint8)     # (N, S, S, 3) uint8 -> (N, C)

The artifact is the teacher-artifact format (porting/artifact.py: .npz of the flattened variables and a
.json sidecar with a sha256 that loading verifies). It holds only the student's `params` and `batch_stats`
(no teacher, no optimizer state, no prompt); the sidecar records the student's Flax class and constructor
arguments, the logits output, the input size and normalisation, the class names and, for provenance, the
training config. `load_student` returns an `InferenceStudent`: the student wrapped to take uint8 images
and return logits, sharing the student's variable tree (so `variables` is exactly what was trained).
"""

import dataclasses
import importlib
import os
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax import image_norm
from foprokd_jax.porting import artifact

KIND = "student"
INPUT_DESCRIPTION = (
    "uint8 RGB, resized to image_size x image_size (bilinear, antialiased, aspect ignored: "
    "data.augment.resize_image), ImageNet mean/std normalisation inside the model"
)
# Constructor arguments that only matter in training (synchronised BatchNorm across the data axis).
TRAINING_ONLY_FIELDS = {"bn_axis_name": None}
# Only classes of this package are rebuilt from a sidecar, so an artifact cannot import arbitrary code.
ALLOWED_MODULE_PREFIX = "foprokd_jax."


@dataclasses.dataclass
class StudentSpec:
    """The evaluated network of a method: the module, its variables in a state, the logits output key."""

    module: nn.Module
    variables: Callable[[Any], dict]  # state -> {'params': ..., 'batch_stats': ...}
    logits_key: Optional[str]  # key of the logits in the module's output dict (None: an array)


def student_spec(run) -> StudentSpec:
    """The evaluated network of a restored run: its method's `MethodParts.export_student`."""
    provided = run.parts.export_student
    if provided is None:
        raise ValueError(
            f"method {run.config.method!r} does not say which network to export: give its "
            "MethodParts an `export_student` (export.StudentSpec)"
        )
    return provided if isinstance(provided, StudentSpec) else StudentSpec(*provided)


def _encode(name: str, value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_encode(name, v) for v in value]
    try:
        return {"dtype": jnp.dtype(value).name}
    except TypeError:
        raise ValueError(f"student field {name}={value!r} cannot be stored in an artifact sidecar") from None


def _decode(value):
    if isinstance(value, dict) and set(value) == {"dtype"}:
        return jnp.dtype(value["dtype"]).type
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)  # Flax module fields must be hashable
    return value


def module_description(module: nn.Module) -> dict:
    """{'class': 'package.module:Class', 'kwargs': {...}} rebuilding `module` for inference."""
    cls = type(module)
    kwargs = {
        f.name: _encode(f.name, getattr(module, f.name))
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name")
    }
    kwargs.update({k: v for k, v in TRAINING_ONLY_FIELDS.items() if k in kwargs})
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}


def build_module(description: dict) -> nn.Module:
    module_name, _, class_name = description["class"].partition(":")
    if not module_name.startswith(ALLOWED_MODULE_PREFIX):
        raise ValueError(f"artifact names class {description['class']!r}, outside {ALLOWED_MODULE_PREFIX}*")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{k: _decode(v) for k, v in description["kwargs"].items()})


class InferenceStudent(nn.Module):
    """uint8 NHWC images -> float32 logits of `student` in inference mode, with the student's variable tree."""

    student: nn.Module
    logits_key: Optional[str] = None

    def setup(self):
        nn.share_scope(self, self.student)  # the wrapper adds no level to the parameter tree

    def __call__(self, images):
        out = self.student(image_norm.normalize_uint8(images), train=False)
        out = out[self.logits_key] if self.logits_key is not None else out
        return out.astype(jnp.float32)


def export_student(path: str, run, source: Optional[str] = None) -> dict:
    """Writes the student of a restored run (evaluation.RestoredRun) to `path` (.npz) + sidecar; returns it."""
    variables, meta = student_variables_and_meta(run, source)
    return artifact.save_artifact(path, variables, meta)


def student_variables_and_meta(run, source: Optional[str] = None) -> Tuple[dict, dict]:
    """(numpy variables, sidecar meta) of the student of a restored run: what `export_student` writes."""
    spec = student_spec(run)
    variables = jax.tree.map(np.asarray, jax.device_get(spec.variables(run.state)))
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats") and v}
    config = run.config.to_dict() if hasattr(run.config, "to_dict") else dict(run.config)
    meta = {
        "arch": f"{KIND}:{type(spec.module).__name__}",
        "kind": KIND,
        "module": module_description(spec.module),
        "logits_key": spec.logits_key,
        "class_names": list(run.dataset.class_names),
        "image_size": int(run.config.input.image_size),
        "input": INPUT_DESCRIPTION,
        "method": run.config.method,
        "dataset": run.dataset.name,
        "checkpoint_step": int(run.step),
        "source": source or os.path.abspath(run.workdir),
        "config": config,
    }
    return variables, meta


def load_student(path: str) -> Tuple[nn.Module, dict, list]:
    """(InferenceStudent, variables, class names) of an exported student; the sha256 is verified."""
    module, variables, meta = load_student_with_meta(path)
    return module, variables, meta["class_names"]


def load_student_with_meta(path: str) -> Tuple[nn.Module, dict, dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported student {path} not found (made by launch/predict.py --export)")
    variables, meta = artifact.load_artifact(path)
    if meta.get("kind") != KIND:
        raise ValueError(
            f"{path} is not an exported student (kind {meta.get('kind')!r}; made by launch/predict.py --export)"
        )
    module = InferenceStudent(build_module(meta["module"]), meta.get("logits_key"))
    variables = jax.tree.map(jnp.asarray, variables)
    return module, variables, meta


def predict_probs(module: nn.Module, variables: dict, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C) float32 of uint8 images (N, S, S, 3), in batches on the default device."""
    from foprokd_jax import metrics

    apply = jax.jit(lambda v, x: module.apply(v, x))
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pad = batch_size - len(batch)  # one compiled shape for every batch
        padded = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)]) if pad else batch
        outputs.append(np.asarray(apply(variables, padded))[: len(batch)])
    logits = np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
    return metrics.softmax(logits).astype(np.float32)
