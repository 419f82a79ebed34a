"""The real `bsm` / `ekd` / `fopro` train steps at full model size, ready to time or profile.

Full-size models (ResNet-18 student with the EKD heads, ResNet-50 teacher, the FPG and explore head for
fopro) with random weights: speed does not depend on the values. One fixed random uint8 batch, as the
pipeline ships it. Used by benchmarks/benchmark.py and benchmarks/profile_step.py.
"""

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass
class BuiltStep:
    step: Callable  # the jitted data-parallel step: (state, teacher_vars, batch) -> (state, metrics)
    state: Any
    teacher_vars: Any
    batch: Any
    mesh: Any

    def args(self):
        return self.state, self.teacher_vars, self.batch


# Tiny models for dry runs (benchmarks/accelerator_check.py --dry_run): the same module types at a fraction of the
# compile and run time. The teacher is a one-block-per-stage bottleneck ResNet (feature width 8 * 8 * 4 = 256).
TINY_STUDENT = dict(stage_sizes=(1, 1, 1, 1), block="basic", width=8)
TINY_TEACHER = dict(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=8)
TINY_TEACHER_DIM = 8 * 8 * 4


def build_step(
    method: str,
    size: int,
    batch_size: int,
    fpg_variant: str = "spectrum",
    num_classes: int = 8,
    num_devices=None,
    fpg_update_every: int = 1,
    dtype: str = "float32",
    tiny: bool = False,
    devices=None,
) -> BuiltStep:
    """Models, optimizer (clip 5 + Adam 3e-4), replicated state and one global batch for `method`.

    fpg_update_every: 'fopro' only, `config.fpg.update_every` (train the FPG on every k-th step).
    dtype: compute dtype of student and teacher ('float32' or 'bfloat16'; parameters stay float32).
    tiny: TINY_STUDENT / TINY_TEACHER instead of ResNet-18 / ResNet-50 (dry runs).
    devices: the devices of the mesh (default: the first `num_devices` of jax.devices()), e.g. jax.devices('cpu')
      to build the same step on the host for a CPU-vs-accelerator comparison.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ml_collections import ConfigDict

    from configs import isic
    from foprokd_jax import losses, parallel
    from foprokd_jax.methods.bsm import step as bsm_step
    from foprokd_jax.methods.ekd import step as ekd_step
    from foprokd_jax.methods.fopro import method as fopro_method
    from foprokd_jax.methods.fopro import step as fopro_step
    from foprokd_jax.models.ekd_student import EKDStudent, student_compute_dtype
    from foprokd_jax.models.resnet import ResNet, resnet50
    from foprokd_jax.state import create_train_state, make_optimizer

    if method not in ("bsm", "ekd", "fopro"):
        raise ValueError(f"method must be 'bsm', 'ekd' or 'fopro', got {method!r}")
    if devices is None:
        mesh = parallel.make_mesh(num_devices)
    else:
        mesh = jax.sharding.Mesh(np.asarray(list(devices)[: num_devices or len(devices)]), (parallel.DATA_AXIS,))
    parallel.check_global_batch(batch_size, mesh)
    compute_dtype = student_compute_dtype(dtype)
    teacher = ResNet(**TINY_TEACHER, dtype=compute_dtype) if tiny else resnet50(dtype=compute_dtype)
    teacher_dim = TINY_TEACHER_DIM if tiny else 2048
    dummy = jnp.zeros((1, size, size, 3))
    uses_teacher = method in ("ekd", "fopro")
    teacher_vars = jax.jit(lambda r: teacher.init(r, dummy, train=False))(jax.random.PRNGKey(1)) if uses_teacher else {}
    student = EKDStudent(
        num_classes=num_classes,
        teacher_dim=teacher_dim if uses_teacher else None,
        bn_axis_name=parallel.DATA_AXIS,
        dtype=compute_dtype,
        **(TINY_STUDENT if tiny else {}),
    )
    variables = jax.jit(lambda r: student.init(r, dummy, train=False))(jax.random.PRNGKey(0))
    optimizer = make_optimizer(
        ConfigDict(dict(name="adam", lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=5.0))
    )
    cls_loss = losses.make_classification_loss("bsm", np.arange(num_classes, 0, -1))
    if method == "fopro":
        config = isic.get_config(f"method=fopro,fpg={fpg_variant}")
        prompt, head = fopro_method.prompt_from_config(config, teacher_dim, num_classes)
        fpg_params = fopro_method.init_prompt(prompt, head, teacher_dim, size, jax.random.PRNGKey(2))
        state = create_train_state(variables, optimizer, fpg_params, optimizer)
        step = fopro_step.make_fopro_train_step(
            student=student,
            teacher=teacher,
            prompt=prompt,
            explore_head=head,
            cls_loss=cls_loss,
            optimizer=optimizer,
            fpg_optimizer=optimizer,
            free_u=3.0,
            lambda_cls=1.0,
            lambda_adv=1.0,
            lambda_reg=1e-3,
            teacher_feature_key="pre_logits",
            mesh=mesh,
            update_every=fpg_update_every,
        )
    elif method == "ekd":
        state = create_train_state(variables, optimizer)
        step = ekd_step.make_train_step(
            student=student,
            teacher=teacher,
            cls_loss=cls_loss,
            optimizer=optimizer,
            free_u=3.0,
            teacher_feature_key="pre_logits",
            mesh=mesh,
        )
    else:
        state = create_train_state(variables, optimizer)
        step = bsm_step.make_train_step(student=student, cls_loss=cls_loss, optimizer=optimizer, mesh=mesh)
    rng = np.random.default_rng(0)
    batch = parallel.host_batch_to_global(
        {
            "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
            "label": rng.integers(0, num_classes, (batch_size,)).astype(np.int32),
        },
        mesh,
    )
    return BuiltStep(step, parallel.replicate(state, mesh), parallel.replicate(teacher_vars, mesh), batch, mesh)


def cost_of(compiled) -> dict:
    """FLOPs and bytes accessed per call from XLA's cost analysis of a compiled step (None if absent)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost:
        return {"flops_per_step": None, "bytes_accessed_per_step": None}
    return {
        "flops_per_step": float(cost.get("flops", 0.0)),
        "bytes_accessed_per_step": float(cost.get("bytes accessed", 0.0)),
    }
