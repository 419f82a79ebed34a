"""`build(config, mesh, dataset, steps_per_epoch) -> MethodParts` for 'hinton_kd'."""

import jax

from foprokd_jax import export
from foprokd_jax.methods import resnet_student, student_step
from foprokd_jax.methods.hinton_kd.objective import hinton_objective
from foprokd_jax.state import make_optimizer


def load_teacher(config, dataset):
    """(network, variables, record) of the exported teacher, checked against this run's classes and size."""
    path = config.hinton_kd.teacher_artifact
    wrapped, variables, meta = export.load_student_with_meta(path)
    if list(meta["class_names"]) != list(dataset.class_names):
        raise ValueError(
            f"config.hinton_kd.teacher_artifact={path} was trained on classes {meta['class_names']}, "
            f"this run's dataset {dataset.name} has {list(dataset.class_names)}"
        )
    if int(meta["image_size"]) != int(config.input.image_size):
        raise ValueError(
            f"config.hinton_kd.teacher_artifact={path} takes {meta['image_size']} px images, "
            f"config.input.image_size is {config.input.image_size}"
        )
    record = {
        "artifact": path,
        "sha256": meta["sha256"],
        "arch": meta["arch"],
        "method": meta.get("method"),
        "logits_key": meta.get("logits_key"),
    }
    # The step feeds normalised images: apply the exported network itself, not its uint8 wrapper.
    return wrapped.student, variables, record


def build(config, mesh, dataset, steps_per_epoch: int):
    """The student (trunk + fc), the frozen exported teacher, and the shared student step with Hinton's loss."""
    teacher, teacher_vars, record = load_teacher(config, dataset)
    student = resnet_student.build_student(config, dataset.num_classes)
    optimizer = make_optimizer(config.optim)
    student_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    state = resnet_student.init_student_state(config, student, optimizer, student_rng)
    cls_loss = resnet_student.classification_loss(config, dataset, steps_per_epoch)
    cfg = config.hinton_kd

    def targets(frozen, x):
        return student_step.teacher_outputs(teacher, frozen, x, record["logits_key"])

    def objective(out, labels, teacher_logits, step):
        return hinton_objective(out, labels, teacher_logits, cls_loss, cfg.temperature, cfg.alpha, step)

    train_step = student_step.make_student_train_step(
        student=student, optimizer=optimizer, objective=objective, targets_fn=targets, mesh=mesh
    )
    return resnet_student.method_parts(
        config,
        mesh,
        dataset,
        student,
        state,
        teacher_vars,
        train_step,
        meta={"teacher": None, "hinton_teacher": record},
    )
