"""Losses, each returning per-example values so the caller decides how to reduce (masking, pmean).

Long-tail classification losses follow the released Fed-MAS/FoPro-KD code (`methods/utils.py`,
`get_criterion`, see docs/reference_semantics.md §5); the distillation term is EKD's normalised-feature
loss (§3.4). `make_classification_loss(config.loss, train_counts, steps_per_epoch)` builds any of them as
`fn(logits, labels, step) -> (B,)` and `batch_mean` reduces it the way the reference does (docs/long_tail.md).

Weighted losses (CB, RW, LDAM-DRW) are torch's `CrossEntropyLoss(weight=w)`: per example `w_y * l`, and
the batch loss is `sum(w_y * l) / sum(w_y)` over the GLOBAL batch (not `/ B`). `batch_mean` computes that
normaliser across devices, so the result does not depend on the device count.
"""

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

LOSS_NAMES = ("ce", "bsm", "focal", "cb", "rw", "la", "ldam", "lcc")
WEIGHTED_MEANS = ("weights", "batch")


def default_config() -> ml_collections.ConfigDict:
    """`config.loss`: the long-tail loss and its parameters, the reference's values (docs/reference_semantics.md
    §5) or, for 'la', Menon et al.'s tau = 1. Each parameter is read only by its loss."""
    c = ml_collections.ConfigDict()
    c.name = "bsm"  # long-tail loss: 'bsm' (Balanced Softmax, the reference), 'ce', 'focal', 'cb', 'rw',
    #                          'la', 'ldam' or 'lcc' (docs/long_tail.md)
    c.focal_gamma = 2.0  # 'focal': -(1 - p_t)^gamma log p_t, p_t detached in the factor (reference)
    c.cb_beta = 0.9999  # 'cb': class-balanced weights (1 - beta) / (1 - beta^n_c), summing to C
    c.la_tau = 1.0  # 'la': logit-adjusted CE(z + tau log pi); 0 = CE, 1 = BSM (Menon et al.)
    c.ldam_max_m = 0.5  # 'ldam': largest margin; m_c ~ n_c^(-1/4)
    c.ldam_s = 30.0  # 'ldam': logit scale s of CE(s (z - m_y onehot))
    c.drw_epoch = 80  # 'ldam': DRW from this epoch (reference floor(0.8 x 100 epochs)); < 0 = never
    c.drw_beta = 0.9999  # 'ldam': class-balanced beta of the DRW weights (before: weight 1)
    c.lcc_tau = 0.5  # 'lcc': CE(z - tau n_c^(-1/4)) (FedLC-style calibration, reference T)
    # Batch reduction of weighted losses (cb, rw, ldam+DRW): 'weights' = sum(w_y l) / sum(w_y) over the global
    # batch (torch CrossEntropyLoss(weight), the reference); 'batch' = sum(w_y l) / B
    c.weighted_mean = "weights"
    return c


_PARAMETERS = tuple(k for k in default_config().keys() if k != "name")


# ----------------------------------------------------------------------------- class statistics (numpy)


def _check_counts(class_counts) -> np.ndarray:
    counts = np.asarray(class_counts, np.float64)
    if (
        counts.ndim != 1
        or counts.size == 0
        or np.any(counts < 0)
        or not np.all(np.isfinite(counts))
        or counts.sum() <= 0
    ):
        raise ValueError(f"class_counts must be a non-negative 1-D vector with a positive sum, got {class_counts}")
    return counts


def log_class_prior(class_counts) -> np.ndarray:
    """log(pi_c + 1e-12) with pi_c = n_c / sum(n), exactly as Balanced Softmax in the reference code."""
    counts = _check_counts(class_counts)
    return np.log(counts / counts.sum() + 1e-12).astype(np.float32)


def class_balanced_weights(class_counts, beta: float) -> np.ndarray:
    """Class-balanced weights (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019).

    w_c = (1 - beta) / (1 - beta^n_c), the inverse effective number of samples, rescaled so the weights sum
    to the number of classes present (= C when every class has examples); absent classes get 0, as in the
    reference (`methods/utils.py` 'CB' and `LDAMLoss.set_weight`). beta = 0 gives 1 for every present class.
    """
    counts = _check_counts(class_counts)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta must lie in [0, 1), got {beta}")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    return (weights / weights.sum() * present.sum()).astype(np.float32)


def inverse_frequency_weights(class_counts) -> np.ndarray:
    """Re-weighting 'RW' of the reference: w_c = N / (C * n_c) with C = all classes; absent classes get 0."""
    counts = _check_counts(class_counts)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (counts.size * counts[present])
    return weights.astype(np.float32)


def ldam_margins(class_counts, max_margin: float) -> np.ndarray:
    """LDAM margins m_c proportional to n_c^(-1/4), the largest equal to `max_margin` (Cao et al. 2019); 0 if absent."""
    counts = _check_counts(class_counts)
    if not max_margin > 0:
        raise ValueError(f"LDAM max margin must be positive, got {max_margin}")
    present = counts > 0
    margins = np.zeros_like(counts)
    margins[present] = counts[present] ** -0.25
    return (margins * (max_margin / margins[present].max())).astype(np.float32)


# ----------------------------------------------------------------------------- per-example losses (jax)


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Per-example cross-entropy with integer labels (torch `nn.CrossEntropyLoss(reduction='none')`)."""
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def balanced_softmax(logits: jnp.ndarray, labels: jnp.ndarray, log_prior: jnp.ndarray) -> jnp.ndarray:
    """Balanced Softmax (Ren et al., NeurIPS 2020): CE on logits shifted by the log class prior.

    Only the training loss sees the shift; evaluation takes argmax of the raw logits
    (docs/reference_semantics.md §13.7).
    """
    return softmax_cross_entropy(logits + log_prior, labels)


def focal_loss(logits: jnp.ndarray, labels: jnp.ndarray, gamma: float) -> jnp.ndarray:
    """Focal loss (Lin et al., ICCV 2017) without alpha: -(1 - p_t)^gamma * log p_t.

    As in the reference `FocalLoss`, p_t inside the modulating factor is detached: the gradient is
    (1 - p_t)^gamma times the CE gradient. gamma = 0 is plain CE.
    """
    log_pt = -softmax_cross_entropy(logits, labels)
    pt = jax.lax.stop_gradient(jnp.exp(log_pt))
    return -((1.0 - pt) ** gamma) * log_pt


def logit_adjusted_cross_entropy(logits, labels, log_prior, tau: float) -> jnp.ndarray:
    """Logit-adjusted CE (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021): CE(z + tau log pi).

    tau = 0 is CE and tau = 1 is Balanced Softmax (same log prior, with its 1e-12).
    """
    return softmax_cross_entropy(logits.astype(jnp.float32) + tau * log_prior, labels)


def ldam_loss(logits, labels, margins, scale: float) -> jnp.ndarray:
    """LDAM (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019).

    CE(s * (z - m_y * onehot(y)), y): only the true class's logit loses its margin, then everything is
    scaled by s (reference `LDAMLoss.forward`). Unweighted; DRW weights are applied by the caller.
    """
    logits = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return softmax_cross_entropy(scale * (logits - margins[labels][:, None] * onehot), labels)


def lcc_calibration(class_counts, tau: float) -> np.ndarray:
    """LCC's per-class logit offset tau * max(n_c, 1e-8)^(-1/4) (reference `LCC`, docs/reference_semantics.md §5)."""
    counts = _check_counts(class_counts)
    return (tau * np.maximum(counts, 1e-8) ** -0.25).astype(np.float32)


def lcc_loss(logits, labels, calibration) -> jnp.ndarray:
    """LCC, FedLC-style logit calibration (Zhang et al., "Federated Learning with Label Distribution Skew via
    Logits Calibration", ICML 2022), as the reference codes it: -log softmax(z - tau n_c^(-1/4))_y.

    The reference exponentiates without a max shift; log-softmax gives the same value, stably.
    """
    return softmax_cross_entropy(logits.astype(jnp.float32) - calibration, labels)


def l2_normalize(v: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """torch's `F.normalize`: v / max(||v||_2, 1e-12) along `axis`, in v's dtype.

    The one L2 normalisation of the project (EKD's distance, the cosine classifier, CRCKD's embeddings and
    memory rows). CRCKD's reference `Normalize(2)` layer has no epsilon; the two agree bitwise for every norm
    >= 1e-12, and below that the reference returns NaN or Inf.
    """
    norm = jnp.sqrt(jnp.sum(v * v, axis=axis, keepdims=True))
    return v / jnp.maximum(norm, 1e-12)


def normalized_feature_distance(student: jnp.ndarray, teacher: jnp.ndarray) -> jnp.ndarray:
    """EKD's distillation term: 2 - 2 cos(p, t), i.e. ||p/|p| - t/|t|||^2 (BYOL-style), per example, float32."""
    return 2.0 - 2.0 * jnp.sum(
        l2_normalize(student.astype(jnp.float32)) * l2_normalize(teacher.astype(jnp.float32)), axis=-1
    )


# ----------------------------------------------------------------------------- the configured loss


@dataclasses.dataclass(frozen=True)
class ClassificationLoss:
    """`loss(logits, labels, step=None) -> per-example float32 loss (B,)`, plus what `batch_mean` needs.

    unweighted: (logits, labels) -> (B,), the loss before any class weight.
    class_weights: None (unweighted) or step -> (C,) float32 weights; a traced `step` (the optimizer step
      count, int32) lets DRW switch weights at an epoch boundary without recompiling.
    normalize_by_weights: reduce weighted losses as sum(w_y l) / sum(w_y) (torch) rather than / B.
    """

    name: str
    num_classes: int
    unweighted: Callable
    class_weights: Optional[Callable] = None
    normalize_by_weights: bool = True

    def _check(self, logits):
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"loss {self.name!r} was built for {self.num_classes} classes (train_counts) but got "
                f"logits of shape {logits.shape}"
            )

    def example_weights(self, labels, step=None) -> jnp.ndarray:
        """w_{y_i} per example (ones for an unweighted loss)."""
        labels = jnp.asarray(labels, jnp.int32)
        if self.class_weights is None:
            return jnp.ones(labels.shape, jnp.float32)
        return self.class_weights(step)[labels]

    def __call__(self, logits, labels, step=None) -> jnp.ndarray:
        self._check(logits)
        labels = jnp.asarray(labels, jnp.int32)
        loss = self.unweighted(logits.astype(jnp.float32), labels)
        if self.class_weights is not None:
            loss = loss * self.example_weights(labels, step)
        return loss


def batch_mean(loss_fn: Callable, logits, labels, step=None, axis_name: Optional[str] = None) -> jnp.ndarray:
    """The batch loss as the reference reduces it; inside a data-parallel step pass the mesh axis.

    Unweighted losses (and any plain callable): the mean of the per-example values. Weighted ones (torch
    `CrossEntropyLoss(weight)`): sum_i w_i l_i / sum_i w_i over the global batch. With `axis_name`, each
    device returns its share sum_local(w l) / pmean(sum_local w), so the pmean over devices of the loss (and
    of its gradient) equals the single-device value: the normaliser only depends on the labels.
    """
    per_example = loss_fn(logits, labels, step)
    if not (
        isinstance(loss_fn, ClassificationLoss) and loss_fn.class_weights is not None and loss_fn.normalize_by_weights
    ):
        return jnp.mean(per_example)
    total = jnp.sum(jax.lax.stop_gradient(loss_fn.example_weights(labels, step)))
    if axis_name is not None:
        total = jax.lax.pmean(total, axis_name)
    return jnp.sum(per_example) / total


def _loss_params(loss_config) -> tuple:
    """(name, parameters): a name alone, or a mapping with 'name' whose missing parameters are those of
    `default_config()` (the one table of defaults; tests and notebooks pass just the keys they change)."""
    if isinstance(loss_config, str):
        loss_config = {"name": loss_config}
    try:
        name = loss_config["name"]
    except (KeyError, TypeError, AttributeError):
        raise ValueError(
            f"loss config must be a name or a mapping with a 'name' key (config.loss), got {loss_config!r}"
        ) from None
    defaults = default_config()
    return name, {key: loss_config[key] if key in loss_config else defaults[key] for key in _PARAMETERS}


def _drw_weights(counts, params, steps_per_epoch) -> Callable:
    """Deferred re-weighting (Cao et al. 2019): the reference's `LDAMLoss.set_weight` as a function of the step.

    Epochs < drw_epoch use beta = 0 (weight 1 for every present class), later ones class-balanced weights
    with beta = drw_beta; epoch = step // steps_per_epoch, so the switch happens at the epoch boundary.
    """
    drw_epoch = int(params["drw_epoch"])
    before = jnp.asarray(class_balanced_weights(counts, 0.0))
    after = jnp.asarray(class_balanced_weights(counts, float(params["drw_beta"])))
    if steps_per_epoch is None or int(steps_per_epoch) <= 0:
        raise ValueError(
            f"loss 'ldam' with DRW (loss.drw_epoch={drw_epoch}) needs steps_per_epoch > 0, got {steps_per_epoch}"
        )
    steps_per_epoch = int(steps_per_epoch)

    def weights(step):
        if step is None:
            raise ValueError("loss 'ldam' with DRW needs the optimizer step: call loss(logits, labels, step)")
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        return jnp.where(epoch >= drw_epoch, after, before)

    return weights


def make_classification_loss(loss_config, train_counts, steps_per_epoch: Optional[int] = None) -> ClassificationLoss:
    """`fn(logits, labels, step) -> per-example float32 loss (B,)` for `config.loss`
    (docs/reference_semantics.md §5, docs/long_tail.md).

    loss_config: `config.loss` (a ConfigDict/dict with the keys of `default_config()`; other keys such as
      free_u are ignored) or just a name (default parameters). train_counts: the training images per class (C,).
    steps_per_epoch: optimizer steps per epoch; needed only by 'ldam' with DRW (loss.drw_epoch >= 0).
    Reduce with `batch_mean(fn, logits, labels, step, axis_name)` to get the reference's batch loss.
    """
    name, params = _loss_params(loss_config)
    key = str(name).lower()
    if key not in LOSS_NAMES:
        raise ValueError(f"Unknown classification loss config.loss.name={name!r}; available: {LOSS_NAMES}")
    counts = _check_counts(train_counts)
    if params["weighted_mean"] not in WEIGHTED_MEANS:
        raise ValueError(f"config.loss.weighted_mean={params['weighted_mean']!r} is not one of {WEIGHTED_MEANS}")
    make = lambda fn, weights=None: ClassificationLoss(  # noqa: E731
        key, counts.size, fn, weights, params["weighted_mean"] == "weights"
    )
    log_prior = jnp.asarray(log_class_prior(counts))
    if key == "ce":
        return make(softmax_cross_entropy)
    if key == "bsm":
        return make(lambda z, y: balanced_softmax(z, y, log_prior))
    if key == "focal":
        gamma = float(params["focal_gamma"])
        if not gamma >= 0:
            raise ValueError(f"config.loss.focal_gamma must be >= 0, got {gamma}")
        return make(lambda z, y: focal_loss(z, y, gamma))
    if key == "cb":
        weights = jnp.asarray(class_balanced_weights(counts, float(params["cb_beta"])))
        return make(softmax_cross_entropy, lambda step: weights)
    if key == "rw":
        weights = jnp.asarray(inverse_frequency_weights(counts))
        return make(softmax_cross_entropy, lambda step: weights)
    if key == "la":
        tau = float(params["la_tau"])
        return make(lambda z, y: logit_adjusted_cross_entropy(z, y, log_prior, tau))
    if key == "lcc":
        calibration = jnp.asarray(lcc_calibration(counts, float(params["lcc_tau"])))
        return make(lambda z, y: lcc_loss(z, y, calibration))
    # 'ldam'
    scale = float(params["ldam_s"])
    if not scale > 0:
        raise ValueError(f"config.loss.ldam_s must be positive, got {scale}")
    margins = jnp.asarray(ldam_margins(counts, float(params["ldam_max_m"])))
    weights = _drw_weights(counts, params, steps_per_epoch) if int(params["drw_epoch"]) >= 0 else None
    return make(lambda z, y: ldam_loss(z, y, margins, scale), weights)
