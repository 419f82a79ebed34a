"""CRCKD's schedules as pure functions of the global step, usable both in numpy and inside a jitted step.

Everything that changes with training time (the EMA coefficient, the staged loss weights, the one-cycle
learning rate and Adam beta1) is computed from the TRACED step counter inside the compiled step, so
crossing an epoch boundary never recompiles (docs/crckd.md §R12).

Sources: train_CRCKD.py (`update_ema_variables`, `get_current_consistency_weight`, the loss assembly and
the per-epoch LR reset), utils/ramps.py (`sigmoid_rampup`), torch `OneCycleLR` (docs/crckd.md §R3, §R6, §R7).
"""

import dataclasses
import math

import jax.numpy as jnp


def ema_alpha(step, decay: float):
    """alpha_t = min(1 - 1/(t + 1), decay), t = optimizer steps taken before this update (docs/crckd.md §R3).

    At t = 0 alpha is 0: after the first step the teacher is an exact copy of the student.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(1.0 - 1.0 / (step + 1.0), decay)


def sigmoid_rampup(epoch, length: float):
    """exp(-5 (1 - clip(e, 0, L)/L)^2) (Laine & Aila; utils/ramps.py); 1 when L == 0."""
    if length == 0:
        return jnp.ones_like(jnp.asarray(epoch, jnp.float32))
    phase = 1.0 - jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, length) / length
    return jnp.exp(-5.0 * phase * phase)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """The staged objective of train_CRCKD.py:340-355 (docs/crckd.md §R6, G2/G3).

    Before `begin_distill_epoch`: L_WCE + ccd_weight_pre * L_CCD. From it on:
    L_WCE + consistency * rampup(epoch) * L_KL + ccd_weight_post * L_CCD + crp_weight * L_CRP.
    The ramp-up is indexed by the epoch counted from 0, not from `begin_distill_epoch`.
    """

    ccd_weight_pre: float = 0.1
    ccd_weight_post: float = 0.01
    crp_weight: float = 1.0
    consistency: float = 1.0
    consistency_rampup_epochs: float = 30.0
    begin_distill_epoch: int = 20

    def __call__(self, epoch) -> dict:
        epoch = jnp.asarray(epoch, jnp.float32)
        late = epoch >= self.begin_distill_epoch
        ramp = self.consistency * sigmoid_rampup(epoch, self.consistency_rampup_epochs)
        return {
            "ce": jnp.ones_like(epoch),
            "ccd": jnp.where(late, self.ccd_weight_post, self.ccd_weight_pre),
            "kl": jnp.where(late, ramp, 0.0),
            "crp": jnp.where(late, self.crp_weight, 0.0),
        }


def _cos_anneal(start, end, pct):
    """torch's `_annealing_cos`: end + (start - end)/2 * (cos(pi pct) + 1).

    Written with cos(pi p) + 1 = 2 cos^2(pi p / 2), which avoids the float32 cancellation near p = 1 (the
    last steps' tiny learning rates then match torch's float64 to ~1e-6 relative).
    """
    half = jnp.cos(0.5 * math.pi * pct)
    return end + (start - end) * half * half


@dataclasses.dataclass(frozen=True)
class OneCycle:
    """torch `OneCycleLR` (two phases, cosine, cycle_momentum on Adam's beta1), stepped once per iteration.

    Phase 1 ends at step float(pct_start * T) - 1: lr max_lr/div_factor -> max_lr, beta1 max -> base momentum.
    Phase 2 ends at T - 1: lr max_lr -> initial/final_div_factor, beta1 base -> max (docs/crckd.md §R7, G16).
    Steps past T - 1 keep the final values (torch would raise).

    `epoch_start_lr` > 0 reproduces train_CRCKD.py:439-440: the LR is set to `base_lr` (1e-4) at the end of
    each epoch and OneCycleLR overwrites it only after the next step, so the FIRST step of every epoch from
    epoch 1 on runs at that LR; beta1 is not affected.
    """

    total_steps: int
    max_lr: float = 3e-4
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    steps_per_epoch: int = 0
    epoch_start_lr: float = 0.0

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"OneCycle total_steps must be >= 1, got {self.total_steps}")
        if self.epoch_start_lr > 0 and self.steps_per_epoch < 1:
            raise ValueError("OneCycle epoch_start_lr > 0 needs steps_per_epoch >= 1")

    def _phase(self, step):
        step = jnp.asarray(step, jnp.float32)
        up_end = float(self.pct_start * self.total_steps) - 1.0
        down_end = float(self.total_steps - 1)
        in_up = step <= up_end
        pct_up = step / up_end if up_end > 0 else jnp.zeros_like(step)
        span = down_end - up_end
        pct_down = jnp.clip((step - up_end) / span, 0.0, 1.0) if span > 0 else jnp.ones_like(step)
        return in_up, pct_up, pct_down

    def learning_rate(self, step):
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        in_up, pct_up, pct_down = self._phase(step)
        lr = jnp.where(in_up, _cos_anneal(initial, self.max_lr, pct_up), _cos_anneal(self.max_lr, final, pct_down))
        if self.epoch_start_lr > 0:
            step = jnp.asarray(step)
            epoch_start = (step > 0) & (step % self.steps_per_epoch == 0)
            lr = jnp.where(epoch_start, self.epoch_start_lr, lr)
        return lr

    def beta1(self, step):
        in_up, pct_up, pct_down = self._phase(step)
        return jnp.where(
            in_up,
            _cos_anneal(self.max_momentum, self.base_momentum, pct_up),
            _cos_anneal(self.base_momentum, self.max_momentum, pct_down),
        )
