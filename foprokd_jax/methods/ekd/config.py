"""Config subtrees of 'ekd': the shared ResNet-student keys, the frozen feature teacher, and `loss.free_u`."""

import ml_collections

from foprokd_jax.methods import resnet_student


def teacher_config() -> ml_collections.ConfigDict:
    """`config.teacher`: the frozen feature teacher (foprokd_jax/models/teachers.py registry)."""
    c = ml_collections.ConfigDict()
    c.name = "moco_r50"  # frozen teacher, a foprokd_jax/models/teachers.py registry name
    c.artifact = "teachers/moco_v2_r50.npz"  # converted artifact (.npz + .json sidecar with sha256)
    c.arch = "resnet50"  # architecture the artifact must declare
    c.feature_key = (
        "pre_logits"  # distilled feature: 2048-d avgpool before the MoCo MLP (docs/reference_semantics.md §3.2)
    )
    # Teacher compute dtype: 'float32' or 'bfloat16' (faster on GPU/TPU). Parameters stay float32, features
    # are cast back to float32 before the loss, and the FPG always runs in float32.
    c.dtype = "float32"
    return c


def default_config() -> ml_collections.ConfigDict:
    c = resnet_student.default_config()
    c.teacher = teacher_config()
    c.loss.free_u = 3.0  # weight of the 2 - 2cos teacher-feature term (reference README)
    return c


def validate(config) -> None:
    resnet_student.validate(config)
