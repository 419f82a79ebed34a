"""Builds the student and the frozen teacher from a config, and initialises the student.

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

from foprokd_jax.models.ekd_student import EKDStudent, classifier_head, resolve_classifier, student_compute_dtype
from foprokd_jax.models.fourier_prompt import FourierPrompt
from foprokd_jax.models import teachers
from foprokd_jax.parallel import DATA_AXIS
from foprokd_jax.porting import artifact


def teacher_from_artifact(path: str, expected_arch: str, *, image_size: Optional[int] = None,
                          dtype: Any = jnp.float32) -> Tuple[nn.Module, dict, dict]:
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
        raise ValueError(f"artifact {path} declares feature_dim {meta['feature_dim']} but its architecture "
                         f"produces {feature_dim}")
    record = {"artifact": path, "sha256": meta["sha256"], "arch": meta["arch"], "family": family,
              "feature_dim": feature_dim, "source": meta.get("source")}
    if family == "vit":
        record["image_size"] = int(meta["image_size"])
    return module, variables, record


def models_from_config(config, num_classes: int):
    """Returns (student, teacher or None, teacher variables or {}, teacher record or None).

    The student's projector and `fc_free` are sized by the loaded teacher's feature width (D_t, spec §3.3).
    """
    teacher, teacher_vars, record = None, {}, None
    if config.method in ("ekd", "fopro"):
        dtype = teachers.teacher_compute_dtype(config.teacher.get("dtype", "float32"))
        teacher, teacher_vars, record = teacher_from_artifact(
            config.teacher.artifact, config.teacher.arch, image_size=config.input.image_size, dtype=dtype)
        _check_registered_teacher(config, record)
        record["dtype"] = config.teacher.get("dtype", "float32")
    student = EKDStudent(num_classes=num_classes,
                         teacher_dim=record["feature_dim"] if record else None,
                         trunk=config.student.name, stage_sizes=tuple(config.student.stage_sizes),
                         width=config.student.width, bn_axis_name=DATA_AXIS,
                         classifier=student_classifier(config),
                         # Mixed precision: bfloat16 compute, float32 params/BN statistics/outputs.
                         dtype=student_compute_dtype(config.student.get("dtype", "float32")))
    return student, teacher, teacher_vars, record


def student_classifier(config) -> str:
    """'linear' or 'cosine' class heads: config.student.classifier, where 'auto' means cosine exactly for LDAM."""
    return resolve_classifier(config.student.get("classifier", "auto"), config.loss.name)


def _check_registered_teacher(config, record: dict) -> None:
    """A registered teacher's artifact must give the registry's width and input normalisation.

    Skipped when the config points a registry name at another architecture (tests and the demo pair a
    registry name with a tiny random ResNet); `config.teacher.arch` vs the artifact is checked on load.
    """
    name = teachers.canonical_name(config.teacher.name)
    spec = teachers.TEACHERS.get(name)
    if spec is None or spec.arch != record["arch"]:
        return
    if record["feature_dim"] != spec.feature_dim:
        raise ValueError(f"teacher {name!r} should give {spec.feature_dim}-d features but {record['artifact']} "
                         f"gives {record['feature_dim']}-d")
    if spec.normalisation not in teachers.SUPPORTED_NORMALISATIONS:
        raise ValueError(f"teacher {name!r} expects {spec.normalisation!r} inputs; the pipeline only feeds "
                         f"{teachers.SUPPORTED_NORMALISATIONS}")


def prompt_from_config(config, teacher_dim: int, num_classes: int):
    """The Fourier prompt generator and the explore head (Linear D_t -> C on teacher features)."""
    fpg = config.fpg
    prompt = FourierPrompt(variant=fpg.variant, alpha=fpg.alpha, num_bands=fpg.num_bands,
                           share_channels=fpg.share_channels, hidden=fpg.hidden, depth=fpg.depth)
    # Same head kind as the student's: LDAM's scale-30 margins assume cosine logits (docs/long_tail.md).
    explore_head = classifier_head(student_classifier(config), num_classes, teacher_dim, name="explore_head")
    return prompt, explore_head


def init_prompt(prompt, explore_head, teacher_dim: int, image_size: int, rng: jax.Array) -> dict:
    """Identity prompt (zero log-gain) and a torch-initialised explore head."""
    prompt_rng, head_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return {"prompt": jax.jit(prompt.init)(prompt_rng, dummy)["params"],
            "explore_head": explore_head.init(head_rng, jnp.zeros((1, teacher_dim)))["params"]}


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
            raise ValueError(f"{path}: {'/'.join(source_key)} has shape {flat_loaded[source_key].shape}, the "
                             f"student trunk expects {value.shape}")
        flat[key] = jnp.asarray(np.asarray(flat_loaded[source_key]), value.dtype)
        copied += 1
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} student trunk variables, e.g. {missing[:5]}")
    return flax.traverse_util.unflatten_dict(flat)
