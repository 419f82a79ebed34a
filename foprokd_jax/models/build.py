"""Loads a frozen teacher from its artifact, and initialises a student (optionally from a torchvision artifact).

The teacher's architecture comes from its artifact's sidecar (`arch`, `family`, optional `stage_sizes`/`block`/
`width` for non-torchvision shapes such as the demo's tiny teacher; see `teachers.build_teacher_module`), so a
config cannot silently pair weights with the wrong network: `config.teacher.arch` must equal the artifact's
`arch`, and a registered teacher's artifact must produce the registry's feature width.
"""

from typing import Any, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.models import teachers
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.porting import artifact


def teacher_from_artifact(
    path: str, expected_arch: str, *, image_size: Optional[int] = None, dtype: Any = jnp.float32
) -> Tuple[nn.Module, dict, dict]:
    """(module, variables, record) of a converted teacher; the record goes into checkpoints and results.

    `image_size` is the run's input size (checked against a ViT artifact's baked size); `dtype` is the
    teacher's compute dtype. Parameters stay float32: bfloat16 only changes the matmul/conv precision.
    """
    variables, meta = artifact.load_artifact(path, expected_arch=expected_arch)
    module = teachers.build_teacher_module(meta, dtype=dtype, image_size=image_size)
    family = teachers.artifact_family(meta)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    # The distilled feature is the pooled trunk output; a classifier in the artifact is never used.
    if family == "resnet":
        variables = {k: {n: p for n, p in v.items() if n != "fc"} for k, v in variables.items()}
    elif family == "densenet":
        variables = {k: {n: p for n, p in v.items() if n != "classifier"} for k, v in variables.items()}
    feature_dim = module.feature_dim
    if meta.get("feature_dim") not in (None, feature_dim):
        raise ValueError(
            f"artifact {path} declares feature_dim {meta['feature_dim']} but its architecture produces {feature_dim}"
        )
    record = {
        "artifact": path,
        "sha256": meta["sha256"],
        "arch": meta["arch"],
        "family": family,
        "feature_dim": feature_dim,
        "source": meta.get("source"),
    }
    if family == "vit":
        record["image_size"] = int(meta["image_size"])
    return module, variables, record


def check_registered_teacher(teacher_name: str, record: dict) -> None:
    """A registered teacher's artifact must give the registry's width and input normalisation.

    Skipped when the config points a registry name at another architecture (tests and the demo pair a
    registry name with a tiny random ResNet); `config.teacher.arch` vs the artifact is checked on load.
    """
    name = teachers.canonical_name(teacher_name)
    spec = teachers.TEACHERS.get(name)
    if spec is None or spec.arch != record["arch"]:
        return
    if record["feature_dim"] != spec.feature_dim:
        raise ValueError(
            f"teacher {name!r} should give {spec.feature_dim}-d features but {record['artifact']} "
            f"gives {record['feature_dim']}-d"
        )
    if spec.normalisation not in teachers.SUPPORTED_NORMALISATIONS:
        raise ValueError(
            f"teacher {name!r} expects {spec.normalisation!r} inputs; the pipeline only feeds "
            f"{teachers.SUPPORTED_NORMALISATIONS}"
        )


def init_student(student: EKDStudent, config, rng: jax.Array) -> dict:
    """Torch-style random init, optionally overwriting the trunk with a converted torchvision artifact."""
    size = config.input.image_size
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    # The student's BN is synchronised over the 'data' axis, which only exists inside shard_map; init in
    # eval mode needs no collective, so it runs outside.
    variables = jax.jit(lambda r: student.init(r, dummy, train=False))(rng)
    variables = flax.core.unfreeze(variables)
    if config.student.init:
        variables = load_trunk_weights(variables, config.student.init, config.student.name)
    return variables


def load_trunk_weights(variables: dict, path: str, arch: str) -> dict:
    """Copies a converted torchvision ResNet (e.g. ImageNet IMAGENET1K_V1) into the student's trunk.

    Every trunk variable must be present with the same shape; the torchvision `fc` is skipped (the
    student's heads stay randomly initialised), as the reference's `--pre_trained_tv` does.
    """
    loaded, _ = artifact.load_artifact(path, expected_arch=arch)
    flat_loaded = flax.traverse_util.flatten_dict(loaded)
    flat = flax.traverse_util.flatten_dict(variables)
    missing, copied = [], 0
    for key, value in flat.items():
        if len(key) < 2 or key[1] != "trunk":
            continue
        source_key = (key[0],) + key[2:]
        if source_key not in flat_loaded:
            missing.append("/".join(source_key))
            continue
        if tuple(flat_loaded[source_key].shape) != tuple(value.shape):
            raise ValueError(
                f"{path}: {'/'.join(source_key)} has shape {flat_loaded[source_key].shape}, the "
                f"student trunk expects {value.shape}"
            )
        flat[key] = jnp.asarray(np.asarray(flat_loaded[source_key]), value.dtype)
        copied += 1
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} student trunk variables, e.g. {missing[:5]}")
    return flax.traverse_util.unflatten_dict(flat)
