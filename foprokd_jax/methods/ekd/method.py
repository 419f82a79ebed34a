"""`build(config, mesh, dataset, steps_per_epoch) -> MethodParts` for 'ekd'."""

import jax

from foprokd_jax.methods import resnet_student
from foprokd_jax.methods.ekd import step as ekd_step
from foprokd_jax.state import make_optimizer


def build(config, mesh, dataset, steps_per_epoch: int):
    """The student with EKD's heads (sized by the teacher's width D_t), the frozen teacher, the EKD step."""
    teacher, teacher_vars, teacher_meta = resnet_student.build_feature_teacher(config)
    student = resnet_student.build_student(config, dataset.num_classes, teacher_meta["feature_dim"])
    optimizer = make_optimizer(config.optim)
    student_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    state = resnet_student.init_student_state(config, student, optimizer, student_rng)
    train_step = ekd_step.make_train_step(
        student=student,
        teacher=teacher,
        cls_loss=resnet_student.classification_loss(config, dataset, steps_per_epoch),
        optimizer=optimizer,
        free_u=config.loss.free_u,
        teacher_feature_key=config.teacher.feature_key,
        mesh=mesh,
    )
    return resnet_student.method_parts(
        config, mesh, dataset, student, state, teacher_vars, train_step, meta={"teacher": teacher_meta}
    )
