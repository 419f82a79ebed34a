"""What the methods that train the paper's ResNet student share: 'bsm', 'ekd', 'fopro' and 'hinton_kd'.

- their config subtrees `student`, `optim` (the reference's torch-style Adam) and the checks of those keys;
- building the student (`models/ekd_student.py`: a `models/students.py` backbone + fc, plus EKD's
  p_free/fc_free when it distils a teacher's features) and the frozen feature teacher of a config (`config.teacher`);
- the reference "skin" training stream and the parts every such method hands the training loop.

Each method package then adds only its own objective and step (docs/adding_a_method.md).
"""

import jax
import ml_collections
import numpy as np

from foprokd_jax import export, losses, parallel
from foprokd_jax.data import pipeline, samplers
from foprokd_jax.methods import device_augmentation, student_step
from foprokd_jax.methods.parts import MethodParts
from foprokd_jax.models import build, students, teachers
from foprokd_jax.models.ekd_student import (
    CLASSIFIERS,
    COMPUTE_DTYPES,
    EKDStudent,
    resolve_classifier,
    student_compute_dtype,
)
from foprokd_jax.parallel import DATA_AXIS
from foprokd_jax.state import create_train_state

AUGMENTATIONS = ("skin", "none")


def student_config() -> ml_collections.ConfigDict:
    """`config.student`: the distilled ResNet student (docs/reference_semantics.md §3.3)."""
    c = ml_collections.ConfigDict()
    # The backbone (models/students.py, docs/students.md): resnet18 (the paper), resnet50, mobilenet_v3_large,
    # efficientnet_b0 or vit_tiny_patch16; the EKD heads sit on its pooled feature.
    c.name = "resnet18"
    c.init = ""  # '' = torch-style random init; or a converted torchvision artifact (.npz)
    c.width = 64  # trunk base width (64 = ResNet-18); tests shrink it
    # ResNet blocks per stage: () = the named trunk's published depths (resnet18 (2, 2, 2, 2) basic, resnet50
    # (3, 4, 6, 3) bottleneck); tests shrink it to a custom ResNet. The other backbones ignore it.
    c.stage_sizes = ()
    # Class heads fc/fc_free: 'linear' (torch Linear), 'cosine' (LDAM's normalised-linear ClassifierLDAM, no
    # bias) or 'auto' = cosine exactly when loss.name == 'ldam', as the reference (models/ekd_student.py).
    c.classifier = "auto"
    # Student compute dtype: 'float32' or 'bfloat16' (mixed precision for GPU/TPU; slower on CPU). Parameters,
    # optimiser state and BN statistics stay float32 and outputs are cast to float32 before the losses.
    c.dtype = "float32"
    return c


def optim_config() -> ml_collections.ConfigDict:
    """`config.optim`: the reference's optimiser (`methods/free.py:123-124,372`), see `state.make_optimizer`."""
    c = ml_collections.ConfigDict()
    c.name = "adam"  # torch-style Adam; lr hard-coded to 3e-4 in the reference
    c.lr = 3e-4
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.0
    c.clip_norm = 5.0  # global-norm clipping of all student gradients before Adam
    return c


def default_config() -> ml_collections.ConfigDict:
    """The keys every ResNet-student method adds: student, loss (long-tail loss), optim, and input.augment."""
    c = ml_collections.ConfigDict(dict(student=student_config(), loss=losses.default_config(), optim=optim_config()))
    c.input = ml_collections.ConfigDict()
    c.input.augment = "skin"  # 'skin' (the reference isic-FL transform, data/augment.py) or 'none'
    # Where 'skin' runs: 'host' (PIL in grain), 'device' (in the train step), 'auto' = device on GPU/TPU, host on
    # CPU (methods/device_augmentation.py).
    c.input.augment_on = "auto"
    return c


def validate(config) -> None:
    """The allowed values of the shared student keys (numbers are checked by the loop's rule table)."""
    choices = {
        "input.augment": (config.input.augment, AUGMENTATIONS),
        "input.augment_on": (config.input.augment_on, device_augmentation.AUGMENT_ON),
        "input.sampler": (config.input.sampler, samplers.SAMPLERS),
        "loss.name": (str(config.loss.name).lower(), losses.LOSS_NAMES),
        "loss.weighted_mean": (config.loss.weighted_mean, losses.WEIGHTED_MEANS),
        "student.name": (config.student.name, students.ARCHS),
        "student.dtype": (config.student.dtype, tuple(COMPUTE_DTYPES)),
        "student.classifier": (config.student.classifier, ("auto",) + CLASSIFIERS),
    }
    if "teacher" in config:
        choices["teacher.dtype"] = (config.teacher.dtype, tuple(teachers.TEACHER_DTYPES))
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"config.{key}={value!r} is not one of {allowed}")


def student_classifier(config) -> str:
    """'linear' or 'cosine' class heads: config.student.classifier, where 'auto' means cosine exactly for LDAM."""
    return resolve_classifier(config.student.classifier, config.loss.name)


def build_student(config, num_classes: int, teacher_dim=None) -> EKDStudent:
    """The student; `teacher_dim` (D_t) adds EKD's projector and fc_free, sized by the teacher's feature width."""
    return EKDStudent(
        num_classes=num_classes,
        teacher_dim=teacher_dim,
        trunk=config.student.name,
        stage_sizes=tuple(config.student.stage_sizes),
        width=config.student.width,
        bn_axis_name=DATA_AXIS,
        classifier=student_classifier(config),
        # Mixed precision: bfloat16 compute, float32 params/BN statistics/outputs.
        dtype=student_compute_dtype(config.student.dtype),
    )


def build_feature_teacher(config):
    """(module, variables, record) of `config.teacher`, checked against the registry (`models/build.py`)."""
    dtype = teachers.teacher_compute_dtype(config.teacher.dtype)
    teacher, teacher_vars, record = build.teacher_from_artifact(
        config.teacher.artifact, config.teacher.arch, image_size=config.input.image_size, dtype=dtype
    )
    build.check_registered_teacher(config.teacher.name, record)
    record["dtype"] = config.teacher.dtype
    return teacher, teacher_vars, record


def make_train_iterator(config, dataset):
    """The reference training stream: shuffled, 'skin'-augmented (or not), optionally re-sampled."""
    return pipeline.make_train_iterator(
        dataset.sources["train"],
        config.input.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.input.worker_count,
        augment=augments_on(config) == "host",
        sampler=config.input.sampler,
        labels=np.asarray(dataset.train_labels),
    )


def augments_on(config):
    """Where this run's 'skin' augmentation runs: 'host', 'device', or None (`input.augment='none'`)."""
    if config.input.augment != "skin":
        return None
    return device_augmentation.resolve_augment_on(config.input.augment_on)


def classification_loss(config, dataset, steps_per_epoch: int):
    """The configured long-tail loss (`config.loss`) for this dataset's training class counts."""
    return losses.make_classification_loss(config.loss, dataset.train_counts, steps_per_epoch)


def method_parts(config, mesh, dataset, student, state, frozen, train_step, meta, on_eval=None) -> MethodParts:
    """The `MethodParts` of a ResNet-student method: state and frozen variables replicated on the mesh, the
    student's predict step, the reference training stream, and the student as the exported network."""
    if augments_on(config) == "device":
        train_step = device_augmentation.with_device_augmentation(train_step, mesh, config.seed)
    return MethodParts(
        state=parallel.replicate(state, mesh),
        frozen=parallel.replicate(frozen, mesh) if frozen else {},
        train_step=train_step,
        predict_step=student_step.make_predict_step(student, mesh),
        train_iterator=make_train_iterator(config, dataset),
        meta=meta,
        on_eval=on_eval,
        export_student=export.StudentSpec(student, lambda s: {"params": s.params, "batch_stats": s.batch_stats}, "z1"),
    )


def init_student_state(config, student, optimizer, rng, fpg_params=None, fpg_optimizer=None):
    """A fresh `TrainState`: torch-style student init (or `student.init`'s artifact), Adam state at zero."""
    variables = build.init_student(student, config, rng)
    return create_train_state(variables, optimizer, fpg_params, fpg_optimizer)
