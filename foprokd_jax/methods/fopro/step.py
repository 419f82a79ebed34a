"""The FoPro-KD train step: EKD with a Fourier prompt on the teacher's input, plus adversarial KD.

RECONSTRUCTION (the authors never released FPG/AKD; see docs/fpg.md and docs/reference_semantics.md §2.4,
§4). With frozen teacher f, prompt P_phi, explore head W (Linear D_t -> C) and the EKD student (z1, z2, p_theta):

    student:  min_theta  BSM(z1, y) + BSM(z2, y) + free_u * D(p_theta, sg f(P_phi(x)))
    FPG:      min_{phi,W} lambda_cls * BSM(W f(P_phi(x)), y) - lambda_adv * D(sg p_theta, f(P_phi(x)))
                          + lambda_reg * mean((log M)^2)

with D = mean(2 - 2 cos). Both objectives come from ONE forward pass of the student and of the teacher:
because each objective sees the other side's output through a stop-gradient, the gradient of their sum
with respect to theta is exactly the student's gradient and with respect to (phi, W) exactly the FPG's;
the two optimisers then step simultaneously ("joint" update). The student still sees the un-prompted x.

The prompt runs per device inside the shard_map, so its FFTs never gather the batch (jax#13081).

Speed switch `fpg.update_every = k` (default 1, docs/fpg.md "Speed switch"): the FPG's half of the joint
update runs only on every k-th step; on the steps between, the teacher sees the current prompt forward only (no
backward through it) and only the student steps, at about the cost of an EKD step.
"""

import numbers
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from foprokd_jax import losses, parallel
from foprokd_jax.methods.ekd.objective import ekd_objective
from foprokd_jax.methods.student_step import float32_outputs, normalize_images
from foprokd_jax.state import TrainState


def fpg_objective(
    fpg_params,
    teacher_vars,
    x,
    labels,
    student_p,
    *,
    teacher: nn.Module,
    prompt: nn.Module,
    explore_head: nn.Module,
    cls_loss: Callable,
    lambda_cls: float,
    lambda_adv: float,
    lambda_reg: float,
    teacher_feature_key: str,
    step=None,
):
    """The FPG's objective (module docstring) given the student's projection `student_p` as a constant.

    Returns (fpg loss, (FPG metric terms, the prompted teacher's features t in float32)). No stop-gradient on
    the teacher's input: the FPG learns through the frozen teacher, whose weights get no gradient because
    they are not an argument we differentiate.
    """
    x_prompted, log_gain = prompt.apply({"params": fpg_params["prompt"]}, x)
    t = teacher.apply(teacher_vars, x_prompted, train=False)[teacher_feature_key].astype(jnp.float32)
    z_t = explore_head.apply({"params": fpg_params["explore_head"]}, t)
    terms = {
        "fpg/loss_explore": losses.batch_mean(cls_loss, z_t, labels, step, parallel.DATA_AXIS),
        "fpg/loss_adversarial": jnp.mean(losses.normalized_feature_distance(student_p, t)),
        "fpg/loss_prompt_reg": jnp.mean(jnp.square(log_gain)),
    }
    fpg_loss = (
        lambda_cls * terms["fpg/loss_explore"]
        - lambda_adv * terms["fpg/loss_adversarial"]
        + lambda_reg * terms["fpg/loss_prompt_reg"]
    )
    terms["fpg/loss"] = fpg_loss
    terms["fpg/explore_accuracy"] = jnp.mean((jnp.argmax(z_t, -1) == labels).astype(jnp.float32))
    terms["fpg/mean_abs_log_gain"] = jnp.mean(jnp.abs(log_gain))
    return fpg_loss, (terms, t)


def fopro_losses(
    params,
    fpg_params,
    batch_stats,
    teacher_vars,
    x,
    labels,
    *,
    student: nn.Module,
    teacher: nn.Module,
    prompt: nn.Module,
    explore_head: nn.Module,
    cls_loss: Callable,
    free_u: float,
    lambda_cls: float,
    lambda_adv: float,
    lambda_reg: float,
    teacher_feature_key: str,
    step=None,
):
    """Student objective + FPG objective (see module docstring); returns (sum, aux).

    `cls_loss(logits, labels, step)` is the configured long-tail loss (BSM in the reference) on z1, z2 and the
    explore head; `step` is the optimizer step count (DRW switches weights on it).
    """
    sg = jax.lax.stop_gradient
    out, mutated = student.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
    out = float32_outputs(out)  # losses in float32 under a bfloat16 student; the prompt's FFT gets float32 x
    fpg_loss, (fpg_terms, t) = fpg_objective(
        fpg_params,
        teacher_vars,
        x,
        labels,
        sg(out["p"]),
        teacher=teacher,
        prompt=prompt,
        explore_head=explore_head,
        cls_loss=cls_loss,
        lambda_cls=lambda_cls,
        lambda_adv=lambda_adv,
        lambda_reg=lambda_reg,
        teacher_feature_key=teacher_feature_key,
        step=step,
    )
    # The student's objective is exactly EKD's, with the prompted teacher's features as constants.
    student_loss, terms = ekd_objective(out, labels, cls_loss, free_u, sg(t), step)
    terms.update(fpg_terms)
    terms["loss"] = student_loss
    return student_loss + fpg_loss, (terms, mutated["batch_stats"], out["z1"])


def check_update_every(update_every) -> int:
    """`fpg.update_every` as an int >= 1, or a ValueError naming the key (bools and floats are refused)."""
    if isinstance(update_every, bool) or not isinstance(update_every, numbers.Integral) or update_every < 1:
        raise ValueError(
            f"config.fpg.update_every must be an int >= 1 (train the FPG every k-th step; 1 = every "
            f"step), got {update_every!r}"
        )
    return int(update_every)


def make_fopro_train_step(
    *,
    student: nn.Module,
    teacher: nn.Module,
    prompt: nn.Module,
    explore_head: nn.Module,
    cls_loss: Callable,
    optimizer: optax.GradientTransformation,
    fpg_optimizer: optax.GradientTransformation,
    free_u: float,
    lambda_cls: float,
    lambda_adv: float,
    lambda_reg: float,
    teacher_feature_key: str,
    mesh,
    donate: bool = True,
    update_every: int = 1,
) -> Callable:
    """Builds `train_step(state, teacher_vars, batch) -> (state, metrics)` for method 'fopro'.

    Same contract as `student_step.make_student_train_step`; `state.fpg_params` holds {'prompt', 'explore_head'}.
    Metrics: the student's and the FPG's loss terms, norms, and `fpg/updated` (1.0 when the FPG stepped).

    `update_every = k > 1` (config `fpg.update_every`, a speed switch, docs/fpg.md) trains the FPG only on
    steps with `state.step % k == 0` (see `make_sparse_fpg_step`); k = 1 is the joint every-step program.
    """
    update_every = check_update_every(update_every)
    fpg_hyper = dict(
        teacher=teacher,
        prompt=prompt,
        explore_head=explore_head,
        cls_loss=cls_loss,
        lambda_cls=lambda_cls,
        lambda_adv=lambda_adv,
        lambda_reg=lambda_reg,
        teacher_feature_key=teacher_feature_key,
    )
    if update_every > 1:
        per_device_step = make_sparse_fpg_step(
            student, optimizer, fpg_optimizer, cls_loss, free_u, fpg_hyper, update_every
        )
        return parallel.data_parallel(per_device_step, mesh, num_replicated=2, num_sharded=1, donate_first=donate)
    loss_fn = jax.value_and_grad(fopro_losses, argnums=(0, 1), has_aux=True)

    def per_device_step(state: TrainState, teacher_vars, batch):
        x = normalize_images(batch["image"])
        labels = batch["label"].astype(jnp.int32)
        (_, (terms, new_batch_stats, logits)), (grads, fpg_grads) = loss_fn(
            state.params,
            state.fpg_params,
            state.batch_stats,
            teacher_vars,
            x,
            labels,
            student=student,
            free_u=free_u,
            step=state.step,
            **fpg_hyper,
        )
        grads, fpg_grads = parallel.pmean((grads, fpg_grads))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        fpg_updates, fpg_opt_state = fpg_optimizer.update(fpg_grads, state.fpg_opt_state, state.fpg_params)
        params = optax.apply_updates(state.params, updates)
        fpg_params = optax.apply_updates(state.fpg_params, fpg_updates)
        terms["train_accuracy"] = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        step_metrics = parallel.pmean(terms)
        step_metrics["grad_norm"] = optax.tree.norm(grads)
        step_metrics["fpg/grad_norm"] = optax.tree.norm(fpg_grads)
        step_metrics["param_norm"] = optax.tree.norm(params)
        step_metrics["fpg/updated"] = jnp.ones((), jnp.float32)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=new_batch_stats,
            opt_state=opt_state,
            fpg_params=fpg_params,
            fpg_opt_state=fpg_opt_state,
        )
        return new_state, step_metrics

    return parallel.data_parallel(per_device_step, mesh, num_replicated=2, num_sharded=1, donate_first=donate)


def make_sparse_fpg_step(
    student: nn.Module,
    optimizer: optax.GradientTransformation,
    fpg_optimizer: optax.GradientTransformation,
    cls_loss: Callable,
    free_u: float,
    fpg_hyper: dict,
    update_every: int,
) -> Callable:
    """The per-device step for `fpg.update_every = k > 1`: the FPG steps only when `state.step % k == 0`.

    Order: student forward; then a `lax.cond` on the traced, replicated step (every device takes the same
    branch; one compiled program, no host round trip) that either trains the FPG (prompt + teacher forward,
    backward through the teacher, pmean, FPG optimiser step) or runs the prompt and teacher forward only and
    passes the FPG parameters and optimiser state through untouched (not a zero-gradient update, which would
    move Adam's moments and count). Both branches return the prompted teacher's features t and the FPG terms.
    Last, outside the cond, the student's backward and update, the same ops on both kinds of step: EKD's
    objective with sg(t), the same function of (student state, t) as in the joint step.

    Only the FPG work sits inside the cond on purpose: XLA:CPU canonicalises convolution layouts only in the
    entry computation (`xla/service/cpu/conv_canonicalization.cc` walks `module->entry_computation()`), so
    the input-gradient convolutions of a backward pass inside a branch fall to a slow generic kernel. The
    student's backward therefore stays outside; the teacher's backward in the update branch still pays it on
    CPU (docs/fpg.md, "Speed switch").
    """
    fpg_grad_fn = jax.value_and_grad(fpg_objective, has_aux=True)

    def per_device_step(state: TrainState, teacher_vars, batch):
        x = normalize_images(batch["image"])
        labels = batch["label"].astype(jnp.int32)

        def student_forward(params):
            out, mutated = student.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return float32_outputs(out), mutated["batch_stats"]

        out, student_vjp, new_batch_stats = jax.vjp(student_forward, state.params, has_aux=True)
        student_p = jax.lax.stop_gradient(out["p"])
        fpg_args = (teacher_vars, x, labels, student_p)

        def train_fpg(fpg_params, fpg_opt_state):
            (_, (fpg_terms, t)), fpg_grads = fpg_grad_fn(fpg_params, *fpg_args, step=state.step, **fpg_hyper)
            fpg_grads = parallel.pmean(fpg_grads)
            fpg_updates, fpg_opt_state = fpg_optimizer.update(fpg_grads, fpg_opt_state, fpg_params)
            return (
                t,
                optax.apply_updates(fpg_params, fpg_updates),
                fpg_opt_state,
                fpg_terms,
                optax.tree.norm(fpg_grads),
                jnp.ones((), jnp.float32),
            )

        def forward_fpg(fpg_params, fpg_opt_state):
            _, (fpg_terms, t) = fpg_objective(fpg_params, *fpg_args, step=state.step, **fpg_hyper)
            # No FPG gradient on this step: grad norm 0 keeps the metrics' structure (and the NaN guard).
            return t, fpg_params, fpg_opt_state, fpg_terms, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

        t, fpg_params, fpg_opt_state, fpg_terms, fpg_grad_norm, updated = jax.lax.cond(
            state.step % update_every == 0, train_fpg, forward_fpg, state.fpg_params, state.fpg_opt_state
        )

        def student_loss(student_out):
            return ekd_objective(student_out, labels, cls_loss, free_u, jax.lax.stop_gradient(t), state.step)

        (loss, terms), out_grads = jax.value_and_grad(student_loss, has_aux=True)(out)
        (grads,) = student_vjp(out_grads)
        grads = parallel.pmean(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        terms.update(
            fpg_terms, loss=loss, train_accuracy=jnp.mean((jnp.argmax(out["z1"], -1) == labels).astype(jnp.float32))
        )
        step_metrics = parallel.pmean(terms)
        step_metrics.update(
            {
                "grad_norm": optax.tree.norm(grads),
                "fpg/grad_norm": fpg_grad_norm,
                "param_norm": optax.tree.norm(params),
                "fpg/updated": updated,
            }
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=new_batch_stats,
            opt_state=opt_state,
            fpg_params=fpg_params,
            fpg_opt_state=fpg_opt_state,
        )
        return new_state, step_metrics

    return per_device_step
