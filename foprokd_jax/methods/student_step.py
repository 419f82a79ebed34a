"""The compiled train and predict steps shared by the methods that train one student against the labels and,
optionally, a frozen model's outputs: 'bsm' (no frozen model), 'ekd' (teacher features), 'hinton_kd' (teacher
logits). FoPro-KD has its own step (`methods/fopro/step.py`: two optimisers) but reuses the helpers here.

A step is a pure function of (state, frozen variables, batch shard). `make_student_train_step` closes over the
static pieces (student, optimizer, the method's objective) and compiles it with `parallel.data_parallel`: a
`jax.shard_map` over the 'data' mesh under `jax.jit`, gradients and metrics averaged with `lax.pmean`, student
BatchNorm statistics synchronised through `bn_axis_name='data'` (docs/pods.md).
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from foprokd_jax import image_norm, losses, parallel
from foprokd_jax.state import TrainState

# objective(student outputs (float32), labels, targets or None, step) -> (loss, dict of loss terms)
Objective = Callable
# targets_fn(frozen variables, normalised images) -> what the objective distils from (no gradient), or None
TargetsFn = Optional[Callable]


def normalize_images(images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 NHWC -> ImageNet-normalised floats. The pipeline ships uint8 (4x less host-to-device traffic)."""
    return image_norm.normalize_uint8(images, dtype)


def teacher_outputs(teacher: nn.Module, teacher_vars: dict, x: jnp.ndarray, key: Optional[str]) -> jnp.ndarray:
    """A frozen model's output `key` (None: its only output) in inference mode (BN running stats), float32,
    with no gradient to it."""
    out = teacher.apply(teacher_vars, x, train=False)
    out = out[key] if key is not None else out
    return jax.lax.stop_gradient(out.astype(jnp.float32))


def float32_outputs(out: dict) -> dict:
    """Model outputs cast to float32, so that losses never run in a bfloat16 compute dtype (no-op in float32)."""
    return {name: value.astype(jnp.float32) for name, value in out.items()}


def classification_terms(
    out: dict, labels, cls_loss: Callable, step=None, axis_name: Optional[str] = parallel.DATA_AXIS
) -> dict:
    """{'loss_cls': long-tail loss of the fc logits z1}: the whole BSM baseline objective, EKD's first term.

    `cls_loss(logits, labels, step)` is a `losses.make_classification_loss` loss, reduced by `losses.batch_mean`
    (a weighted loss is normalised by its weights summed over the global batch across `axis_name`).
    """
    return {"loss_cls": losses.batch_mean(cls_loss, out["z1"], labels, step, axis_name)}


def make_student_train_step(
    *,
    student: nn.Module,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    targets_fn: TargetsFn,
    mesh,
    donate: bool = True,
) -> Callable:
    """Builds `train_step(state, frozen, batch) -> (state, metrics)`, compiled data-parallel.

    `batch` holds global arrays sharded along 'data': `image` uint8 (B,H,W,3) and `label` int32 (B,).
    `targets_fn(frozen, x)` computes the distillation targets outside the differentiated function (None: no
    frozen model, `frozen` is ignored; pass an empty dict). `objective(out, labels, targets, step)` gets the
    traced `state.step` (steps done before this one), so DRW switches weights without recompiling.
    """

    def train_loss(params, batch_stats, x, labels, targets, step):
        out, mutated = student.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        out = float32_outputs(out)
        loss, terms = objective(out, labels, targets, step)
        return loss, (terms, mutated["batch_stats"], out["z1"])

    def per_device_step(state: TrainState, frozen, batch):
        x = normalize_images(batch["image"])
        labels = batch["label"].astype(jnp.int32)
        targets = targets_fn(frozen, x) if targets_fn is not None else None
        grad_fn = jax.value_and_grad(train_loss, has_aux=True)
        (loss, (terms, new_batch_stats, logits)), grads = grad_fn(
            state.params, state.batch_stats, x, labels, targets, state.step
        )
        # The per-device loss is a mean over an equal-sized shard, so the mean over devices of the
        # gradients is the gradient of the global-batch mean: the pmap-era recipe, device-count free.
        grads = parallel.pmean(grads)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        step_metrics = dict(
            terms, loss=loss, train_accuracy=jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        )
        step_metrics = parallel.pmean(step_metrics)
        step_metrics["grad_norm"] = optax.tree.norm(grads)
        step_metrics["param_norm"] = optax.tree.norm(new_params)
        new_state = state.replace(
            step=state.step + 1, params=new_params, batch_stats=new_batch_stats, opt_state=new_opt_state
        )
        return new_state, step_metrics

    return parallel.data_parallel(per_device_step, mesh, num_replicated=2, num_sharded=1, donate_first=donate)


def make_predict_step(student: nn.Module, mesh) -> Callable:
    """`predict_step(state, batch) -> logits (B, C)`: the student's raw `fc` logits, eval-mode BatchNorm.

    Raw logits, without the Balanced-Softmax prior (docs/reference_semantics.md §13.7). The per-device logits
    are gathered so the output is replicated: every process can read the whole global batch (multi-host
    evaluation).
    """

    def per_device_predict(state, batch):
        x = normalize_images(batch["image"])
        out = student.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
        return jax.lax.all_gather(out["z1"].astype(jnp.float32), parallel.DATA_AXIS, tiled=True)

    return parallel.data_parallel(per_device_predict, mesh, num_replicated=1, num_sharded=1)
