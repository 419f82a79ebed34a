"""Config subtrees of 'hinton_kd': the shared ResNet-student keys plus `config.hinton_kd`."""

import ml_collections

from foprokd_jax.methods import resnet_student


def default_config() -> ml_collections.ConfigDict:
    c = resnet_student.default_config()
    c.hinton_kd = ml_collections.ConfigDict()
    # The teacher: a student exported by launch/predict.py --export (student.npz + .json sidecar with sha256),
    # trained on the same dataset and classes at the same image size.
    c.hinton_kd.teacher_artifact = "teachers/hinton_teacher.npz"
    # Defaults of the KD baseline in CRD's benchmark code (Tian et al., ICLR 2020, github.com/HobbitLong/RepDistiller):
    c.hinton_kd.temperature = 4.0  # tau of the softened distributions (> 0)
    c.hinton_kd.alpha = 0.9  # weight of the soft term; 1 - alpha weighs the long-tail loss on the labels
    return c


def validate(config) -> None:
    resnet_student.validate(config)
    cfg = config.hinton_kd
    if not cfg.temperature > 0:
        raise ValueError(f"config.hinton_kd.temperature={cfg.temperature!r} must be > 0")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"config.hinton_kd.alpha={cfg.alpha!r} must lie in [0, 1]")
