"""`build(config, mesh, dataset, steps_per_epoch) -> MethodParts` for 'bsm'."""

import jax

from foprokd_jax.methods import resnet_student
from foprokd_jax.methods.bsm import step as bsm_step
from foprokd_jax.state import make_optimizer


def build(config, mesh, dataset, steps_per_epoch: int):
    """The student (trunk + fc only), no teacher, the long-tail loss on fc."""
    student = resnet_student.build_student(config, dataset.num_classes)
    optimizer = make_optimizer(config.optim)
    # The same key split as the distilling methods, so 'bsm' and 'ekd' start from the same trunk and fc.
    student_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    state = resnet_student.init_student_state(config, student, optimizer, student_rng)
    train_step = bsm_step.make_train_step(
        student=student,
        cls_loss=resnet_student.classification_loss(config, dataset, steps_per_epoch),
        optimizer=optimizer,
        mesh=mesh,
    )
    return resnet_student.method_parts(config, mesh, dataset, student, state, {}, train_step, meta={"teacher": None})
