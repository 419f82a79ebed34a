"""CRCKD's optimiser: torch Adam with COUPLED L2 weight decay and a one-cycle LR / beta1 schedule.

Reference (train_CRCKD.py:180-181, 218-220; docs/crckd.md §R7, G16): `torch.optim.Adam(params, lr, betas=(0.9,
0.999), weight_decay=5e-4)` over the student, `embed_s` and `embed_t` (BN and biases included), driven by
`OneCycleLR(max_lr=3e-4, ...)` with `cycle_momentum=True`, i.e. beta1 follows 0.95 -> 0.85 -> 0.95.

torch's weight_decay adds wd * param to the gradient BEFORE the moments (L2, not AdamW), hence
`add_decayed_weights` before `scale_by_adam`. beta1 is injected per step; like torch, the bias correction
1 - beta1_t^t uses the CURRENT beta1.
"""

import optax

from foprokd_jax.methods.crckd.schedule import OneCycle


def make_optimizer(
    one_cycle: OneCycle, *, weight_decay: float = 5e-4, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """The chain add_decayed_weights -> Adam(beta1 from the schedule) -> -lr(step).

    Both schedules are evaluated at the optimiser's own update count (0 for the first update), which is the
    torch scheduler's step index (the scheduler steps after each optimizer.step()).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.inject_hyperparams(optax.scale_by_adam)(b1=one_cycle.beta1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(one_cycle.learning_rate),
    )
