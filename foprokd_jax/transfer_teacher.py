"""The transfer benchmark's source teacher (docs/evidence.md §1.1): a ResNet trained here from scratch on the
procedural source task, saved as a normal teacher artifact (`porting/artifact.py`, sha256 sidecar), so that
the benchmark's teacher is "pretrained on other data" as in FoPro-KD (Elbatel et al., IEEE TMI 2024,
https://arxiv.org/abs/2305.17421).

Images are standardised with the ImageNet mean/std before the network, as the training pipeline does for every
teacher (docs/reference_semantics.md §6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from foprokd_jax.models.resnet import ResNet
from foprokd_jax.porting import artifact

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def standardise(images: np.ndarray) -> np.ndarray:
    """[0, 1] RGB images -> ImageNet-standardised float32."""
    return ((images - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def train_source_teacher(
    images, labels, num_classes: int, arch: dict, steps: int, batch_size: int, lr: float, seed: int
) -> tuple:
    """Cross-entropy training of `ResNet(**arch, num_classes)` with SGD + momentum and a cosine schedule.

    Returns (variables, per-step losses). Batches are drawn uniformly with replacement from a seeded generator.
    """
    module = ResNet(num_classes=num_classes, **arch)
    x_all = standardise(images)
    variables = module.init(jax.random.PRNGKey(seed), jnp.asarray(x_all[:1]), train=False)
    optimizer = optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9, nesterov=True)
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, x, y):
        def loss_fn(p):
            out, updates = module.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"].astype(jnp.float32), y).mean()
            return loss, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = rng.integers(0, len(labels), size=batch_size)
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, x_all[idx], labels[idx])
        losses.append(float(loss))
    return {"params": params, "batch_stats": batch_stats}, losses


def predict_logits(variables, images, num_classes: int, arch: dict, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits of the trained source teacher."""
    module = ResNet(num_classes=num_classes, **arch)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False)["logits"])
    x_all = standardise(images)
    return np.concatenate(
        [np.asarray(apply(variables, x_all[i : i + batch_size])) for i in range(0, len(x_all), batch_size)]
    )


def save_teacher(path: str, variables, arch: dict, source_accuracy: float) -> dict:
    """Save the headless teacher (the `fc` classifier dropped: students distil `pre_logits`) with its sidecar."""
    headless = {
        "params": {k: v for k, v in variables["params"].items() if k != "fc"},
        "batch_stats": variables["batch_stats"],
    }
    module = ResNet(**arch)
    return artifact.save_artifact(
        path,
        jax.device_get(headless),
        {
            "arch": "transfer_source_resnet",
            "feature_dim": module.feature_dim,
            "source": "trained from scratch on the procedural source task (docs/evidence.md §1.1)",
            "source_test_accuracy": float(source_accuracy),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
        },
    )
