"""Config subtrees of 'bsm': the shared ResNet-student keys only (student, loss, optim; no teacher)."""

from foprokd_jax.methods import resnet_student


def default_config():
    return resnet_student.default_config()


def validate(config) -> None:
    resnet_student.validate(config)
