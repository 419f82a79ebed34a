"""The compiled BSM-baseline train step: the shared student step with the long-tail loss on fc and no teacher."""

from typing import Callable

import flax.linen as nn
import optax

from foprokd_jax.methods import student_step


def make_train_step(
    *, student: nn.Module, cls_loss: Callable, optimizer: optax.GradientTransformation, mesh, donate: bool = True
) -> Callable:
    """`train_step(state, frozen, batch) -> (state, metrics)`; `frozen` is ignored (pass {})."""

    def objective(out, labels, _, step):
        terms = student_step.classification_terms(out, labels, cls_loss, step)
        return terms["loss_cls"], terms

    return student_step.make_student_train_step(
        student=student, optimizer=optimizer, objective=objective, targets_fn=None, mesh=mesh, donate=donate
    )
