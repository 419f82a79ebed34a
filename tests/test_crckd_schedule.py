"""CRCKD schedules and optimiser against the reference formulas and torch (OneCycleLR, Adam(weight_decay))."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from foprokd_jax.methods.crckd import optimizer as crckd_optimizer
from foprokd_jax.methods.crckd import schedule


def test_ema_alpha_reaches_the_decay_after_100_steps():
    steps = np.arange(0, 300)
    alpha = np.asarray(jax.vmap(lambda s: schedule.ema_alpha(s, 0.99))(steps))
    expected = np.minimum(1 - 1 / (steps + 1), 0.99)
    np.testing.assert_allclose(alpha, expected, rtol=1e-6, atol=1e-7)
    assert alpha[0] == 0.0  # the teacher copies the student after the first step
    assert alpha[98] < 0.99 and alpha[99] == pytest.approx(0.99)


def test_staged_loss_weights_per_epoch():
    weights = schedule.LossWeights()  # the code's effective values (docs/crckd.md §R6)
    w19, w20, w25, w30, w79 = (jax.device_get(weights(e)) for e in (19, 20, 25, 30, 79))
    # Epochs 0-19: CE + 0.1 CCD only.
    assert (w19["ce"], w19["ccd"], w19["kl"], w19["crp"]) == (1.0, pytest.approx(0.1), 0.0, 0.0)
    # Epoch 20: CCD weight applied twice (0.01), CRP on, KL already ramped to exp(-5 (1 - 20/30)^2).
    assert w20["ccd"] == pytest.approx(0.01) and w20["crp"] == 1.0
    assert w20["kl"] == pytest.approx(math.exp(-5 / 9), rel=1e-6)
    assert w20["kl"] == pytest.approx(0.5738, abs=1e-4)
    assert w25["kl"] == pytest.approx(math.exp(-5 * (1 - 25 / 30) ** 2), rel=1e-6)
    assert w30["kl"] == pytest.approx(1.0) and w79["kl"] == pytest.approx(1.0)
    readme = schedule.LossWeights(ccd_weight_post=0.1, begin_distill_epoch=5)
    assert float(readme(4)["crp"]) == 0.0 and float(readme(5)["ccd"]) == pytest.approx(0.1)


def _torch_one_cycle_trace(total_steps, steps_per_epoch=None, reset_lr=None):
    """(lr, beta1) used by each torch optimizer.step(), with the reference's per-epoch LR reset optional."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-4, betas=(0.9, 0.999), weight_decay=5e-4)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=total_steps)
    lrs, betas = [], []
    for step in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sch.step()
        if reset_lr is not None and (step + 1) % steps_per_epoch == 0:
            for group in opt.param_groups:  # train_CRCKD.py:439-440, at each epoch's end
                group["lr"] = reset_lr
    return np.asarray(lrs), np.asarray(betas)


@pytest.mark.parametrize("total_steps", [300, 7])
def test_one_cycle_matches_torch(total_steps):
    lrs, betas = _torch_one_cycle_trace(total_steps)
    cycle = schedule.OneCycle(total_steps=total_steps)
    steps = jnp.arange(total_steps)
    np.testing.assert_allclose(np.asarray(cycle.learning_rate(steps)), lrs, rtol=2e-5, atol=1e-12)
    np.testing.assert_allclose(np.asarray(cycle.beta1(steps)), betas, rtol=1e-6)
    assert lrs[0] == pytest.approx(1.2e-5) and betas[0] == pytest.approx(0.95)


def test_one_cycle_with_the_reference_epoch_start_lr_reset():
    lrs, betas = _torch_one_cycle_trace(200, steps_per_epoch=23, reset_lr=1e-4)
    cycle = schedule.OneCycle(total_steps=200, steps_per_epoch=23, epoch_start_lr=1e-4)
    steps = jnp.arange(200)
    np.testing.assert_allclose(np.asarray(cycle.learning_rate(steps)), lrs, rtol=2e-5, atol=1e-12)
    np.testing.assert_allclose(np.asarray(cycle.beta1(steps)), betas, rtol=1e-6)
    assert lrs[23] == 1e-4 and lrs[46] == 1e-4 and lrs[24] != 1e-4


def test_coupled_l2_adam_with_one_cycle_matches_torch_adam():
    """The whole optimiser (L2 5e-4 before Adam, scheduled LR and beta1) vs torch on a small regression."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)).astype(np.float32), rng.normal(size=(32, 3)).astype(np.float32)
    w0, b0 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    total, spe = 120, 17

    tw, tb = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(b0))
    opt = torch.optim.Adam([tw, tb], lr=1e-4, betas=(0.9, 0.999), weight_decay=5e-4)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=total)
    cycle = schedule.OneCycle(total_steps=total, steps_per_epoch=spe, epoch_start_lr=1e-4)
    tx = crckd_optimizer.make_optimizer(cycle, weight_decay=5e-4)
    params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
    opt_state = tx.init(params)

    def loss_fn(p):
        return jnp.mean((jnp.asarray(x) @ p["w"] + p["b"] - jnp.asarray(y)) ** 2) * 100.0

    update = jax.jit(lambda p, s: tx.update(jax.grad(loss_fn)(p), s, p))
    for step in range(total):
        opt.zero_grad()
        (((torch.tensor(x) @ tw + tb - torch.tensor(y)) ** 2).mean() * 100.0).backward()
        opt.step()
        sch.step()
        if (step + 1) % spe == 0:
            opt.param_groups[0]["lr"] = 1e-4
        updates, opt_state = update(params, opt_state)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(
            np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-5, atol=2e-6, err_msg=f"step {step}"
        )
    np.testing.assert_allclose(np.asarray(params["b"]), tb.detach().numpy(), rtol=1e-5, atol=2e-6)
    # The parameters moved by many learning rates: the comparison is not trivially satisfied.
    assert np.abs(np.asarray(params["w"]) - w0).max() > 5e-3
