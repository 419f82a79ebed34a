"""The compiled EKD train step: the shared student step with the teacher's features as targets."""

from typing import Callable

import flax.linen as nn
import optax

from foprokd_jax.methods import student_step
from foprokd_jax.methods.ekd.objective import ekd_objective


def make_train_step(
    *,
    student: nn.Module,
    teacher: nn.Module,
    cls_loss: Callable,
    optimizer: optax.GradientTransformation,
    free_u: float,
    teacher_feature_key: str,
    mesh,
    donate: bool = True,
) -> Callable:
    """`train_step(state, teacher_vars, batch) -> (state, metrics)` (contract: `student_step`)."""
    if teacher is None:
        raise ValueError("method 'ekd' needs a teacher")

    def targets(teacher_vars, x):
        return student_step.teacher_outputs(teacher, teacher_vars, x, teacher_feature_key)

    def objective(out, labels, teacher_feat, step):
        return ekd_objective(out, labels, cls_loss, free_u, teacher_feat, step)

    return student_step.make_student_train_step(
        student=student, optimizer=optimizer, objective=objective, targets_fn=targets, mesh=mesh, donate=donate
    )
