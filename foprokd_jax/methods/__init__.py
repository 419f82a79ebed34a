"""The training methods, one package each, behind one registry.

    bsm/        the long-tail baseline (ResNet-18 student, Balanced Softmax, no teacher)
    ekd/        Effective KD: the released part of FoPro-KD (teacher features -> student projector)
    fopro/      FoPro-KD: EKD + the Fourier Prompt Generator + adversarial KD (a reconstruction, docs/fpg.md)
    crckd/      CRCKD: mean-teacher distillation with CCD and CRP losses (docs/crckd.md)
    hinton_kd/  logit distillation from a teacher trained on the same classes (docs/adding_a_method.md)

Each package exports `build(config, mesh, dataset, steps_per_epoch) -> MethodParts` (`parts.py`),
`default_config()` (the config subtrees the method reads, merged into the shared keys of configs/common.py)
and `validate(config)` (checks run before any work). `resnet_student.py` and `student_step.py` hold what the
ResNet-student methods share. The training loop (`foprokd_jax/train.py`) only sees `METHODS`.
"""

import dataclasses
from typing import Callable

import flax

from foprokd_jax.methods import bsm, crckd, ekd, fopro, hinton_kd
from foprokd_jax.methods.parts import MethodParts


@dataclasses.dataclass(frozen=True)
class Method:
    build: Callable  # (config, mesh, dataset, steps_per_epoch) -> MethodParts
    default_config: Callable  # () -> ConfigDict of the method's own subtrees
    validate: Callable  # (config) -> None, ValueError naming the key


METHODS = {
    "bsm": Method(bsm.build, bsm.default_config, bsm.validate),
    "ekd": Method(ekd.build, ekd.default_config, ekd.validate),
    "fopro": Method(fopro.build, fopro.default_config, fopro.validate),
    "crckd": Method(crckd.build, crckd.default_config, crckd.validate),
    "hinton_kd": Method(hinton_kd.build, hinton_kd.default_config, hinton_kd.validate),
}


def method_names() -> tuple:
    return tuple(sorted(METHODS))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not one of {method_names()}")
    return METHODS[name]


def method_keys(name: str) -> set:
    """Dotted keys of `name`'s own subtrees (`default_config()`), e.g. {'fpg.alpha', 'teacher.arch', ...}."""
    return set(flax.traverse_util.flatten_dict(get_method(name).default_config().to_dict(), sep="."))


def keys_of_other_methods(name: str) -> set:
    """Dotted keys some other method reads and `name` does not (a sweep's `teacher.*` override for 'bsm')."""
    other = set().union(*(method_keys(m) for m in METHODS if m != name))
    return other - method_keys(name)


def build_method(config, mesh, dataset, steps_per_epoch: int) -> MethodParts:
    return get_method(config.method).build(config, mesh, dataset, steps_per_epoch)


__all__ = [
    "METHODS",
    "Method",
    "MethodParts",
    "build_method",
    "get_method",
    "keys_of_other_methods",
    "method_keys",
    "method_names",
]
