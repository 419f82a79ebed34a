"""The FoPro-KD train step: EKD with a Fourier prompt on the teacher's input, plus adversarial KD.

RECONSTRUCTION (the authors never released FPG/AKD; see docs/fpg.md and spec §2.4, §4). With frozen
teacher f, prompt P_phi, explore head W (Linear D_t -> C) and the EKD student (z1, z2, p_theta):

    student:  min_theta  BSM(z1, y) + BSM(z2, y) + free_u * D(p_theta, sg f(P_phi(x)))
    FPG:      min_{phi,W} lambda_cls * BSM(W f(P_phi(x)), y) - lambda_adv * D(sg p_theta, f(P_phi(x)))
                          + lambda_reg * mean((log M)^2)

with D = mean(2 - 2 cos). Both objectives come from ONE forward pass of the student and of the teacher:
because each objective sees the other side's output through a stop-gradient, the gradient of their sum
with respect to theta is exactly the student's gradient and with respect to (phi, W) exactly the FPG's;
the two optimisers then step simultaneously ("joint" update). The student still sees the un-prompted x.

The prompt runs per device inside the shard_map, so its FFTs never gather the batch (jax#13081).
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from foprokd_jax import losses, parallel
from foprokd_jax.state import TrainState
from foprokd_jax.steps import float32_outputs, normalize_images, student_objective


def fopro_losses(params, fpg_params, batch_stats, teacher_vars, x, labels, *, student: nn.Module,
                 teacher: nn.Module, prompt: nn.Module, explore_head: nn.Module, cls_loss: Callable,
                 free_u: float, lambda_cls: float, lambda_adv: float, lambda_reg: float, teacher_feature_key: str,
                 step=None):
    """Student objective + FPG objective (see module docstring); returns (sum, aux).

    `cls_loss(logits, labels, step)` is the configured long-tail loss (BSM in the reference) on z1, z2 and the
    explore head; `step` is the optimizer step count (DRW switches weights on it).
    """
    sg = jax.lax.stop_gradient
    out, mutated = student.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                 mutable=["batch_stats"])
    out = float32_outputs(out)  # losses in float32 under a bfloat16 student; the prompt's FFT gets float32 x
    x_prompted, log_gain = prompt.apply({"params": fpg_params["prompt"]}, x)
    # No stop-gradient on the teacher's input: the FPG learns through the frozen teacher. The teacher's
    # weights get no gradient because they are not an argument we differentiate.
    t = teacher.apply(teacher_vars, x_prompted, train=False)[teacher_feature_key].astype(jnp.float32)
    z_t = explore_head.apply({"params": fpg_params["explore_head"]}, t)

    # The student's objective is exactly EKD's, with the prompted teacher's features as constants.
    student_loss, terms = student_objective(out, labels, cls_loss, free_u, sg(t), step)
    terms.update({
        "fpg/loss_explore": losses.batch_mean(cls_loss, z_t, labels, step, parallel.DATA_AXIS),
        "fpg/loss_adversarial": jnp.mean(losses.normalized_feature_distance(sg(out["p"]), t)),
        "fpg/loss_prompt_reg": jnp.mean(jnp.square(log_gain)),
    })
    fpg_loss = (lambda_cls * terms["fpg/loss_explore"] - lambda_adv * terms["fpg/loss_adversarial"]
                + lambda_reg * terms["fpg/loss_prompt_reg"])
    terms["loss"] = student_loss
    terms["fpg/loss"] = fpg_loss
    terms["fpg/explore_accuracy"] = jnp.mean((jnp.argmax(z_t, -1) == labels).astype(jnp.float32))
    terms["fpg/mean_abs_log_gain"] = jnp.mean(jnp.abs(log_gain))
    return student_loss + fpg_loss, (terms, mutated["batch_stats"], out["z1"])


def make_fopro_train_step(*, student: nn.Module, teacher: nn.Module, prompt: nn.Module, explore_head: nn.Module,
                          cls_loss: Callable, optimizer: optax.GradientTransformation,
                          fpg_optimizer: optax.GradientTransformation, free_u: float, lambda_cls: float,
                          lambda_adv: float, lambda_reg: float, teacher_feature_key: str, mesh,
                          donate: bool = True) -> Callable:
    """Builds `train_step(state, teacher_vars, batch) -> (state, metrics)` for method 'fopro'.

    Same contract as `steps.make_train_step`; `state.fpg_params` holds {'prompt', 'explore_head'}.
    """
    loss_fn = jax.value_and_grad(fopro_losses, argnums=(0, 1), has_aux=True)

    def per_device_step(state: TrainState, teacher_vars, batch):
        x = normalize_images(batch["image"])
        labels = batch["label"].astype(jnp.int32)
        (_, (terms, new_batch_stats, logits)), (grads, fpg_grads) = loss_fn(
            state.params, state.fpg_params, state.batch_stats, teacher_vars, x, labels, student=student,
            teacher=teacher, prompt=prompt, explore_head=explore_head, cls_loss=cls_loss, free_u=free_u,
            lambda_cls=lambda_cls, lambda_adv=lambda_adv, lambda_reg=lambda_reg,
            teacher_feature_key=teacher_feature_key, step=state.step)
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
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_batch_stats,
                                  opt_state=opt_state, fpg_params=fpg_params, fpg_opt_state=fpg_opt_state)
        return new_state, step_metrics

    return parallel.data_parallel(per_device_step, mesh, num_replicated=2, num_sharded=1, donate_first=donate)
